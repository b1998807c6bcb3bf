//! Matrix-vector products for decode (`shaders/matvec.wgsl`): `y[t] = W · x[t]` for a few
//! tokens, W a [`Weight`] in any supported format. GEMV with coalesced weight reads,
//! several rows per thread, whole-block decoding from vec4 loads for the block formats and a
//! workgroup-memory reduction (details in the shader); reference: llama.cpp `mul_mat_vec`
//! (ggml-vulkan / ggml-webgpu). Epilogues fold the residual add and the SiLU-gated product
//! into the dispatch ([`Epilogue`]).
//!
//! Launch shapes ([`MatvecLaunch`], from the adapter's [`Geometry`]):
//! - GPU: 64-invocation workgroups of 4 output rows (one row group of up to 64 lanes, tree
//!   reduction): a 3072-row matrix launches 768 workgroups, enough for 128 compute units;
//!   4 rows per thread keep registers moderate; block-format matrices of fewer than 2048
//!   rows take 2 rows per workgroup (a 1024-row V projection: 512 workgroups).
//! - CPU adapters: 256-invocation workgroups of 64-512 rows, 16 rows per thread on the block
//!   path (every storage load costs a per-invocation loop there, so each x load serves 16
//!   rows: measured on lavapipe, in-cache Q4_K/Q4_0 up to 2x), one summing thread per row
//!   group after a single barrier.

pub use super::shapes::{Epilogue, Output};
use bytemuck::{Pod, Zeroable};

use super::quant::{CpuWeight, WLayout, Weight, WeightFormat};
use crate::backend::{cpu, Buffer, Device, On, Program};
use crate::gpu::{grid_1d, Access, Arg, Geometry, GpuError, KernelSpec, Launch, Result, WeightRead};

pub(super) const SHADER: &str = include_str!("../../shaders/matvec.wgsl");
/// Preludes: subgroup entry points and `lanes_sum` (native adapters with subgroups), or the
/// workgroup-memory-only stub (everywhere else).
pub(super) const SUBGROUPS: &str = include_str!("../../shaders/matvec_subgroups.wgsl");
pub(super) const NO_SUBGROUPS: &str = include_str!("../../shaders/matvec_nosubgroups.wgsl");
const BINDINGS: &[Access] = &[Access::Uniform, Access::Read, Access::Read, Access::ReadWrite];
/// `matvec_blk`: also vec4 views of x (binding 4) and of the weight (binding 5).
const BINDINGS_BLK: &[Access] = &[Access::Uniform, Access::Read, Access::Read, Access::ReadWrite, Access::Read, Access::Read];

impl Epilogue {
    fn code(self) -> i64 {
        match self {
            Epilogue::Store => 0,
            Epilogue::Add => 1,
            Epilogue::SiluMul => 2,
        }
    }
}

impl Output {
    /// `y` is `[n_tok][outputs]`: the weight's rows, or half of them for [`Epilogue::SiluMul`].
    pub fn dense(w: &Weight, epilogue: Epilogue) -> Output {
        let stride = if epilogue == Epilogue::SiluMul { w.rows / 2 } else { w.rows };
        Output { stride, offset: 0, epilogue }
    }
}

/// Which CPU kernel computes a product: the decode matvec or the prefill matmul.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Product {
    Matvec,
    Matmul,
}

/// Records a product of `w` on the CPU: token `t` reads row `x.1 + t` of `x.0` and writes row
/// `y.1 + t` of `y.0` as `out` says. The weight's bytes are borrowed when the op runs.
#[allow(clippy::too_many_arguments)]
pub(super) fn cpu_product(
    prog: &mut cpu::Program,
    dev: &cpu::Device,
    product: Product,
    w: &Weight,
    (x, x_row0): (&Buffer, u32),
    (y, y_row0): (&Buffer, u32),
    out: Output,
    n_tok: u32,
) -> Result<()> {
    let (weight, x, y) = (CpuWeight::of(w)?, x.cpu()?.clone(), y.cpu()?.clone());
    let (rows, cols) = (w.rows as usize, w.cols as usize);
    let (n, mode) = (n_tok as usize, dev.mode);
    let outputs = if out.epilogue == Epilogue::SiluMul { rows / 2 } else { rows };
    let x_range = x_row0 as usize * cols..(x_row0 as usize + n) * cols;
    let y_start = y_row0 as usize * out.stride as usize;
    let y_end = y_start + (n.max(1) - 1) * out.stride as usize + out.offset as usize + outputs;
    let name = match product {
        Product::Matvec => "matvec",
        Product::Matmul => "matmul",
    };
    if x_range.end as u64 * 4 > x.size() || y_end as u64 * 4 > y.size() {
        let (x, y) = (x.size(), y.size());
        return Err(GpuError::Shape(format!("{name} {}: {n} rows need x {x_range:?}, y ..{y_end} (x {x} B, y {y} B)", w.label)));
    }
    prog.push(name, move |pool| {
        let (x, mut y) = (x.read_n(x_range.end)?, y.write_n(y_end)?);
        let (x, y) = (&x[x_range.clone()], &mut y[y_start..]);
        weight.with(|w| {
            match product {
                Product::Matvec => cpu::matvec_into(pool, w, x, y, out, n, mode)?,
                Product::Matmul => cpu::matmul_into(pool, w, x, y, out, n, mode)?,
            }
            Ok(())
        })
    });
    Ok(())
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
            },
            // CPU: 16 lanes per row group (fewer idle iterations per thread on lavapipe);
            // matrices of fewer rows keep 32, so that there are still a few workgroups.
            Some(_) => MatvecLaunch {
                entry: "matvec_blk",
                invocations: 256,
                lanes: if w.rows >= 8192 { 16 } else { 32 },
                rows_per_thread: 16,
                tree: false,
                pair,
                subgroups: false,
            },
            // Generic path: one lane per unit of 8 columns up to the cap (rows shorter than
            // 256 weights, such as a 16-wide LM head of 131k rows, leave no lane idle; on a CPU
            // adapter this also means far fewer workgroups).
            None => {
                let lanes = w.cols.div_ceil(8).next_power_of_two();
                let (invocations, cap) = if gpu { (64, 64) } else { (256, 32) };
                let lanes = lanes.min(cap);
                MatvecLaunch { entry: "matvec", invocations, lanes, rows_per_thread: 4, tree: gpu, pair: false, subgroups: false }
            }
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

    fn spec(&self, w: &Weight, epilogue: Epilogue) -> KernelSpec {
        let blk = self.entry == "matvec_blk";
        let (entry, prelude) = match (self.subgroups, blk) {
            (true, true) => ("matvec_blk_sg", SUBGROUPS),
            (true, false) => ("matvec_sg", SUBGROUPS),
            (false, _) => (self.entry, NO_SUBGROUPS),
        };
        let spec = w
            .specialise(KernelSpec::new("matvec", SHADER, entry, if blk { BINDINGS_BLK } else { BINDINGS }))
            .with_prefix(prelude)
            .with_constant("WG", self.invocations as i64)
            .with_constant("TREE", self.tree as i64)
            .with_constant("EPI", epilogue.code());
        match blk {
            true => spec
                .with_constant("TPB", self.lanes as i64)
                .with_constant("NRB", self.rows_per_thread as i64)
                .with_constant("PAIR", self.pair as i64),
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

/// Records `y[t][r] = sum_k w[r][k] * x[t][k]` for `t < n_tok`: `x` is `[n_tok][w.cols]` f32,
/// `y` is `[n_tok][w.rows]` f32. Meant for small `n_tok` (decode); prefill uses
/// [`super::matmul::record`]. One dispatch per weight part.
pub fn record(prog: &mut Program, dev: &Device, w: &Weight, x: &Buffer, y: &Buffer, n_tok: u32) -> Result<()> {
    record_into(prog, dev, w, x, y, Output::dense(w, Epilogue::Store), n_tok)
}

/// [`record`] into the columns `out` names, with its epilogue.
pub fn record_into(prog: &mut Program, dev: &Device, w: &Weight, x: &Buffer, y: &Buffer, out: Output, n_tok: u32) -> Result<()> {
    let (prog, gpu) = match prog.on(dev)? {
        On::Gpu(prog, gpu) => (prog, gpu),
        On::Cpu(prog, cpu) => return cpu_product(prog, cpu, Product::Matvec, w, (x, 0), (y, 0), out, n_tok),
    };
    let (x, y) = (x.gpu()?, y.gpu()?);
    let glu = out.epilogue == Epilogue::SiluMul;
    if glu && (w.parts.len() != 1 || !w.rows.is_multiple_of(2)) {
        return Err(GpuError::Shape(format!("matvec {}: a SiLU-gated product needs one part of an even row count", w.label)));
    }
    let outputs = if glu { w.rows / 2 } else { w.rows };
    check_len("matvec x", x, n_tok as u64 * w.cols as u64)?;
    check_len("matvec y", y, (n_tok.max(1) - 1) as u64 * out.stride as u64 + out.offset as u64 + outputs as u64)?;
    let launch = MatvecLaunch::of(gpu.caps.geometry, w).with_subgroups(gpu.caps.subgroups);
    let spec = launch.spec(w, out.epilogue);
    for part in &w.parts {
        let params = Params {
            layout: w.layout(part),
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
        grid[2] = n_tok.max(1);
        if launch.entry == "matvec_blk" {
            let args = [Arg::Buf(part.buffer.gpu()?), Arg::Buf(x), Arg::Buf(y), Arg::Buf(x), Arg::Buf(part.buffer.gpu()?)];
            prog.push_with_params(gpu, &spec, &params, &args, grid)?;
        } else {
            let args = [Arg::Buf(part.buffer.gpu()?), Arg::Buf(x), Arg::Buf(y)];
            prog.push_with_params(gpu, &spec, &params, &args, grid)?;
        }
        let weight = WeightRead { label: w.label.clone(), bytes: part.bytes, activation_bytes: 4 * w.cols as u64 };
        prog.set_launch(Launch { invocations: launch.invocations, weight: Some(weight) });
    }
    Ok(())
}

/// Fails when `buf` holds fewer than `floats` f32 values.
pub(crate) fn check_len(what: &str, buf: &wgpu::Buffer, floats: u64) -> Result<()> {
    if buf.size() < floats * 4 {
        return Err(GpuError::Shape(format!("{what}: buffer of {} bytes, {} needed", buf.size(), floats * 4)));
    }
    Ok(())
}

/// CPU reference of [`record`] on dequantized `w` (`[rows][cols]` f32), f64 accumulation.
pub fn matvec_ref(w: &[f32], rows: usize, cols: usize, x: &[f32], n_tok: usize) -> Vec<f32> {
    let mut y = vec![0.0; n_tok * rows];
    for t in 0..n_tok {
        let xt = &x[t * cols..(t + 1) * cols];
        for r in 0..rows {
            let wr = &w[r * cols..(r + 1) * cols];
            y[t * rows + r] = wr.iter().zip(xt).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() as f32;
        }
    }
    y
}
