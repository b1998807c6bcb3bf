//! Element-wise ops: residual add, SiLU-gated product (of two buffers, or of the two halves of
//! a stacked [gate; up] product's rows), GELU; the GPU side in `backend::gpu::elementwise`
//! (`shaders/elementwise.wgsl`), the CPU side in `backend::cpu::elementwise`.

use crate::backend::gpu::{self, Result};
use crate::backend::{cpu, Buffer, Device, On, Program};

/// Records `residual[i] += a[i]` for the first `n` elements.
pub fn add_inplace(prog: &mut Program, dev: &Device, a: &Buffer, residual: &Buffer, n: u32) -> Result<()> {
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => gpu::elementwise::pair(prog, gpu, "add_inplace", a.gpu()?, residual.gpu()?, n),
        On::Cpu(prog, _) => cpu_pair(prog, "add_inplace", (a, n), (residual, n), cpu::elementwise::add_inplace),
    }
}

/// Records `gate[i] = silu(gate[i]) * up[i]` for the first `n` elements.
pub fn silu_mul_inplace(prog: &mut Program, dev: &Device, up: &Buffer, gate: &Buffer, n: u32) -> Result<()> {
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => gpu::elementwise::pair(prog, gpu, "silu_mul_inplace", up.gpu()?, gate.gpu()?, n),
        On::Cpu(prog, _) => cpu_pair(prog, "silu_mul_inplace", (up, n), (gate, n), cpu::elementwise::silu_mul_inplace),
    }
}

/// Records a CPU op reading the first `a.1` words of `a.0` and updating the first `b.1` of
/// `b.0` in place.
fn cpu_pair(
    prog: &mut cpu::Program,
    name: &'static str,
    (a, a_len): (&Buffer, u32),
    (b, b_len): (&Buffer, u32),
    op: impl Fn(&cpu::ThreadPool, &[f32], &mut [f32]) -> std::result::Result<(), cpu::ShapeError> + 'static,
) -> Result<()> {
    let (a, b, a_len, b_len) = (a.cpu()?.clone(), b.cpu()?.clone(), a_len as usize, b_len as usize);
    prog.push(name, move |pool| Ok(op(pool, &a.read_n(a_len)?, &mut b.write_n(b_len)?)?));
    Ok(())
}

/// Records `out[t][r] = silu(gate_up[t][r]) * gate_up[t][half + r]` for `rows` rows: `gate_up`
/// is `[rows][2 half]` (the product of a stacked [gate; up] weight), `out` `[rows][half]`.
pub fn silu_mul_halves(prog: &mut Program, dev: &Device, gate_up: &Buffer, out: &Buffer, rows: u32, half: u32) -> Result<()> {
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => {
            gpu::elementwise::halves(prog, gpu, "silu_mul_halves", gate_up.gpu()?, out.gpu()?, rows * half, half.max(1))
        }
        On::Cpu(prog, _) => {
            let h = half as usize;
            let op = move |pool: &cpu::ThreadPool, x: &[f32], y: &mut [f32]| cpu::elementwise::silu_mul_halves(pool, x, y, h);
            cpu_pair(prog, "silu_mul_halves", (gate_up, 2 * rows * half), (out, rows * half), op)
        }
    }
}

/// CPU reference of [`silu_mul_inplace`].
/// Records `out[t][r] = x[t][r]` for `rows` rows: `x` is `[rows][2 half]`, `out`
/// `[rows][half]` (the first half of each row: Qwen3.5's query out of each head's
/// `[q | gate]`).
pub fn copy_first_halves(prog: &mut Program, dev: &Device, x: &Buffer, out: &Buffer, rows: u32, half: u32) -> Result<()> {
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => {
            gpu::elementwise::halves(prog, gpu, "copy_first_halves", x.gpu()?, out.gpu()?, rows * half, half.max(1))
        }
        On::Cpu(prog, _) => {
            let h = half as usize;
            let op = move |pool: &cpu::ThreadPool, x: &[f32], y: &mut [f32]| cpu::elementwise::copy_first_halves(pool, x, y, h);
            cpu_pair(prog, "copy_first_halves", (x, 2 * rows * half), (out, rows * half), op)
        }
    }
}

/// Records `y[t][r] *= sigmoid(x[t][half + r])` for `rows` rows: `x` is `[rows][2 half]`, `y`
/// `[rows][half]` (Qwen3.5's attention output gated by each head's gate).
pub fn sigmoid_mul_second_halves(prog: &mut Program, dev: &Device, x: &Buffer, y: &Buffer, rows: u32, half: u32) -> Result<()> {
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => {
            gpu::elementwise::halves(prog, gpu, "sigmoid_mul_second_halves", x.gpu()?, y.gpu()?, rows * half, half.max(1))
        }
        On::Cpu(prog, _) => {
            let h = half as usize;
            let op = move |pool: &cpu::ThreadPool, x: &[f32], y: &mut [f32]| {
                cpu::elementwise::sigmoid_mul_second_halves(pool, x, y, h)
            };
            cpu_pair(prog, "sigmoid_mul_second_halves", (x, 2 * rows * half), (y, rows * half), op)
        }
    }
}

/// CPU reference of [`sigmoid_mul_second_halves`] (f64 math): `y * sigmoid(gate)` with `x`
/// `[rows][2 half]`.
pub fn sigmoid_mul_second_halves_ref(x: &[f32], y: &[f32], half: usize) -> Vec<f32> {
    (y.iter().enumerate())
        .map(|(i, &v)| {
            let g = x[(i / half) * 2 * half + half + i % half] as f64;
            (v as f64 / (1.0 + (-g).exp())) as f32
        })
        .collect()
}

pub fn silu_mul_ref(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter().zip(up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect()
}

/// Records `x[i] = gelu(x[i]) = 0.5 x (1 + erf(x / sqrt 2))` (erf form, the Pixtral projector's
/// activation) for the first `n` elements. WGSL has no `erf`: the shader uses Numerical
/// Recipes' `erfcc` (fractional error < 1.2e-7 on erfc); measured against f64 in
/// `tests/kernels_vision.rs`.
pub fn gelu_inplace(prog: &mut Program, dev: &Device, x: &Buffer, n: u32) -> Result<()> {
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => gpu::elementwise::gelu_inplace(prog, gpu, x.gpu()?, n),
        On::Cpu(prog, _) => {
            let [x] = Buffer::cpu_handles([x])?;
            prog.push("gelu_inplace", move |pool| {
                cpu::elementwise::gelu_inplace(pool, &mut x.write_n(n as usize)?);
                Ok(())
            });
            Ok(())
        }
    }
}

/// CPU reference of [`gelu_inplace`] in f64: `0.5 x (1 + erf(x / sqrt 2))`, with
/// `1 + erf(u)` taken as `erfc(-u)` for u < 0 so the negative tail keeps its relative precision.
pub fn gelu_ref(x: &[f32]) -> Vec<f64> {
    x.iter()
        .map(|&v| {
            let u = v as f64 / std::f64::consts::SQRT_2;
            let one_plus_erf = if u < 0.0 { erfc_f64(-u) } else { 1.0 + erf_f64(u) };
            0.5 * v as f64 * one_plus_erf
        })
        .collect()
}

/// erf in f64: Maclaurin series below 2.5, `1 - erfc` beyond (both ~1e-16 there).
pub fn erf_f64(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 2.5 {
        // erf(a) = 2/sqrt(pi) * sum_n (-1)^n a^(2n+1) / (n! (2n+1))
        let (mut term, mut sum, mut n) = (a, a, 0.0);
        while term.abs() > 1e-18 * sum.abs() {
            n += 1.0;
            term *= -a * a / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else {
        1.0 - erfc_f64(a)
    };
    r.copysign(x)
}

/// erfc in f64 for x >= 0: `1 - erf` below 2.5, else the continued fraction
/// `exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + ...))))` evaluated bottom-up.
pub fn erfc_f64(x: f64) -> f64 {
    if x < 2.5 {
        return 1.0 - erf_f64(x);
    }
    let mut f = x;
    for k in (1..400).rev() {
        f = x + (k as f64 / 2.0) / f;
    }
    (-x * x).exp() / std::f64::consts::PI.sqrt() / f
}
