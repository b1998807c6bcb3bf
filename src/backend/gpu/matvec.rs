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
//!   whole rows (no reduction). A CPU adapter runs a workgroup's invocations as SIMD lanes,
//!   where a storage load at an address that differs per lane costs a loop over the lanes
//!   and one the same in every lane a single load: with whole rows per thread, every x load
//!   is the same for all lanes and only the weight loads differ (measured on lavapipe,
//!   SmolLM2: a decode step 55-76 against 90-95 ms with 16 rows per thread and 32 lanes per
//!   row). Several tokens (a batched decode step): up to 8 tokens per thread
//!   ([`MatvecLaunch::for_tokens`]). Generic path: 256-invocation workgroups, one summing
//!   thread per row group after a single barrier.

use bytemuck::{Pod, Zeroable};

use super::quant::{layout, specialise, WLayout};
use super::{check_len, grid_1d, Access, Arg, Geometry, Gpu, GpuError, KernelSpec, Launch, Program, Result, WeightRead};
use crate::kernels::quant::{Weight, WeightFormat};
use crate::kernels::shapes::{Epilogue, Output};

pub(super) const SHADER: &str = include_str!("../../../shaders/matvec.wgsl");
/// Preludes: subgroup entry points and `lanes_sum` (native adapters with subgroups), or the
/// workgroup-memory-only stub (everywhere else).
pub(super) const SUBGROUPS: &str = include_str!("../../../shaders/matvec_subgroups.wgsl");
pub(super) const NO_SUBGROUPS: &str = include_str!("../../../shaders/matvec_nosubgroups.wgsl");
const BINDINGS: &[Access] = &[Access::Uniform, Access::Read, Access::Read, Access::ReadWrite];
/// `matvec_blk`: also vec4 views of x (binding 4) and of the weight (binding 5).
const BINDINGS_BLK: &[Access] = &[Access::Uniform, Access::Read, Access::Read, Access::ReadWrite, Access::Read, Access::Read];

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
            W::Q4_K | W::Q6_K => Some(4 * blocks),
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
    /// for all of them. Each token's sums stay those of one token per thread (whole rows in
    /// unit order on CPU adapters, the same lanes per row elsewhere). GPUs keep
    /// one token per thread, not yet measured otherwise (a thread would hold its rows'
    /// decoded units for all tokens).
    pub fn for_tokens(self, n_tok: u32) -> MatvecLaunch {
        if self.entry != "matvec_blk" || self.tree || n_tok < 2 {
            return self;
        }
        MatvecLaunch { tokens_per_thread: 1 << n_tok.min(8).ilog2(), ..self }
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

    fn spec(&self, w: &Weight, epilogue: Epilogue) -> KernelSpec {
        let blk = self.entry == "matvec_blk";
        let (entry, prelude) = match (self.subgroups, blk) {
            (true, true) => ("matvec_blk_sg", SUBGROUPS),
            (true, false) => ("matvec_sg", SUBGROUPS),
            (false, _) => (self.entry, NO_SUBGROUPS),
        };
        let spec = specialise(w, KernelSpec::new("matvec", SHADER, entry, if blk { BINDINGS_BLK } else { BINDINGS }))
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
    _pad: [u32; 2],
}

/// Records `y[t][r] = sum_k w[r][k] * x[t][k]` for `t < n_tok` into the columns `out` names,
/// with its epilogue: `x` is `[n_tok][w.cols]` f32. One dispatch per weight part.
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
    let spec = launch.spec(w, out.epilogue);
    for part in &w.parts {
        let params = Params {
            layout: layout(w, part),
            rows: part.rows,
            cols: w.cols,
            n_tok,
            row_offset: out.offset + part.row_offset,
            y_stride: out.stride,
            x_stride: w.cols,
            _pad: [0; 2],
        };
        let part_outputs = if glu { part.rows / 2 } else { part.rows };
        let mut grid = grid_1d(part_outputs.div_ceil(launch.outputs_per_workgroup(out.epilogue)));
        grid[2] = n_tok.div_ceil(launch.tokens_per_thread).max(1);
        if launch.entry == "matvec_blk" {
            let args = [Arg::Buf(part.buffer.gpu()?), Arg::Buf(x), Arg::Buf(y), Arg::Buf(x), Arg::Buf(part.buffer.gpu()?)];
            prog.push_with_params(gpu, &spec, &params, &args, grid)?;
        } else {
            let args = [Arg::Buf(part.buffer.gpu()?), Arg::Buf(x), Arg::Buf(y)];
            prog.push_with_params(gpu, &spec, &params, &args, grid)?;
        }
        let weight =
            WeightRead { label: w.label.clone(), bytes: part.bytes * grid[2] as u64, activation_bytes: 4 * w.cols as u64 };
        prog.set_launch(Launch { invocations: launch.invocations, weight: Some(weight) });
    }
    Ok(())
}
