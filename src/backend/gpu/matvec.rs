//! The decode matvec's dispatches (`shaders/matvec.wgsl`, after the decoders of
//! `shaders/quant.wgsl` and a subgroup prelude): `y[t] = W · x[t]` for a few tokens, one
//! dispatch per weight part. GEMV with coalesced weight reads, several rows per thread,
//! whole-block decoding from vec4 loads for the block formats and a workgroup-memory reduction
//! (details in the shader); reference: llama.cpp `mul_mat_vec` (ggml-vulkan / ggml-webgpu).
//! Epilogues fold the residual add and the SiLU-gated product into the dispatch.
//!
//! Launch shapes ([`MatvecLaunch`], from the adapter's [`Geometry`]):
//! - GPU: 64-invocation workgroups of 4 output rows (one row group of up to 64 lanes, tree
//!   reduction): a 3072-row matrix launches 768 workgroups, enough for 128 compute units;
//!   4 rows per thread keep registers moderate; block-format matrices of fewer than 2048
//!   rows take 2 rows per workgroup (a 1024-row V projection: 512 workgroups).
//! - CPU adapters: on the block path, 64-invocation workgroups of 256 rows, each thread 4
//!   whole rows (no reduction; measured on lavapipe, SmolLM2: a decode step 55-76 against
//!   90-95 ms with 16 rows per thread and 32 lanes per row). A CPU adapter runs a
//!   workgroup's invocations as SIMD lanes; with whole rows every lane reads the same x,
//!   which comes through uniform windows ([`XWindows`]: llvmpipe loads storage lane by lane),
//!   or a uniform binding per token where a thread's tokens do not fit one window.
//!   Several tokens (a batched decode step, a prompt chunk): up to 8 tokens of 8 rows per thread
//!   ([`MatvecLaunch::for_tokens`]). Generic path: 256-invocation workgroups, one summing
//!   thread per row group after a single barrier.

use std::borrow::Cow;

use bytemuck::{Pod, Zeroable};

use super::quant::{layout, specialise, WLayout};
use super::{check_len, grid_1d, Access, Arg, Caps, Geometry, Gpu, GpuError, KernelSpec, Launch, Program, Result, WeightRead};
use crate::kernels::quant::{Weight, WeightFormat};
use crate::kernels::shapes::{Epilogue, Output};

pub(super) const SHADER: &str = include_str!("../../../shaders/matvec.wgsl");
/// Preludes: subgroup entry points and `lanes_sum` (native adapters with subgroups), or the
/// workgroup-memory-only stub (everywhere else).
pub(super) const SUBGROUPS: &str = include_str!("../../../shaders/matvec_subgroups.wgsl");
pub(super) const NO_SUBGROUPS: &str = include_str!("../../../shaders/matvec_nosubgroups.wgsl");
const BINDINGS: &[Access] = &[Access::Uniform, Access::Read, Access::Read, Access::ReadWrite];
/// `matvec_blk`: also vec4 views of x (binding 4) and of the weight (binding 5); on CPU
/// adapters x's view is a uniform window ([`XWindows`]).
const BINDINGS_BLK: &[Access] = &[Access::Uniform, Access::Read, Access::Read, Access::ReadWrite, Access::Read, Access::Read];
const BINDINGS_BLK_UNIFORM_X: &[Access] =
    &[Access::Uniform, Access::Read, Access::Read, Access::ReadWrite, Access::Uniform, Access::Read];
/// x as one uniform binding per token of a thread (`XView::PerToken`): bindings 4 and 6.. of
/// these (the first `5 + tokens`).
const BINDINGS_BLK_X_PER_TOKEN: &[Access; 13] = &[
    Access::Uniform,
    Access::Read,
    Access::Read,
    Access::ReadWrite,
    Access::Uniform,
    Access::Read,
    Access::Uniform,
    Access::Uniform,
    Access::Uniform,
    Access::Uniform,
    Access::Uniform,
    Access::Uniform,
    Access::Uniform,
];
/// The bytes of x one uniform window binds at most: WebGPU's default limit of a uniform
/// binding, which every adapter grants.
const X_WINDOW_BYTES: u64 = 64 << 10;

/// The tokens of a matvec's dispatches and how the block path sees their x (binding 4).
///
/// On CPU adapters x is read through uniform bindings, each a window of the buffer from its
/// dispatch's first token. A CPU adapter runs a workgroup's invocations as SIMD lanes and
/// loads from a storage buffer with a loop over the lanes, each lane's address checked, even
/// where every lane reads the same word (as all lanes do for x with whole rows per thread);
/// a uniform load is one gather. Measured on lavapipe, SmolLM2's Q4_1 matrices: 1.2x faster
/// for one token, 1.7x for 8 tokens per thread. Where a thread's tokens do not fit one window
/// (wide rows: 8 tokens of 3072 columns, 2 of 9216), each of them gets a uniform binding of
/// its own row, one dispatch per thread's tokens, so that every row's weights are still
/// decoded once for all of them.
struct XWindows {
    /// Tokens per dispatch: all of them, or a window's (a whole number of threads' tokens).
    tokens: u32,
    /// How x is bound.
    view: XBinding,
}

/// Where a dispatch of [`XWindows`] reads x from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum XBinding {
    /// The whole buffer, as storage.
    Storage,
    /// A uniform window of at most this many bytes from the dispatch's first token.
    Window(u64),
    /// One uniform binding per token of the dispatch (its one thread's tokens).
    PerToken,
}

/// How one dispatch of the block path sees x.
#[derive(Clone, Copy)]
pub(super) enum XView {
    /// The whole buffer, as storage.
    Storage,
    /// A uniform window of this many vec4s.
    Uniform(u64),
    /// One uniform binding of this many vec4s (a row) for each of a thread's `tokens` (at most
    /// 8: with the params, 9 of the 12 uniform bindings WebGPU grants a stage).
    PerToken { tokens: u32, vec4s: u64 },
}

/// `xv4` and `x_of` of the views that hold the dispatch's tokens in one binding, `xv`.
const X_ONE_BINDING: &str = "fn xv4(k: u32, i: u32) -> vec4<f32> { return xv[i]; }
fn x_of(t: u32) -> u32 { return (min(t, p.n_tok - 1u) - p.tok0) * (p.x_stride / 4u); }
";

impl XView {
    /// The declaration of x's bindings (4, then 6.. for more tokens) and of `xv4(k, i)` and
    /// `x_of(t)` over them: a prelude of the module.
    pub(super) fn declaration(self) -> Cow<'static, str> {
        match self {
            XView::Storage => format!("@group(0) @binding(4) var<storage, read> xv: array<vec4<f32>>;\n{X_ONE_BINDING}").into(),
            XView::Uniform(n) => format!("@group(0) @binding(4) var<uniform> xv: array<vec4<f32>, {n}>;\n{X_ONE_BINDING}").into(),
            XView::PerToken { tokens, vec4s } => {
                let binding = |k: u32| if k == 0 { 4 } else { 5 + k };
                let mut s = String::new();
                for k in 0..tokens {
                    s += &format!("@group(0) @binding({}) var<uniform> xt{k}: array<vec4<f32>, {vec4s}>;\n", binding(k));
                }
                s += "fn xv4(k: u32, i: u32) -> vec4<f32> {\n";
                for k in 1..tokens {
                    s += &format!("    if (k == {k}u) {{ return xt{k}[i]; }}\n");
                }
                s += "    return xt0[i];\n}\nfn x_of(t: u32) -> u32 { return 0u; }\n";
                s.into()
            }
        }
    }
}

/// The shader's `EPI` override of an epilogue.
fn epilogue_code(epilogue: Epilogue) -> i64 {
    match epilogue {
        Epilogue::Store => 0,
        Epilogue::Add => 1,
        Epilogue::SiluMul => 2,
    }
}

/// The launch shape of the matvec of one weight (the shader's override constants).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatvecLaunch {
    /// `matvec_blk` for the block formats, `matvec` otherwise.
    pub entry: &'static str,
    /// Invocations per workgroup (`WG`).
    pub invocations: u32,
    /// Threads per row group (`TPR` / `TPB`).
    pub lanes: u32,
    /// Weight rows per thread (`NR` / `NRB`).
    pub rows_per_thread: u32,
    /// Tree reduction (GPU) or one summing thread per row group (CPU).
    pub tree: bool,
    /// Q4_0 in units of two blocks.
    pub pair: bool,
    /// Subgroup shuffles start the tree reduction (native adapters with subgroups, GPU shape).
    pub subgroups: bool,
    /// Tokens per thread (`NT`): 1, or 2, 4 or 8 on the block path, each weight unit decoded
    /// once for all of them (`for_tokens`).
    pub tokens_per_thread: u32,
}

impl MatvecLaunch {
    pub fn of(geometry: Geometry, w: &Weight) -> MatvecLaunch {
        use WeightFormat as W;
        let blocks = w.cols / w.format.block() as u32;
        // Q4_0 rows of an even number of blocks: two blocks per unit (their f16 scales share a
        // word). Measured on lavapipe: Q4_0 +7-25%, Q8_0 no gain.
        let pair = w.format == W::Q4_0 && blocks.is_multiple_of(2);
        let units = match w.format {
            W::Q4_K | W::Q5_K | W::Q6_K => Some(4 * blocks),
            W::Q4_0 if pair => Some(blocks / 2),
            W::Q8_0 | W::Q4_0 | W::Q4_1 => Some(blocks),
            _ => None,
        };
        let gpu = geometry == Geometry::Gpu;
        match units {
            // GPU: a row group of up to 64 lanes (no idle lane on short rows), 4 rows; 2 for
            // matrices of fewer than 2048 rows (a 1024-row V projection: 512 workgroups).
            Some(units) if gpu => MatvecLaunch {
                entry: "matvec_blk",
                invocations: 64,
                lanes: units.next_power_of_two().min(64),
                rows_per_thread: if w.rows < 2048 { 2 } else { 4 },
                tree: true,
                pair,
                subgroups: false,
                tokens_per_thread: 1,
            },
            // CPU: whole rows per thread (the module header says why).
            Some(_) => MatvecLaunch {
                entry: "matvec_blk",
                invocations: 64,
                lanes: 1,
                rows_per_thread: 4,
                tree: false,
                pair,
                subgroups: false,
                tokens_per_thread: 1,
            },
            // Generic path: one lane per unit of 8 columns up to the cap (rows shorter than
            // 256 weights, such as a 16-wide LM head of 131k rows, leave no lane idle; on a CPU
            // adapter this also means far fewer workgroups).
            None => {
                let lanes = w.cols.div_ceil(8).next_power_of_two();
                let (invocations, cap) = if gpu { (64, 64) } else { (256, 32) };
                let lanes = lanes.min(cap);
                MatvecLaunch {
                    entry: "matvec",
                    invocations,
                    lanes,
                    rows_per_thread: 4,
                    tree: gpu,
                    pair: false,
                    subgroups: false,
                    tokens_per_thread: 1,
                }
            }
        }
    }

    /// The launch for `n_tok` tokens. On CPU adapters' block path a thread takes up to 8
    /// tokens (the largest power of two up to `n_tok`), each row's weight unit decoded once
    /// for all of them, and 8 rows in workgroups of half the invocations (the same 256 rows),
    /// so that each token's x, loaded once per unit, serves twice the rows of one token's
    /// launch. Each token's sums stay those of one token per thread (whole rows in unit order
    /// on CPU adapters, the same lanes per row elsewhere). GPUs keep one token per thread,
    /// not yet measured otherwise (a thread would hold its rows' decoded units for all tokens).
    pub fn for_tokens(self, n_tok: u32) -> MatvecLaunch {
        if self.entry != "matvec_blk" || self.tree || n_tok < 2 {
            return self;
        }
        MatvecLaunch {
            tokens_per_thread: 1 << n_tok.min(8).ilog2(),
            rows_per_thread: 2 * self.rows_per_thread,
            invocations: self.invocations / 2,
            ..self
        }
    }

    /// The same launch with subgroup reductions where `available` (the device's) and the
    /// shape reduces by tree.
    pub fn with_subgroups(self, available: bool) -> MatvecLaunch {
        MatvecLaunch { subgroups: available && self.tree, ..self }
    }

    /// Output rows per workgroup.
    pub fn outputs_per_workgroup(&self, epilogue: Epilogue) -> u32 {
        let rows = self.invocations / self.lanes * self.rows_per_thread;
        if epilogue == Epilogue::SiluMul {
            rows / 2
        } else {
            rows
        }
    }

    /// On CPU adapters' block path, x through uniform windows ([`XWindows`]), or a binding per
    /// token where one thread's tokens do not fit a window (with fewer tokens per thread
    /// where its rows cannot start a binding).
    fn x_windows(self, caps: &Caps, cols: u32, n_tok: u32) -> (MatvecLaunch, XWindows) {
        let whole = XWindows { tokens: n_tok.max(1), view: XBinding::Storage };
        let row = 4 * cols as u64;
        let limit = X_WINDOW_BYTES.min(caps.max_uniform_binding);
        if self.entry != "matvec_blk" || self.tree || row > limit {
            return (self, whole);
        }
        let nt = self.tokens_per_thread;
        if nt as u64 * row > limit && row.is_multiple_of(caps.min_uniform_offset_alignment as u64) {
            return (self, XWindows { tokens: nt, view: XBinding::PerToken });
        }
        let mut launch = self;
        while launch.tokens_per_thread as u64 * row > limit {
            launch.tokens_per_thread /= 2;
        }
        let nt = launch.tokens_per_thread;
        let tokens = (limit / row) as u32 / nt * nt;
        // A later window starts at an offset a uniform binding may take.
        if tokens < n_tok && !(tokens as u64 * row).is_multiple_of(caps.min_uniform_offset_alignment as u64) {
            return (self, whole);
        }
        (launch, XWindows { tokens: tokens.min(n_tok.max(1)), view: XBinding::Window(limit) })
    }

    fn spec(&self, w: &Weight, epilogue: Epilogue, x: XView) -> KernelSpec {
        let blk = self.entry == "matvec_blk";
        let (entry, prelude) = match (self.subgroups, blk) {
            (true, true) => ("matvec_blk_sg", SUBGROUPS),
            (true, false) => ("matvec_sg", SUBGROUPS),
            (false, _) => (self.entry, NO_SUBGROUPS),
        };
        let bindings = match (blk, x) {
            (false, _) => BINDINGS,
            (true, XView::Storage) => BINDINGS_BLK,
            (true, XView::Uniform(_)) => BINDINGS_BLK_UNIFORM_X,
            (true, XView::PerToken { tokens, .. }) => &BINDINGS_BLK_X_PER_TOKEN[..5 + tokens as usize],
        };
        let spec = specialise(w, KernelSpec::new("matvec", SHADER, entry, bindings))
            .with_prefix(x.declaration())
            .with_prefix(prelude)
            .with_constant("WG", self.invocations as i64)
            .with_constant("TREE", self.tree as i64)
            .with_constant("EPI", epilogue_code(epilogue));
        match blk {
            true => spec
                .with_constant("TPB", self.lanes as i64)
                .with_constant("NRB", self.rows_per_thread as i64)
                .with_constant("PAIR", self.pair as i64)
                .with_constant("NT", self.tokens_per_thread as i64),
            false => spec.with_constant("TPR", self.lanes as i64),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    layout: WLayout,
    rows: u32,
    cols: u32,
    n_tok: u32,
    row_offset: u32,
    y_stride: u32,
    x_stride: u32,
    /// The dispatch's first token: x's row 0 in its view.
    tok0: u32,
    _pad: u32,
}

/// Records `y[t][r] = sum_k w[r][k] * x[t][k]` for `t < n_tok` into the columns `out` names,
/// with its epilogue: `x` is `[n_tok][w.cols]` f32. One dispatch per weight part (and per
/// window of tokens on CPU adapters: [`XWindows`]).
pub fn record_into(
    prog: &mut Program,
    gpu: &Gpu,
    w: &Weight,
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
    out: Output,
    n_tok: u32,
) -> Result<()> {
    let glu = out.epilogue == Epilogue::SiluMul;
    if glu && (w.parts.len() != 1 || !w.rows.is_multiple_of(2)) {
        return Err(GpuError::Shape(format!("matvec {}: a SiLU-gated product needs one part of an even row count", w.label)));
    }
    let outputs = if glu { w.rows / 2 } else { w.rows };
    check_len("matvec x", x, n_tok as u64 * w.cols as u64)?;
    check_len("matvec y", y, (n_tok.max(1) - 1) as u64 * out.stride as u64 + out.offset as u64 + outputs as u64)?;
    let launch = MatvecLaunch::of(gpu.caps.geometry, w).for_tokens(n_tok).with_subgroups(gpu.caps.subgroups);
    let (launch, windows) = launch.x_windows(&gpu.caps, w.cols, n_tok);
    let row_bytes = 4 * w.cols as u64;
    for part in &w.parts {
        let weight = part.buffer.gpu()?;
        let part_outputs = if glu { part.rows / 2 } else { part.rows };
        for tok0 in (0..n_tok.max(1)).step_by(windows.tokens as usize) {
            let params = Params {
                layout: layout(w, part),
                rows: part.rows,
                cols: w.cols,
                n_tok,
                row_offset: out.offset + part.row_offset,
                y_stride: out.stride,
                x_stride: w.cols,
                tok0,
                _pad: 0,
            };
            let mut grid = grid_1d(part_outputs.div_ceil(launch.outputs_per_workgroup(out.epilogue)));
            grid[2] = windows.tokens.min(n_tok - tok0).div_ceil(launch.tokens_per_thread).max(1);
            match (launch.entry, windows.view) {
                ("matvec_blk", XBinding::PerToken) => {
                    // Token k's row (the last token's past the end) at binding 4, then 6...
                    let nt = launch.tokens_per_thread;
                    let spec = launch.spec(w, out.epilogue, XView::PerToken { tokens: nt, vec4s: row_bytes / 16 });
                    let row = |k: u32| Arg::Range(x, (tok0 + k).min(n_tok - 1) as u64 * row_bytes, row_bytes);
                    let mut args = vec![Arg::Buf(weight), Arg::Buf(x), Arg::Buf(y), row(0), Arg::Buf(weight)];
                    args.extend((1..nt).map(row));
                    prog.push_with_params(gpu, &spec, &params, &args, grid)?;
                }
                ("matvec_blk", XBinding::Window(limit)) => {
                    // The window from the first token: the rest of the buffer, up to the limit.
                    let offset = tok0 as u64 * row_bytes;
                    let bytes = (x.size() - offset).min(limit) / 16 * 16;
                    let spec = launch.spec(w, out.epilogue, XView::Uniform(bytes / 16));
                    let args = [Arg::Buf(weight), Arg::Buf(x), Arg::Buf(y), Arg::Range(x, offset, bytes), Arg::Buf(weight)];
                    prog.push_with_params(gpu, &spec, &params, &args, grid)?;
                }
                ("matvec_blk", XBinding::Storage) => {
                    let spec = launch.spec(w, out.epilogue, XView::Storage);
                    let args = [Arg::Buf(weight), Arg::Buf(x), Arg::Buf(y), Arg::Buf(x), Arg::Buf(weight)];
                    prog.push_with_params(gpu, &spec, &params, &args, grid)?;
                }
                _ => {
                    let spec = launch.spec(w, out.epilogue, XView::Storage);
                    prog.push_with_params(gpu, &spec, &params, &[Arg::Buf(weight), Arg::Buf(x), Arg::Buf(y)], grid)?;
                }
            }
            let read = WeightRead { label: w.label.clone(), bytes: part.bytes * grid[2] as u64, activation_bytes: row_bytes };
            prog.set_launch(Launch { invocations: launch.invocations, weight: Some(read) });
        }
    }
    Ok(())
}
