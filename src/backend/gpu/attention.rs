//! The attention dispatches over the KV cache: a tiled FlashAttention-style prefill kernel
//! (`shaders/attention_prefill.wgsl` and `attention_prefill_gpu.wgsl`, Dao et al. 2022) and a
//! split-K decode kernel with its combine pass (`shaders/attention_decode.wgsl`,
//! flash-decoding), each after the cache reader of its [`KvDtype`], `attention_common.wgsl`, a
//! width prelude and `step.wgsl` (the per-step uniform, `kernels::attention::StepParams`, that
//! RoPE, the KV-cache store and attention read).
//!
//! Layouts and the causal rule are `kernels::attention`'s; the math is f32 whatever the
//! cache type.
//!
//! Prefill shapes ([`PrefillLaunch`], from the geometry and the adapter's workgroup memory):
//! the CPU one keeps q and 8-key tiles in workgroup memory (16 rows per workgroup, tuned on
//! lavapipe); the GPU one keeps q and the output in registers (32 rows of 4 lanes), walks
//! 32-64-key K/V tiles (32 KiB; 16 keys above head_dim 128) and prefetches the next tile into
//! registers. Structure at Ministral 3 3B text prefill (512 tokens, 32/8 heads, head_dim 128,
//! causal) and Pixtral vision (1024 patches, 16 heads, head_dim 64), f32 K/V:
//!
//! | | workgroups (x 128 invocations) | workgroup memory | K+V read per workgroup | K+V read in all |
//! |---|---|---|---|---|
//! | text, CPU shape | 128 x 8 = 1024 | 13 KiB | 4 KiB to 512 KiB | 258 MiB |
//! | text, GPU shape | 64 x 8 = 512 | 32 KiB | 8 KiB to 512 KiB | 130 MiB |
//! | vision, CPU shape | 64 x 16 = 1024 | 13 KiB | 512 KiB | 512 MiB |
//! | vision, GPU shape | 32 x 16 = 512 | 32 KiB | 512 KiB | 256 MiB |
//!
//! Head widths ([`RowWidth`]): each shader is built with a width prelude, 128 (head_dim <= 128)
//! or 256 (up to [`MAX_HEAD_DIM`](crate::kernels::attention::MAX_HEAD_DIM): Qwen3.5's full-attention heads), that sizes its tiles and
//! per-lane arrays, so narrower heads keep the 128-wide footprint (the GPU prefill kernel's
//! lanes hold 8 + 8 vec4s of q and output at 128, 16 + 16 at 256). Workgroup memory:
//!
//! | | head_dim <= 128 | head_dim <= 256 |
//! |---|---|---|
//! | decode | 14.2 KiB (V sub-tiles of 16 keys) | 15.2 KiB (V sub-tiles of 5 keys) |
//! | prefill, GPU shape | 32 KiB (32-64-key tiles) | 32 KiB (16-key tiles) |
//! | prefill, CPU geometry or < 32 KiB | 13 KiB (the CPU shape) | 16 KiB (GPU kernel, 8-key tiles) |
//!
//! Where the native adapter has subgroups (GPU geometry), the GPU prefill shape's score sums
//! and decode's row maxima start with subgroup shuffles (`attention_subgroups.wgsl`); every
//! other build uses workgroup memory (`attention_nosubgroups.wgsl`).
//!
//! Decode shape ([`attention_decode`]): the grid is recorded once for `max_ctx`
//! ([`decode_grid`]: [`default_splits`] x KV heads x row chunks) and the step's `kv_len`
//! picks the splits that work ([`active_splits`], >= [`DECODE_SPLIT_KEYS`] keys each); the
//! others return at once and the combine pass merges only the active ones. A workgroup's rows
//! are the query heads of one KV group ([`decode_rows`]), and each V tile is loaded once
//! into workgroup memory for all of them. At Ministral 3 3B shapes (32 heads, 8 KV heads,
//! head_dim 128), one token, max_ctx 32768 (64 splits, 512 workgroups launched):
//!
//! | | rows used / slots | active workgroups at kv_len 128 / 4096 | K+V loaded per active workgroup at 4096 (f32) |
//! |---|---|---|---|
//! | before | 4 / 8 | 16 (of 512 running) / 512 | 64 keys: K 32 KiB + V 4 x 32 KiB (once per row) = 160 KiB |
//! | now | 4 / 4 | 8 (504 exit at once) / 256 | 128 keys: K 64 KiB + V 64 KiB, each once = 128 KiB |
//!
//! (f16 cache: half the bytes. The combine pass merges 64 splits per row before at every
//! kv_len, now 1 at 128 and 32 at 4096.)
//!
//! On CPU adapters (CPU geometry) decode takes a query row per invocation instead
//! (`shaders/attention_decode_rows.wgsl`: 16 rows per workgroup over the same splits, its own
//! combine pass over the same partials). Such adapters run a workgroup's invocations as SIMD
//! lanes and pay each barrier as a switch between groups of lanes; the tile kernel above has
//! six per tile. Lavapipe, SmolLM2 at a 32-token context (30 layers, `webvlm bench
//! --profile`): 9.7 against 31.0 ms of decode attention per step of 8 sequences, 4.7 against
//! 8.0 for one.

use bytemuck::{Pod, Zeroable};

use super::{grid_1d, Access, Arg, Geometry, Gpu, GpuError, KernelSpec, Launch, Program, Result, MAX_GRID_DIM};
use crate::kernels::shapes::{AttnShape, KvDtype};

/// The `Step` struct shared by the RoPE and attention shaders.
pub(super) const STEP: &str = include_str!("../../../shaders/step.wgsl");
/// Step preludes of the RoPE and decode shaders, `seq_of(t)`: token row t's step and its
/// sequence's first row. One sequence's rows share its step uniform; a batched step's
/// sequences, one token row each, read theirs from a storage array (`*_seqs` launchers).
pub(super) const SEQ_ONE: &str = "fn seq_of(t: u32) -> SeqStep { return SeqStep(step, 0u); }\n";
pub(super) const SEQ_ROWS: &str = "fn seq_of(t: u32) -> SeqStep { return SeqStep(steps[t], t); }\n";
/// The `Params` struct and the constants shared by the attention shaders.
pub(super) const ATTN_COMMON: &str = include_str!("../../../shaders/attention_common.wgsl");
pub(super) const PREFILL: &str = include_str!("../../../shaders/attention_prefill.wgsl");
pub(super) const PREFILL_GPU: &str = include_str!("../../../shaders/attention_prefill_gpu.wgsl");
pub(super) const DECODE: &str = include_str!("../../../shaders/attention_decode.wgsl");
/// Decode on CPU adapters: a query row per invocation (`attn_decode`), no barriers.
pub(super) const DECODE_CPU: &str = include_str!("../../../shaders/attention_decode_rows.wgsl");
/// Rows per workgroup of `attention_decode_rows.wgsl` (its `WG`).
const DECODE_CPU_WG: u32 = 16;
/// Preludes of the GPU prefill shape and of decode: subgroup row reductions (native adapters
/// with subgroups, GPU geometry), or the workgroup-memory-only stand-ins (everywhere else).
pub(super) const SUBGROUPS: &str = include_str!("../../../shaders/attention_subgroups.wgsl");
pub(super) const NO_SUBGROUPS: &str = include_str!("../../../shaders/attention_nosubgroups.wgsl");
/// Width preludes ([`RowWidth`]): `HD4`, the vec4s per row of every attention shader's tiles
/// and register arrays, and decode's V sub-tile `VT` (vec4s), which shrinks at 256 so that
/// the 16 KiB budget holds the wider q rows.
pub(super) const WIDTH_128: &str = "const HD4: u32 = 32u;\nconst VT: u32 = 512u;\n";
pub(super) const WIDTH_256: &str = "const HD4: u32 = 64u;\nconst VT: u32 = 320u;\n";
/// Tile preludes of `attention_prefill_gpu.wgsl`: vec4s per K / V tile buffer (16 or 8 KiB).
pub(super) const TILE_1024: &str = "const TILE: u32 = 1024u;\n";
pub(super) const TILE_512: &str = "const TILE: u32 = 512u;\n";
const PREFILL_BINDINGS: &[Access] =
    &[Access::Uniform, Access::Uniform, Access::Read, Access::Read, Access::Read, Access::ReadWrite];
const DECODE_BINDINGS: &[Access] =
    &[Access::Uniform, Access::Uniform, Access::ReadWrite, Access::ReadWrite, Access::Read, Access::Read, Access::Read];
const COMBINE_BINDINGS: &[Access] = &[Access::Uniform, Access::Uniform, Access::ReadWrite, Access::ReadWrite, Access::ReadWrite];
/// The same two entries reading a step per token row from a storage array.
const DECODE_SEQS_BINDINGS: &[Access] =
    &[Access::Uniform, Access::Read, Access::ReadWrite, Access::ReadWrite, Access::Read, Access::Read, Access::Read];
const COMBINE_SEQS_BINDINGS: &[Access] =
    &[Access::Uniform, Access::Read, Access::ReadWrite, Access::ReadWrite, Access::ReadWrite];

/// Cache readers prepended to both attention shaders, one per [`KvDtype`]: `kv_k(i)` and
/// `kv_v(i)` return elements `4i..4i+4` of the K / V cache as f32. The shaders declare both
/// views of each cache binding (`array<vec4<f32>>` and `array<vec2<u32>>`); only the one the
/// reader uses is bound. `unpack2x16float` needs no `shader-f16`, so the f16 cache works on
/// every adapter.
const KV_READ_F32: &str = "
fn kv_k(i: u32) -> vec4<f32> { return k_cache[i]; }
fn kv_v(i: u32) -> vec4<f32> { return v_cache[i]; }
";
const KV_READ_F16: &str = "
fn kv_k(i: u32) -> vec4<f32> { let w = k_cache_h[i]; return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)); }
fn kv_v(i: u32) -> vec4<f32> { let w = v_cache_h[i]; return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)); }
";

/// The cache reader of `kv`, prepended to both attention shaders.
pub(super) fn kv_reader(kv: KvDtype) -> &'static str {
    match kv {
        KvDtype::F32 => KV_READ_F32,
        KvDtype::F16 => KV_READ_F16,
    }
}

/// Most query rows per decode workgroup (`R_MAX` in the shader).
pub const DECODE_MAX_ROWS: u32 = 8;
/// Keys per decode tile: split lengths are rounded up to this.
pub const DECODE_TILE: u32 = 64;
/// Fewest keys per decode split: the step's `kv_len` sets how many of the recorded splits
/// hold keys ([`active_splits`]), so short contexts are not spread thin over many splits.
pub const DECODE_SPLIT_KEYS: u32 = 2 * DECODE_TILE;

/// Row width the attention shaders are built for, from head_dim: its prelude sets their `HD4`
/// (vec4s per row of the workgroup tiles and register arrays) and the sizes that follow from
/// it, so heads of at most 128 keep the 128-wide tiles (and their footprint and speed) and
/// only wider heads pay for 256.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RowWidth {
    /// head_dim <= 128: `HD4 = 32`.
    W128,
    /// 128 < head_dim <= 256: `HD4 = 64`.
    W256,
}

impl RowWidth {
    pub fn of(head_dim: u32) -> RowWidth {
        if head_dim <= 128 {
            RowWidth::W128
        } else {
            RowWidth::W256
        }
    }

    /// The widest head this width takes.
    pub fn max_head_dim(self) -> u32 {
        match self {
            RowWidth::W128 => 128,
            RowWidth::W256 => 256,
        }
    }

    fn prelude(self) -> &'static str {
        match self {
            RowWidth::W128 => WIDTH_128,
            RowWidth::W256 => WIDTH_256,
        }
    }

    /// Workgroup memory of `attention_decode.wgsl` at this width, bytes: q rows (`R_MAX` x
    /// `HD4` vec4s), the tile's probabilities (`R_MAX` x 65 f32), `sh` (`VT` vec4s: the partial
    /// scores, then V sub-tiles of 16 keys at 128 and 5 at 256), and 48 f32 of row state.
    pub fn decode_workgroup_bytes(self) -> u32 {
        let (hd4, vt) = match self {
            RowWidth::W128 => (32, 512),
            RowWidth::W256 => (64, 320),
        };
        16 * DECODE_MAX_ROWS * hd4 + 4 * DECODE_MAX_ROWS * (DECODE_TILE + 1) + 16 * vt + 4 * 48
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n_head: u32,
    n_kv_head: u32,
    head_dim: u32,
    max_tok: u32,
    q_stride: u32,
    q_offset: u32,
    kv_stride: u32,
    causal: u32,
    scale: f32,
    n_split: u32,
    split_keys: u32,
    valid_rows: u32,
}

/// The shader's `Params` of `shape` over a grid of `n_split` splits.
fn params(shape: &AttnShape, n_split: u32) -> Params {
    Params {
        n_head: shape.n_head,
        n_kv_head: shape.n_kv_head,
        head_dim: shape.head_dim,
        max_tok: shape.max_tok,
        q_stride: shape.q_stride,
        q_offset: shape.q_offset,
        kv_stride: shape.n_kv_head * shape.head_dim,
        causal: shape.causal as u32,
        scale: shape.scale,
        n_split,
        split_keys: DECODE_SPLIT_KEYS,
        valid_rows: shape.valid_rows,
    }
}

/// Query heads per KV head.
fn group(shape: &AttnShape) -> u32 {
    shape.n_head / shape.n_kv_head.max(1)
}

/// Records prefill attention: the step's `n_tok` new tokens (queries in `q`) against cache
/// rows `0..kv_start + n_tok` of `k_cache`/`v_cache`, into `out` `[n_tok][n_head*head_dim]`.
/// Grid: `ceil(max_tok * group / rows)` x `n_kv_head` workgroups of the [`PrefillLaunch`]
/// chosen from the device's geometry, workgroup memory and subgroups.
#[allow(clippy::too_many_arguments)]
pub fn attention_prefill(
    prog: &mut Program,
    gpu: &Gpu,
    shape: &AttnShape,
    step: &wgpu::Buffer,
    q: &wgpu::Buffer,
    k_cache: &wgpu::Buffer,
    v_cache: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<()> {
    let caps = &gpu.caps;
    // Subgroups in the GPU geometry only, as in decode: the CPU one stands for the browser.
    let subgroups = caps.subgroups && caps.geometry == Geometry::Gpu;
    let launch = PrefillLaunch::of(caps.geometry, shape.head_dim, caps.max_workgroup_storage).with_subgroups(subgroups);
    let grid = launch.grid(shape);
    if grid[0] > MAX_GRID_DIM {
        return Err(GpuError::Shape(format!("attention_prefill: {} tokens do not fit one grid", shape.max_tok)));
    }
    let args = [Arg::Buf(step), Arg::Buf(q), Arg::Buf(k_cache), Arg::Buf(v_cache), Arg::Buf(out)];
    prog.push_with_params(gpu, &launch.spec(shape), &params(shape, 1), &args, grid)?;
    prog.set_launch(Launch::threads(launch.invocations));
    Ok(())
}

/// Launch shape of prefill attention ([`attention_prefill`]), from the device's geometry and
/// workgroup-memory limit and the head_dim.
///
/// - CPU (`attention_prefill.wgsl`, tuned on lavapipe; head_dim <= 128): 16 query rows x 8
///   keys per tile, q and the 8-key K then V tile in workgroup memory (13 KiB).
/// - GPU (`attention_prefill_gpu.wgsl`): 32 query rows of 4 lanes, q and the output in
///   registers (8 vec4s each per lane at head_dim <= 128, 16 at 256), K and V tiles of
///   [`Self::key_tile`] keys (64 at head_dim <= 64, 32 at 128, 16 at 256: a tile is at most
///   16 KiB, so K + V fit 32 KiB and the scores of a tile fit a lane's registers), the next
///   tile prefetched into registers while the current one is used. Adapters that grant less
///   than its 32 KiB of workgroup memory get the CPU shape.
/// - head_dim > 128 without the GPU shape (CPU geometry, or less than 32 KiB): the CPU
///   shape's q tile alone would take 16 KiB, so the register kernel runs with 8-key tiles
///   (K + V: 16 KiB, WebGPU's default limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefillLaunch {
    /// The register kernel (`attention_prefill_gpu.wgsl`), else the tiled CPU one
    /// (`attention_prefill.wgsl`).
    pub registers: bool,
    /// Keys per K/V tile.
    pub key_tile: u32,
    /// Query rows (token x grouped head) per workgroup.
    pub rows: u32,
    /// Invocations per workgroup.
    pub invocations: u32,
    /// Workgroup memory of the shader, bytes.
    pub workgroup_bytes: u32,
    /// Subgroup shuffles sum the GPU shape's scores (native adapters with subgroups).
    pub subgroups: bool,
}

/// Invocations per query row of the GPU shape (`LANES`): within one subgroup on any adapter.
const PREFILL_GPU_LANES: u32 = 4;
const _: () = assert!(wgpu::MINIMUM_SUBGROUP_MIN_SIZE >= PREFILL_GPU_LANES);

impl PrefillLaunch {
    /// The CPU shape (`BQ`, `BK`, `WG` and the arrays of `attention_prefill.wgsl`).
    pub const CPU: PrefillLaunch =
        PrefillLaunch { registers: false, key_tile: 8, rows: 16, invocations: 128, workgroup_bytes: 13 * 1024, subgroups: false };

    pub fn of(geometry: Geometry, head_dim: u32, max_workgroup_storage: u32) -> PrefillLaunch {
        // Two tile buffers (K, V) of `TILE` vec4s: 1024 (32 KiB) in the GPU shape, else 512.
        const GPU_BYTES: u32 = 2 * 1024 * 16;
        let gpu_shape = geometry == Geometry::Gpu && max_workgroup_storage >= GPU_BYTES;
        let workgroup_bytes = match (gpu_shape, RowWidth::of(head_dim)) {
            (true, _) => GPU_BYTES,
            (false, RowWidth::W128) => return PrefillLaunch::CPU,
            (false, RowWidth::W256) => GPU_BYTES / 2,
        };
        // As many keys as fill a tile buffer at the head's power-of-two width (>= 64).
        let key_tile = workgroup_bytes / 2 / (4 * head_dim.next_power_of_two().max(64));
        PrefillLaunch { registers: true, key_tile, rows: 32, invocations: 128, workgroup_bytes, subgroups: false }
    }

    /// The same launch with subgroup reductions where `available` (the device's, in the GPU
    /// geometry) and the kernel reduces across invocations (the register one).
    pub fn with_subgroups(self, available: bool) -> PrefillLaunch {
        PrefillLaunch { subgroups: available && self.registers, ..self }
    }

    /// The grid `[row tiles, n_kv_head, 1]` for `shape`.
    pub fn grid(&self, shape: &AttnShape) -> [u32; 3] {
        [(shape.max_tok * group(shape)).div_ceil(self.rows), shape.n_kv_head, 1]
    }

    fn spec(&self, shape: &AttnShape) -> KernelSpec {
        let width = RowWidth::of(shape.head_dim);
        if !self.registers {
            debug_assert_eq!(width, RowWidth::W128, "the CPU prefill shape takes head_dim <= 128");
            return KernelSpec::new("attention_prefill", PREFILL, "attn_prefill", PREFILL_BINDINGS)
                .with_prefix(kv_reader(shape.kv))
                .with_prefix(ATTN_COMMON)
                .with_prefix(WIDTH_128)
                .with_prefix(STEP);
        }
        let hd4 = shape.head_dim / 4;
        KernelSpec::new("attention_prefill", PREFILL_GPU, "attn_prefill_gpu", PREFILL_BINDINGS)
            .with_prefix(if self.subgroups { SUBGROUPS } else { NO_SUBGROUPS })
            .with_prefix(kv_reader(shape.kv))
            .with_prefix(ATTN_COMMON)
            .with_prefix(if self.workgroup_bytes >= 32 << 10 { TILE_1024 } else { TILE_512 })
            .with_prefix(width.prelude())
            .with_prefix(STEP)
            .with_constant("BK", self.key_tile as i64)
            .with_constant("HPL", hd4.div_ceil(PREFILL_GPU_LANES) as i64)
            .with_constant("SPT", (self.key_tile * hd4).div_ceil(self.invocations) as i64)
    }
}

/// The split count of a decode grid over up to `max_ctx` keys: ~256 keys per split at full
/// context, at most 64 splits. The step's `kv_len` uses the first [`active_splits`] of them.
pub fn default_splits(max_ctx: u32) -> u32 {
    max_ctx.div_ceil(256).clamp(1, 64)
}

/// Keys per split at `kv_len` keys with a grid of `n_split` splits (the shader's
/// `split_plan`): about [`DECODE_SPLIT_KEYS`] or more, over at most `n_split` splits, rounded
/// up to whole tiles of [`DECODE_TILE`].
pub fn split_keys(kv_len: u32, n_split: u32) -> u32 {
    let n = kv_len.max(1);
    let want = n.div_ceil(DECODE_SPLIT_KEYS).clamp(1, n_split.max(1));
    n.div_ceil(want).next_multiple_of(DECODE_TILE)
}

/// Splits of a grid of `n_split` that hold keys at `kv_len` keys: the only ones that run
/// and that the combine pass merges.
pub fn active_splits(kv_len: u32, n_split: u32) -> u32 {
    kv_len.max(1).div_ceil(split_keys(kv_len, n_split))
}

/// Query rows per decode workgroup for `shape` (the shader's `R` override): the heads of one
/// KV group times as many of the `max_tok` tokens as fit in [`DECODE_MAX_ROWS`]; for a group
/// wider than that, its largest divisor that fits. No row slot is left empty at `n_tok =
/// max_tok`, and a single token uses exactly `group` rows (4 for Ministral 3 3B, 3 for SmolLM2).
pub fn decode_rows(shape: &AttnShape) -> u32 {
    let group = group(shape).max(1);
    if group <= DECODE_MAX_ROWS {
        group * shape.max_tok.clamp(1, DECODE_MAX_ROWS / group)
    } else {
        (1..=DECODE_MAX_ROWS).rev().find(|d| group.is_multiple_of(*d)).unwrap_or(1)
    }
}

/// The decode grid `[n_split, n_kv_head, row chunks]` recorded for `shape`.
pub fn decode_grid(shape: &AttnShape, n_split: u32) -> [u32; 3] {
    [n_split.max(1), shape.n_kv_head, (shape.max_tok * group(shape)).div_ceil(decode_rows(shape))]
}

/// The split-K partials of decode, as [`attention_decode`] binds them
/// (`kernels::attention::DecodeScratch`'s buffers and the shape it was made for).
pub struct Scratch<'a> {
    /// `[rows][n_split]` of (max, sum).
    pub ml: &'a wgpu::Buffer,
    /// `[rows][n_split][head_dim]` unnormalised outputs.
    pub o: &'a wgpu::Buffer,
    pub n_split: u32,
    pub rows: u32,
    pub head_dim: u32,
}

/// Records split-K decode attention (two dispatches): like [`attention_prefill`], for any
/// `kv_len` up to the cache size, with a grid that does not depend on `kv_len`
/// ([`decode_grid`]: `n_split` x `n_kv_head` x row chunks of [`decode_rows`]), then the
/// combine pass. Only the first [`active_splits`]`(kv_len)` splits work and are merged.
#[allow(clippy::too_many_arguments)]
pub fn attention_decode(
    prog: &mut Program,
    gpu: &Gpu,
    shape: &AttnShape,
    step: &wgpu::Buffer,
    q: &wgpu::Buffer,
    k_cache: &wgpu::Buffer,
    v_cache: &wgpu::Buffer,
    scratch: &Scratch,
    out: &wgpu::Buffer,
) -> Result<()> {
    let grid = decode_grid(shape, scratch.n_split);
    decode_dispatches(prog, gpu, shape, (Steps::One(step), decode_rows(shape)), grid, (q, k_cache, v_cache), scratch, out)
}

/// Records [`attention_decode`] of `shape.max_tok` sequences of one token each in the same
/// two dispatches: token t (q row t, out row t) at its own step, `steps[t]` (a storage
/// buffer of [`StepParams`](crate::kernels::attention::StepParams)), its cache rows a range
/// of `k_cache` / `v_cache` (the sequences' KV arena) from the step's `kv_base`. Each row
/// computes as in a one-token [`attention_decode`] of its sequence alone (the same rows per
/// workgroup and splits), so the results are the same bits.
#[allow(clippy::too_many_arguments)]
pub fn attention_decode_seqs(
    prog: &mut Program,
    gpu: &Gpu,
    shape: &AttnShape,
    steps: &wgpu::Buffer,
    q: &wgpu::Buffer,
    (k_cache, v_cache): (&wgpu::Buffer, &wgpu::Buffer),
    scratch: &Scratch,
    out: &wgpu::Buffer,
) -> Result<()> {
    let one = AttnShape { max_tok: 1, ..*shape };
    let rows = decode_rows(&one);
    let [n_split, n_kv_head, chunks] = decode_grid(&one, scratch.n_split);
    let grid = [n_split, n_kv_head, shape.max_tok * chunks];
    decode_dispatches(prog, gpu, shape, (Steps::PerRow(steps), rows), grid, (q, k_cache, v_cache), scratch, out)
}

/// Where RoPE's and decode attention's dispatches read their steps
/// ([`StepParams`](crate::kernels::attention::StepParams)): one sequence's uniform, or a
/// storage buffer of one per token row (the sequences of a batched step, one token each).
#[derive(Clone, Copy)]
pub enum Steps<'a> {
    One(&'a wgpu::Buffer),
    PerRow(&'a wgpu::Buffer),
}

/// The decode pass over `grid`, `rows` rows per workgroup (the shader's `R`), and its
/// combine pass.
#[allow(clippy::too_many_arguments)]
fn decode_dispatches(
    prog: &mut Program,
    gpu: &Gpu,
    shape: &AttnShape,
    (steps, rows): (Steps, u32),
    grid: [u32; 3],
    (q, k_cache, v_cache): (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer),
    scratch: &Scratch,
    out: &wgpu::Buffer,
) -> Result<()> {
    if shape.max_tok * shape.n_head > scratch.rows || shape.head_dim > scratch.head_dim {
        return Err(GpuError::Shape(format!(
            "attention_decode: scratch made for {} rows of {}, shape needs {} of {}",
            scratch.rows,
            scratch.head_dim,
            shape.max_tok * shape.n_head,
            shape.head_dim
        )));
    }
    let params = params(shape, scratch.n_split);
    let (step, seq_of, [decode_bindings, combine_bindings]) = match steps {
        Steps::One(step) => (step, SEQ_ONE, [DECODE_BINDINGS, COMBINE_BINDINGS]),
        Steps::PerRow(steps) => (steps, SEQ_ROWS, [DECODE_SEQS_BINDINGS, COMBINE_SEQS_BINDINGS]),
    };
    // On CPU adapters a row per invocation over the same splits: no barriers, which they pay
    // most. The same module for both entries (the reader is part of it; combine does not read
    // the cache).
    let cpu = gpu.caps.geometry == Geometry::Cpu;
    let spec = |entry, bindings| {
        let spec = KernelSpec::new("attention_decode", if cpu { DECODE_CPU } else { DECODE }, entry, bindings)
            .with_prefix(kv_reader(shape.kv))
            .with_prefix(ATTN_COMMON)
            .with_prefix(RowWidth::of(shape.head_dim).prelude())
            .with_prefix(STEP)
            .with_prefix(seq_of);
        if cpu {
            spec
        } else {
            spec.with_prefix(if gpu.caps.subgroups { SUBGROUPS } else { NO_SUBGROUPS })
        }
    };
    let q_rows = shape.max_tok * shape.n_head;
    // (kernel, grid, workgroup size) of each pass; 128 and 64 are attention_decode.wgsl's.
    let [decode, combine] = if cpu {
        let chunks = q_rows.div_ceil(DECODE_CPU_WG);
        [
            (spec("attn_decode", decode_bindings), [grid[0], chunks, 1], DECODE_CPU_WG),
            (spec("attn_combine", combine_bindings), [chunks, 1, 1], DECODE_CPU_WG),
        ]
    } else {
        [
            (spec("attn_decode", decode_bindings).with_constant("R", rows as i64), grid, 128),
            (spec("attn_combine", combine_bindings), grid_1d(q_rows), 64),
        ]
    };
    if decode.1.iter().chain(&combine.1).any(|&n| n > MAX_GRID_DIM) {
        return Err(GpuError::Shape(format!("attention_decode: {} tokens do not fit one grid", shape.max_tok)));
    }
    let args = [Arg::Buf(step), Arg::Buf(scratch.ml), Arg::Buf(scratch.o), Arg::Buf(q), Arg::Buf(k_cache), Arg::Buf(v_cache)];
    prog.push_with_params(gpu, &decode.0, &params, &args, decode.1)?;
    prog.set_launch(Launch::threads(decode.2));
    let args = [Arg::Buf(step), Arg::Buf(scratch.ml), Arg::Buf(scratch.o), Arg::Buf(out)];
    prog.push_with_params(gpu, &combine.0, &params, &args, combine.1)?;
    prog.set_launch(Launch::threads(combine.2));
    Ok(())
}
