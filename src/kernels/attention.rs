//! Causal grouped-query attention over the KV cache: a tiled FlashAttention-style prefill
//! kernel (`shaders/attention_prefill.wgsl`, Dao et al. 2022) and a split-K decode kernel with
//! its combine pass (`shaders/attention_decode.wgsl`, flash-decoding), plus [`StepParams`],
//! the per-step uniform that RoPE, the KV-cache store and attention read.
//!
//! Layouts (row-major): q `[n_tok][q_stride]` f32 with head h at `q_offset + h*head_dim`;
//! caches `[max_ctx][n_kv_head*head_dim]` of [`KvDtype`] (f32, or f16 packed two per word);
//! out `[n_tok][n_head*head_dim]` f32. Query head h uses KV head `h / (n_head / n_kv_head)`.
//! New token t sits at cache row `kv_start + t` and (causal) sees rows `0..=kv_start + t`; the
//! cache must already hold the new rows. The math is f32 whatever the cache type.
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
//! or 256 (up to [`MAX_HEAD_DIM`]: Qwen3.5's full-attention heads), that sizes its tiles and
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

pub use super::shapes::{AttnShape, KvDtype};
use bytemuck::{Pod, Zeroable};

use crate::backend::{cpu, Buffer, Device, On, Program};
use crate::gpu::{grid_1d, Access, Arg, Geometry, GpuError, KernelSpec, Launch, Result, MAX_GRID_DIM};

/// The `Step` struct shared by the RoPE and attention shaders.
pub(crate) const STEP: &str = include_str!("../../shaders/step.wgsl");
/// The `Params` struct and the constants shared by the attention shaders.
pub(super) const ATTN_COMMON: &str = include_str!("../../shaders/attention_common.wgsl");
pub(super) const PREFILL: &str = include_str!("../../shaders/attention_prefill.wgsl");
pub(super) const PREFILL_GPU: &str = include_str!("../../shaders/attention_prefill_gpu.wgsl");
pub(super) const DECODE: &str = include_str!("../../shaders/attention_decode.wgsl");
/// Preludes of the GPU prefill shape and of decode: subgroup row reductions (native adapters
/// with subgroups, GPU geometry), or the workgroup-memory-only stand-ins (everywhere else).
pub(super) const SUBGROUPS: &str = include_str!("../../shaders/attention_subgroups.wgsl");
pub(super) const NO_SUBGROUPS: &str = include_str!("../../shaders/attention_nosubgroups.wgsl");
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

impl KvDtype {
    /// Bytes per cache element.
    pub fn bytes(self) -> u64 {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 => 2,
        }
    }

    /// Bytes of one cache (K or V) of `rows` rows of `row_elems` elements.
    pub fn cache_bytes(self, rows: u32, row_elems: u32) -> u64 {
        rows as u64 * row_elems as u64 * self.bytes()
    }

    pub(super) fn reader(self) -> &'static str {
        match self {
            KvDtype::F32 => KV_READ_F32,
            KvDtype::F16 => KV_READ_F16,
        }
    }
}

/// Largest supported head_dim ([`RowWidth::W256`]; Qwen3.5's full-attention layers).
pub const MAX_HEAD_DIM: u32 = 256;
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

/// The per-step uniform (16 bytes) that the decode loop writes once per step with
/// `queue.write_buffer`; recorded programs bind it and never change. Mirrored as `Step` in
/// `rope.wgsl`, `attention_prefill.wgsl` and `attention_decode.wgsl`. It may be the first 16
/// bytes of a larger uniform buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct StepParams {
    /// Cache row of the first new token (tokens already in the cache).
    pub kv_start: u32,
    /// New tokens this step (at most the `max_tok` the program was recorded for).
    pub n_tok: u32,
    /// Position id of the first new token (RoPE and query scaling use `rope_pos0 + t`).
    pub rope_pos0: u32,
    pub _pad: u32,
}

impl StepParams {
    pub fn new(kv_start: u32, n_tok: u32, rope_pos0: u32) -> StepParams {
        StepParams { kv_start, n_tok, rope_pos0, _pad: 0 }
    }

    /// Keys visible after this step: `kv_start + n_tok`.
    pub fn kv_len(&self) -> u32 {
        self.kv_start + self.n_tok
    }

    /// A 16-byte buffer for the step, created once: on the GPU a uniform one (UNIFORM |
    /// COPY_DST).
    pub fn create_buffer(dev: &Device) -> Result<Buffer> {
        let size = std::mem::size_of::<StepParams>() as u64;
        match dev {
            Device::Gpu(gpu) => Ok(Buffer::Gpu(gpu.buffer(&wgpu::BufferDescriptor {
                label: Some("step"),
                size,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }))),
            Device::Cpu(_) => dev.storage("step", size),
        }
    }

    /// The step a CPU op runs at: `buffer`'s words, read when the op runs.
    pub fn read_cpu(buffer: &cpu::Buffer) -> std::result::Result<StepParams, cpu::ProgramError> {
        let w = buffer.read_u32(4)?;
        Ok(StepParams { kv_start: w[0], n_tok: w[1], rope_pos0: w[2], _pad: 0 })
    }

    /// Writes this step into `buffer` (offset 0): queued on the GPU.
    pub fn write(&self, dev: &Device, buffer: &Buffer) -> Result<()> {
        dev.write(buffer, 0, bytemuck::bytes_of(self))
    }
}

impl AttnShape {
    /// Dense q, scale `1/sqrt(head_dim)`, causal.
    pub fn new(n_head: u32, n_kv_head: u32, head_dim: u32, max_tok: u32) -> AttnShape {
        AttnShape {
            n_head,
            n_kv_head,
            head_dim,
            max_tok,
            q_stride: n_head * head_dim,
            q_offset: 0,
            scale: 1.0 / (head_dim as f32).sqrt(),
            causal: true,
            kv: KvDtype::F32,
            valid_rows: u32::MAX,
        }
    }

    fn group(&self) -> u32 {
        self.n_head / self.n_kv_head.max(1)
    }

    fn check(&self) -> Result<()> {
        let fail = |m: String| Err(GpuError::Shape(format!("attention: {m}")));
        if !(self.head_dim <= MAX_HEAD_DIM && self.head_dim.is_multiple_of(4) && self.head_dim > 0) {
            return fail(format!("head_dim {} must be a multiple of 4 and <= {MAX_HEAD_DIM}", self.head_dim));
        }
        if !(self.n_kv_head > 0 && self.n_head.is_multiple_of(self.n_kv_head)) {
            return fail(format!("{} heads are not a multiple of {} KV heads", self.n_head, self.n_kv_head));
        }
        if !(self.q_stride.is_multiple_of(4) && self.q_offset.is_multiple_of(4)) {
            return fail("q stride/offset not multiples of 4".into());
        }
        Ok(())
    }

    fn params(&self, n_split: u32) -> Params {
        Params {
            n_head: self.n_head,
            n_kv_head: self.n_kv_head,
            head_dim: self.head_dim,
            max_tok: self.max_tok,
            q_stride: self.q_stride,
            q_offset: self.q_offset,
            kv_stride: self.n_kv_head * self.head_dim,
            causal: self.causal as u32,
            scale: self.scale,
            n_split,
            split_keys: DECODE_SPLIT_KEYS,
            valid_rows: self.valid_rows,
        }
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

/// Records prefill attention: the step's `n_tok` new tokens (queries in `q`) against cache
/// rows `0..kv_start + n_tok` of `k_cache`/`v_cache`, into `out` `[n_tok][n_head*head_dim]`.
/// Grid: `ceil(max_tok * group / rows)` x `n_kv_head` workgroups of the [`PrefillLaunch`]
/// chosen from the device's geometry, workgroup memory and subgroups.
#[allow(clippy::too_many_arguments)]
pub fn attention_prefill(
    prog: &mut Program,
    dev: &Device,
    shape: &AttnShape,
    step: &Buffer,
    q: &Buffer,
    k_cache: &Buffer,
    v_cache: &Buffer,
    out: &Buffer,
) -> Result<()> {
    let (prog, gpu) = match prog.on(dev)? {
        On::Gpu(prog, gpu) => (prog, gpu),
        On::Cpu(prog, _) => return cpu_attention(prog, shape, step, q, (k_cache, v_cache), out),
    };
    let step = step.gpu()?;
    let q = q.gpu()?;
    let k_cache = k_cache.gpu()?;
    let v_cache = v_cache.gpu()?;
    let out = out.gpu()?;
    shape.check()?;
    let caps = &gpu.caps;
    // Subgroups in the GPU geometry only, as in decode: the CPU one stands for the browser.
    let subgroups = caps.subgroups && caps.geometry == Geometry::Gpu;
    let launch = PrefillLaunch::of(caps.geometry, shape.head_dim, caps.max_workgroup_storage).with_subgroups(subgroups);
    let grid = launch.grid(shape);
    if grid[0] > MAX_GRID_DIM {
        return Err(GpuError::Shape(format!("attention_prefill: {} tokens do not fit one grid", shape.max_tok)));
    }
    let args = [Arg::Buf(step), Arg::Buf(q), Arg::Buf(k_cache), Arg::Buf(v_cache), Arg::Buf(out)];
    prog.push_with_params(gpu, &launch.spec(shape), &shape.params(1), &args, grid)?;
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
        [(shape.max_tok * shape.group()).div_ceil(self.rows), shape.n_kv_head, 1]
    }

    fn spec(&self, shape: &AttnShape) -> KernelSpec {
        let width = RowWidth::of(shape.head_dim);
        if !self.registers {
            debug_assert_eq!(width, RowWidth::W128, "the CPU prefill shape takes head_dim <= 128");
            return KernelSpec::new("attention_prefill", PREFILL, "attn_prefill", PREFILL_BINDINGS)
                .with_prefix(shape.kv.reader())
                .with_prefix(ATTN_COMMON)
                .with_prefix(WIDTH_128)
                .with_prefix(STEP);
        }
        let hd4 = shape.head_dim / 4;
        KernelSpec::new("attention_prefill", PREFILL_GPU, "attn_prefill_gpu", PREFILL_BINDINGS)
            .with_prefix(if self.subgroups { SUBGROUPS } else { NO_SUBGROUPS })
            .with_prefix(shape.kv.reader())
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
    let group = shape.group().max(1);
    if group <= DECODE_MAX_ROWS {
        group * shape.max_tok.clamp(1, DECODE_MAX_ROWS / group)
    } else {
        (1..=DECODE_MAX_ROWS).rev().find(|d| group.is_multiple_of(*d)).unwrap_or(1)
    }
}

/// The decode grid `[n_split, n_kv_head, row chunks]` recorded for `shape`.
pub fn decode_grid(shape: &AttnShape, n_split: u32) -> [u32; 3] {
    [n_split.max(1), shape.n_kv_head, (shape.max_tok * shape.group()).div_ceil(decode_rows(shape))]
}

/// Partial results of split-K decode, allocated once per context.
pub struct DecodeScratch {
    /// `[max_tok * n_head][n_split]` of (max, sum).
    pub ml: Buffer,
    /// `[max_tok * n_head][n_split][head_dim]` unnormalised outputs.
    pub o: Buffer,
    /// Splits of the grid (the most any `kv_len` uses).
    pub n_split: u32,
    /// Capacity: `max_tok * n_head` rows of `head_dim` floats.
    pub rows: u32,
    pub head_dim: u32,
}

impl DecodeScratch {
    pub fn new(dev: &Device, shape: &AttnShape, n_split: u32) -> Result<DecodeScratch> {
        let rows = (shape.max_tok * shape.n_head * n_split.max(1)) as u64;
        Ok(DecodeScratch {
            ml: dev.storage("attn_part_ml", rows * 8)?,
            o: dev.storage("attn_part_o", rows * shape.head_dim as u64 * 4)?,
            n_split: n_split.max(1),
            rows: shape.max_tok * shape.n_head,
            head_dim: shape.head_dim,
        })
    }
}

/// Records attention on the CPU at the step's `kv_start` and `n_tok` (read when it runs).
fn cpu_attention(
    prog: &mut cpu::Program,
    shape: &AttnShape,
    step: &Buffer,
    q: &Buffer,
    (k_cache, v_cache): (&Buffer, &Buffer),
    out: &Buffer,
) -> Result<()> {
    shape.check()?;
    let (step, q, k, v, out) =
        (step.cpu()?.clone(), q.cpu()?.clone(), k_cache.cpu()?.clone(), v_cache.cpu()?.clone(), out.cpu()?.clone());
    let shape = *shape;
    let width = shape.n_head as usize * shape.head_dim as usize;
    prog.push("attention", move |pool| {
        let s = StepParams::read_cpu(&step)?;
        let n = s.n_tok.min(shape.max_tok) as usize;
        let (q, k, v, mut out) = (q.read()?, k.read()?, v.read()?, out.write_n(n * width)?);
        let kv_start = s.kv_start as usize;
        Ok(match shape.kv {
            KvDtype::F32 => cpu::attention::attention_prefill(pool, &shape, &q, &k, &v, &mut out, n, kv_start),
            KvDtype::F16 => {
                let (k, v): (&[u16], &[u16]) = (bytemuck::cast_slice(&k[..]), bytemuck::cast_slice(&v[..]));
                cpu::attention::attention_prefill(pool, &shape, &q, k, v, &mut out, n, kv_start)
            }
        }?)
    });
    Ok(())
}

/// Records split-K decode attention (two dispatches): like [`attention_prefill`], for any
/// `kv_len` up to the cache size, with a grid that does not depend on `kv_len`
/// ([`decode_grid`]: `n_split` x `n_kv_head` x row chunks of [`decode_rows`]), then the
/// combine pass. Only the first [`active_splits`]`(kv_len)` splits work and are merged.
#[allow(clippy::too_many_arguments)]
pub fn attention_decode(
    prog: &mut Program,
    dev: &Device,
    shape: &AttnShape,
    step: &Buffer,
    q: &Buffer,
    k_cache: &Buffer,
    v_cache: &Buffer,
    scratch: &DecodeScratch,
    out: &Buffer,
) -> Result<()> {
    let (prog, gpu) = match prog.on(dev)? {
        On::Gpu(prog, gpu) => (prog, gpu),
        // The CPU needs no split-K partials: one pass per query row.
        On::Cpu(prog, _) => return cpu_attention(prog, shape, step, q, (k_cache, v_cache), out),
    };
    let step = step.gpu()?;
    let q = q.gpu()?;
    let k_cache = k_cache.gpu()?;
    let v_cache = v_cache.gpu()?;
    let out = out.gpu()?;
    shape.check()?;
    if shape.max_tok * shape.n_head > scratch.rows || shape.head_dim > scratch.head_dim {
        return Err(GpuError::Shape(format!(
            "attention_decode: scratch made for {} rows of {}, shape needs {} of {}",
            scratch.rows,
            scratch.head_dim,
            shape.max_tok * shape.n_head,
            shape.head_dim
        )));
    }
    let grid = decode_grid(shape, scratch.n_split);
    if grid[2] > MAX_GRID_DIM {
        return Err(GpuError::Shape(format!("attention_decode: {} tokens do not fit one grid", shape.max_tok)));
    }
    let params = shape.params(scratch.n_split);
    let subgroups = gpu.caps.geometry == Geometry::Gpu && gpu.caps.subgroups;
    let width = RowWidth::of(shape.head_dim).prelude();
    let spec = KernelSpec::new("attention_decode", DECODE, "attn_decode", DECODE_BINDINGS)
        .with_prefix(if subgroups { SUBGROUPS } else { NO_SUBGROUPS })
        .with_prefix(shape.kv.reader())
        .with_prefix(ATTN_COMMON)
        .with_prefix(width)
        .with_prefix(STEP)
        .with_constant("R", decode_rows(shape) as i64);
    let args = [
        Arg::Buf(step),
        Arg::Buf(scratch.ml.gpu()?),
        Arg::Buf(scratch.o.gpu()?),
        Arg::Buf(q),
        Arg::Buf(k_cache),
        Arg::Buf(v_cache),
    ];
    prog.push_with_params(gpu, &spec, &params, &args, grid)?;
    prog.set_launch(Launch::threads(128)); // WG in attention_decode.wgsl
                                           // Same module as attn_decode (the reader is part of it; combine does not read the cache).
    let spec = KernelSpec::new("attention_decode", DECODE, "attn_combine", COMBINE_BINDINGS)
        .with_prefix(if subgroups { SUBGROUPS } else { NO_SUBGROUPS })
        .with_prefix(shape.kv.reader())
        .with_prefix(ATTN_COMMON)
        .with_prefix(width)
        .with_prefix(STEP);
    let args = [Arg::Buf(step), Arg::Buf(scratch.ml.gpu()?), Arg::Buf(scratch.o.gpu()?), Arg::Buf(out)];
    prog.push_with_params(gpu, &spec, &params, &args, grid_1d(shape.max_tok * shape.n_head))?;
    prog.set_launch(Launch::threads(64)); // attn_combine
    Ok(())
}

/// Rounds `x` to f16 values as the f16 cache stores them (round to nearest even), for
/// references of the f16-cache path.
pub fn round_f16(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect()
}

/// `x` as f16 bits packed two per word, the [`KvDtype::F16`] cache layout (length even).
pub fn pack_f16(x: &[f32]) -> Vec<u32> {
    x.chunks(2)
        .map(|c| {
            let lo = half::f16::from_f32(c[0]).to_bits() as u32;
            let hi = c.get(1).map_or(0, |&v| half::f16::from_f32(v).to_bits() as u32);
            lo | hi << 16
        })
        .collect()
}

/// The inverse of [`pack_f16`].
pub fn unpack_f16(words: &[u32]) -> Vec<f32> {
    words
        .iter()
        .flat_map(|&w| [half::f16::from_bits(w as u16).to_f32(), half::f16::from_bits((w >> 16) as u16).to_f32()])
        .collect()
}

/// CPU reference (f64 accumulation) of both kernels: `q` dense `[n_tok][n_head*head_dim]`,
/// caches `[>= kv_start + n_tok][n_kv_head*head_dim]`; returns `[n_tok][n_head*head_dim]`.
#[allow(clippy::too_many_arguments)]
pub fn attention_ref(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    n_tok: usize,
    kv_start: usize,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    scale: f32,
    causal: bool,
) -> Vec<f32> {
    let (group, kvs, hd) = (n_head / n_kv_head, n_kv_head * head_dim, head_dim);
    let mut out = vec![0f32; n_tok * n_head * hd];
    for t in 0..n_tok {
        let n_keys = if causal { kv_start + t + 1 } else { kv_start + n_tok };
        for h in 0..n_head {
            let g = h / group;
            let qr = &q[(t * n_head + h) * hd..][..hd];
            let scores: Vec<f64> = (0..n_keys)
                .map(|key| {
                    let kr = &k_cache[key * kvs + g * hd..][..hd];
                    qr.iter().zip(kr).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale as f64
                })
                .collect();
            let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
            let den: f64 = w.iter().sum();
            for d in 0..hd {
                let num: f64 = w.iter().enumerate().map(|(key, wk)| wk * v_cache[key * kvs + g * hd + d] as f64).sum();
                out[(t * n_head + h) * hd + d] = (num / den) as f32;
            }
        }
    }
    out
}
