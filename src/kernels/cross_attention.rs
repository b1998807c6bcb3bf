//! Cross-attention of text tokens over a fixed key set with a per-token tile mask: Mllama's
//! text-to-image attention, no RoPE, no causality. Keys are `n_tiles` tiles of `tile_keys`
//! rows each (one image's 4 tiles of 1601 vision tokens, images one after another); token t
//! sees the tiles its mask row marks.
//! Also the gated residual add of Mllama's cross layers ([`gated_add`]). The GPU side in
//! `backend::gpu::cross_attention` (`shaders/cross_attention.wgsl`, `shaders/gated_add.wgsl`),
//! the CPU side in `backend::cpu::cross_attention`.
//!
//! Layouts (row-major f32): q `[n_tok][q_stride]` with head h at `h * head_dim`; k and v
//! `[n_tiles * tile_keys][n_kv_head * head_dim]`; mask `[n_tok][n_tiles]` u32 (0 = hidden);
//! out `[n_tok][n_head * head_dim]`. Query head h uses KV head `h / (n_head / n_kv_head)`.
//! Reference: transformers' `MllamaTextCrossAttention`.

pub use super::shapes::CrossAttnShape;

use crate::backend::gpu::{self, GpuError, Result};
use crate::backend::{cpu, Buffer, Device, On, Program};

/// Widest head the kernel takes (4 output dims per invocation, 64 invocations).
pub const MAX_HEAD_DIM: u32 = 256;

impl CrossAttnShape {
    fn check(&self) -> Result<u32> {
        let fail = |m: String| Err(GpuError::Shape(format!("cross attention: {m}")));
        if self.head_dim == 0 || self.head_dim > MAX_HEAD_DIM || self.q_stride < self.n_head * self.head_dim {
            return fail(format!("head_dim {} (at most {MAX_HEAD_DIM}), q stride {}", self.head_dim, self.q_stride));
        }
        if self.n_kv_head == 0 || !self.n_head.is_multiple_of(self.n_kv_head) {
            return fail(format!("{} heads are not a multiple of {} KV heads", self.n_head, self.n_kv_head));
        }
        match self.n_tiles.checked_mul(self.tile_keys) {
            Some(n) if n > 0 => Ok(n),
            _ => fail(format!("{} tiles of {} keys", self.n_tiles, self.tile_keys)),
        }
    }
}

/// Records `out = softmax_masked(q k^T * scale) v` per token and head.
#[allow(clippy::too_many_arguments)]
pub fn cross_attention(
    prog: &mut Program,
    dev: &Device,
    s: &CrossAttnShape,
    q: &Buffer,
    k: &Buffer,
    v: &Buffer,
    mask: &Buffer,
    out: &Buffer,
) -> Result<()> {
    let side = prog.on(dev)?;
    let n_keys = s.check()?;
    match side {
        On::Gpu(prog, gpu) => {
            let (q, k, v, mask, out) = (q.gpu()?, k.gpu()?, v.gpu()?, mask.gpu()?, out.gpu()?);
            gpu::cross_attention::cross_attention(prog, gpu, s, n_keys, q, k, v, mask, out)
        }
        On::Cpu(prog, _) => {
            let [q, k, v, mask, out] = Buffer::cpu_handles([q, k, v, mask, out])?;
            let s = *s;
            let (mask_len, out_len) = (s.n_tok as usize * s.n_tiles as usize, (s.n_tok * s.n_head * s.head_dim) as usize);
            prog.push("cross_attention", move |pool| {
                let (q, k, v, mask, mut out) = (q.read()?, k.read()?, v.read()?, mask.read_u32(mask_len)?, out.write_n(out_len)?);
                Ok(cpu::cross_attention::cross_attention(pool, &s, &q, &k, &v, &mask, &mut out)?)
            });
            Ok(())
        }
    }
}

/// CPU reference of [`cross_attention`] in f64.
pub fn cross_attention_ref(s: &CrossAttnShape, q: &[f32], k: &[f32], v: &[f32], mask: &[u32]) -> Vec<f32> {
    let (hd, kv_stride) = (s.head_dim as usize, (s.n_kv_head * s.head_dim) as usize);
    let n_keys = (s.n_tiles * s.tile_keys) as usize;
    let group = (s.n_head / s.n_kv_head) as usize;
    let mut out = vec![0f32; (s.n_tok * s.n_head) as usize * hd];
    for t in 0..s.n_tok as usize {
        for h in 0..s.n_head as usize {
            let qr = &q[t * s.q_stride as usize + h * hd..][..hd];
            let kb = (h / group) * hd;
            let visible = |j: usize| mask[t * s.n_tiles as usize + j / s.tile_keys as usize] != 0;
            let scores: Vec<Option<f64>> = (0..n_keys)
                .map(|j| {
                    visible(j).then(|| {
                        let kr = &k[j * kv_stride + kb..][..hd];
                        qr.iter().zip(kr).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * s.scale as f64
                    })
                })
                .collect();
            let m = scores.iter().flatten().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            let w: Vec<f64> = scores.iter().map(|sc| sc.map_or(0.0, |sc| (sc - m).exp())).collect();
            let l: f64 = w.iter().sum();
            let mut o = vec![0f64; hd];
            for (j, wj) in w.iter().enumerate().filter(|(_, w)| **w > 0.0) {
                for (d, od) in o.iter_mut().enumerate() {
                    *od += wj / l * v[j * kv_stride + kb + d] as f64;
                }
            }
            let dst = &mut out[(t * s.n_head as usize + h) * hd..][..hd];
            dst.iter_mut().zip(o).for_each(|(d, o)| *d = o as f32);
        }
    }
    out
}

/// Records `x[t][i] += tanh(gate[0]) * row_mask[t] * y[t][i]` over `n_tok` rows of `dim`
/// (Mllama's gated residual; `row_mask` `[n_tok]` f32, or `None` for a factor of 1).
#[allow(clippy::too_many_arguments)]
pub fn gated_add(
    prog: &mut Program,
    dev: &Device,
    gate: &Buffer,
    row_mask: Option<&Buffer>,
    y: &Buffer,
    x: &Buffer,
    n_tok: u32,
    dim: u32,
) -> Result<()> {
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => {
            let gate = gate.gpu()?;
            let row_mask = row_mask.map(Buffer::gpu).transpose()?;
            gpu::cross_attention::gated_add(prog, gpu, gate, row_mask, y.gpu()?, x.gpu()?, n_tok, dim)
        }
        On::Cpu(prog, _) => {
            let [gate, y, x] = Buffer::cpu_handles([gate, y, x])?;
            let row_mask = row_mask.map(|m| m.cpu().cloned()).transpose()?;
            let (rows, dim) = (n_tok as usize, dim as usize);
            prog.push("gated_add", move |pool| {
                let mask = row_mask.as_ref().map(|m| m.read_n(rows)).transpose()?;
                let (gate, y, mut x) = (gate.read_n(1)?[0], y.read_n(rows * dim)?, x.write_n(rows * dim)?);
                Ok(cpu::cross_attention::gated_add(pool, gate, mask.as_deref(), &y, &mut x, dim)?)
            });
            Ok(())
        }
    }
}

/// CPU reference of [`gated_add`] (f64 math).
pub fn gated_add_ref(gate: f32, row_mask: Option<&[f32]>, y: &[f32], x: &[f32], dim: usize) -> Vec<f32> {
    let g = (gate as f64).tanh();
    (x.iter().zip(y).enumerate())
        .map(|(i, (&x, &y))| (x as f64 + g * row_mask.map_or(1.0, |m| m[i / dim] as f64) * y as f64) as f32)
        .collect()
}
