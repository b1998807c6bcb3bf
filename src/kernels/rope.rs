//! Rotary position embedding: RoPE (Su et al. 2021) with plain or YaRN (Peng et al. 2023)
//! inverse frequencies, the YaRN attention factor, and the Llama-4 / Ministral 3 query
//! scaling, plus the fused "rotate k and store k, v in the KV cache" op. The GPU side in
//! `backend::gpu::rope` (`shaders/rope.wgsl`), the CPU side in `backend::cpu::rope`.
//!
//! The frequency table is computed here on the host, mirroring transformers 5.x
//! `_compute_default_rope_parameters` / `_compute_yarn_parameters` step by step in f32 (the
//! only f64 step is `theta^(2i/d)`, rounded once to f32), and uploaded as a buffer: YaRN is
//! just a different table. Positions come from the per-step uniform
//! ([`StepParams`](super::attention::StepParams)): token `t` has position `rope_pos0 + t`.
//!
//! Interleaved multimodal RoPE ([`Mrope`], transformers' `apply_interleaved_mrope`, used by
//! Qwen3-VL and Qwen3.5): each token has (t, h, w) positions, read from a buffer, and rotated
//! pair i turns with the h position when `i % 3 == 1 && i < 3 * sections[1]`, with w when
//! `i % 3 == 2 && i < 3 * sections[2]`, with t otherwise ([`mrope_axis`]).

pub use super::shapes::{mrope_axis, QScale, QkvRope, RopeLayout, RopeMode, RopeTable};

use std::cell::RefMut;

use super::attention::{KvDtype, StepParams};
use super::quant::{Weight, WeightError};
use crate::backend::cpu::{self, rope::Positions};
use crate::backend::gpu::{self, GpuError, Result};
use crate::backend::{Buffer, Device, On, Program};
use crate::gguf::GgmlType;

/// YaRN parameters, named as in transformers' `rope_parameters`.
#[derive(Clone, Copy, Debug)]
pub struct Yarn {
    pub factor: f64,
    pub original_max_position_embeddings: f64,
    pub beta_fast: f64,
    pub beta_slow: f64,
    /// `mscale` / `mscale_all_dim` (None or 0 count as absent, as Python's truthiness does).
    pub mscale: Option<f64>,
    pub mscale_all_dim: Option<f64>,
    /// An explicit `attention_factor` overrides the one derived from `mscale`.
    pub attention_factor: Option<f64>,
    /// Truncate (floor/ceil) the correction range (transformers' default `truncate = true`).
    pub truncate: bool,
}

impl Yarn {
    /// Ministral 3: factor 16, original context 16384, beta 32/1, mscale = mscale_all_dim = 1.
    pub fn ministral3() -> Yarn {
        Yarn {
            factor: 16.0,
            original_max_position_embeddings: 16384.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: Some(1.0),
            mscale_all_dim: Some(1.0),
            attention_factor: None,
            truncate: true,
        }
    }

    /// The multiplier on cos/sin: `get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)`
    /// when both are given, else `get_mscale(factor)` (= 0.1 ln(factor) + 1).
    pub fn attention_factor(&self) -> f64 {
        fn get_mscale(scale: f64, mscale: f64) -> f64 {
            if scale <= 1.0 {
                1.0
            } else {
                0.1 * mscale * scale.ln() + 1.0
            }
        }
        if let Some(a) = self.attention_factor {
            return a;
        }
        match (self.mscale.filter(|m| *m != 0.0), self.mscale_all_dim.filter(|m| *m != 0.0)) {
            (Some(m), Some(a)) => get_mscale(self.factor, m) / get_mscale(self.factor, a),
            _ => get_mscale(self.factor, 1.0),
        }
    }

    /// transformers' `find_correction_range(beta_fast, beta_slow, dim, base, orig, truncate)`.
    pub fn correction_range(&self, dim: usize, theta: f64) -> (f64, f64) {
        let d = dim as f64;
        let corr =
            |rot: f64| d * (self.original_max_position_embeddings / (rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln());
        let (mut low, mut high) = (corr(self.beta_fast), corr(self.beta_slow));
        if self.truncate {
            low = low.floor();
            high = high.ceil();
        }
        (low.max(0.0), high.min(d - 1.0))
    }
}

impl RopeTable {
    /// The rotation angle of frequency `i` at `pos`, in f32 as the kernels compute it.
    pub fn angle(&self, pos: u32, i: usize) -> f32 {
        let angle = pos as f32 * self.inv_freq[i];
        match &self.freq_factors {
            Some(f) => angle / f[i],
            None => angle,
        }
    }
}

/// transformers' `pos_freqs = base ** (arange(0, dim, 2).float() / dim)` in f32.
fn pos_freqs(dim: usize, theta: f64) -> Vec<f32> {
    (0..dim / 2).map(|i| theta.powf(((2 * i) as f32 / dim as f32) as f64) as f32).collect()
}

/// Plain RoPE: `inv_freq[i] = 1 / theta^(2i/dim)` (f32 as in transformers).
pub fn rope_inv_freq(dim: usize, theta: f64) -> Vec<f32> {
    pos_freqs(dim, theta).into_iter().map(|f| 1.0 / f).collect()
}

/// YaRN inverse frequencies and attention factor, step by step as transformers 5.x
/// `_compute_yarn_parameters` (f32 tensors, f64 Python scalars).
pub fn yarn_inv_freq(dim: usize, theta: f64, yarn: &Yarn) -> RopeTable {
    let (low, high) = yarn.correction_range(dim, theta);
    let (low, mut high) = (low as f32, high as f32);
    if low == high {
        high += 0.001;
    }
    let factor = yarn.factor as f32;
    let inv_freq = pos_freqs(dim, theta)
        .into_iter()
        .enumerate()
        .map(|(i, pf)| {
            let extrapolation = 1.0 / pf;
            let interpolation = 1.0 / (factor * pf);
            let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
            let extra_factor = 1.0 - ramp;
            interpolation * (1.0 - extra_factor) + extrapolation * extra_factor
        })
        .collect();
    RopeTable { inv_freq, attn_factor: yarn.attention_factor() as f32, freq_factors: None }
}

/// The table for `dim` rotated dims: YaRN when given, plain RoPE otherwise.
pub fn rope_table(dim: usize, theta: f64, yarn: Option<&Yarn>) -> RopeTable {
    match yarn {
        Some(y) => yarn_inv_freq(dim, theta, y),
        None => RopeTable { inv_freq: rope_inv_freq(dim, theta), attn_factor: 1.0, freq_factors: None },
    }
}

/// A frequency table on the GPU (upload once per model): an F32 weight of two rows, the
/// inverse frequencies and the frequency divisors (ones without them). The divisors row is
/// a weight row so that a loader can fill it from a file's `rope_freqs` tensor as its bytes
/// arrive ([`RopeFreqs::FACTORS_ROW`]).
pub struct RopeFreqs {
    pub table: Weight,
    pub attn_factor: f32,
    /// Rotated dims (2 * table length).
    pub n_rot: u32,
}

impl RopeFreqs {
    /// The row of `table` that holds the frequency divisors.
    pub const FACTORS_ROW: u32 = 1;

    pub fn upload(dev: &Device, table: &RopeTable) -> std::result::Result<RopeFreqs, WeightError> {
        let half = table.inv_freq.len();
        let ones = vec![1.0f32; half];
        let factors = table.freq_factors.as_deref().unwrap_or(&ones);
        if factors.len() != half {
            return Err(GpuError::Shape(format!("rope: {} frequency divisors for {half} frequencies", factors.len())).into());
        }
        let rows = [table.inv_freq.as_slice(), factors].concat();
        let table_weight = Weight::upload(dev, "rope_freqs", GgmlType::F32, 2, half as u32, bytemuck::cast_slice(&rows))?;
        Ok(RopeFreqs { table: table_weight, attn_factor: table.attn_factor, n_rot: 2 * half as u32 })
    }

    /// The table as the CPU kernels take it, from the table weight's words (read when an op
    /// runs: a loader may fill the divisors row after the op was recorded).
    fn cpu_table(&self) -> Result<impl Fn() -> std::result::Result<RopeTable, cpu::ProgramError> + 'static> {
        let (words, half, attn_factor) = (self.buffer().cpu()?.clone(), self.n_rot as usize / 2, self.attn_factor);
        Ok(move || {
            let w = words.read_n(2 * half)?;
            Ok(RopeTable { inv_freq: w[..half].to_vec(), attn_factor, freq_factors: Some(w[half..].to_vec()) })
        })
    }

    /// The table as the GPU kernels bind it.
    fn gpu(&self) -> Result<gpu::rope::Freqs<'_>> {
        Ok(gpu::rope::Freqs { table: self.buffer().gpu()?, attn_factor: self.attn_factor, n_rot: self.n_rot })
    }

    /// The table's buffer, as the kernels bind it.
    fn buffer(&self) -> &Buffer {
        &self.table.parts[0].buffer
    }
}

impl QScale {
    pub const NONE: QScale = QScale { beta: 0.0, orig_ctx: 0 };

    /// The factor at position `pos` (f32, as transformers computes it).
    pub fn factor(&self, pos: u32) -> f32 {
        if self.beta == 0.0 || self.orig_ctx == 0 {
            return 1.0;
        }
        1.0 + self.beta * (1.0 + (pos / self.orig_ctx) as f32).ln()
    }
}

impl RopeLayout {
    pub fn dense(n_heads: u32, head_dim: u32, max_tok: u32, mode: RopeMode) -> RopeLayout {
        RopeLayout { n_heads, head_dim, mode, max_tok, stride: n_heads * head_dim, offset: 0 }
    }
}

/// Fails unless `freqs` rotates at most the heads of `l` (of an even width).
fn check_rot(l: &RopeLayout, freqs: &RopeFreqs) -> Result<()> {
    if freqs.n_rot > l.head_dim || !l.head_dim.is_multiple_of(2) {
        return Err(GpuError::Shape(format!("rope: {} rotated dims in heads of {}", freqs.n_rot, l.head_dim)));
    }
    Ok(())
}

/// Records RoPE in place on `x` (q or k) for the step's `n_tok` rows at positions
/// `rope_pos0 + t`, then multiplies by `q_scale` (pass [`QScale::NONE`] for k).
pub fn rope_inplace(
    prog: &mut Program,
    dev: &Device,
    step: &Buffer,
    freqs: &RopeFreqs,
    x: &Buffer,
    layout: &RopeLayout,
    q_scale: QScale,
) -> Result<()> {
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => {
            let (step, x) = (step.gpu()?, x.gpu()?);
            check_rot(layout, freqs)?;
            gpu::rope::rope_inplace(prog, gpu, step, &freqs.gpu()?, x, layout, q_scale)
        }
        On::Cpu(prog, _) => {
            let (step, x, table, layout) = (step.cpu()?.clone(), x.cpu()?.clone(), freqs.cpu_table()?, *layout);
            prog.push("rope_inplace", move |pool| {
                let s = StepParams::read_cpu(&step)?;
                let n = s.n_tok.min(layout.max_tok) as usize;
                Ok(cpu::rope::rope_inplace(pool, &mut x.write()?, &layout, n, &table()?, s.rope_pos0, q_scale)?)
            });
            Ok(())
        }
    }
}

/// Records RoPE of the new k rows (`k_layout`, n_kv_head heads) and their store, with the
/// v rows (`v_layout`: same heads, its own stride/offset), into the caches
/// `[max_ctx][n_kv_head * head_dim]` of `kv` at rows `kv_start + t`. `k` and `v` may be one
/// buffer. An f16 cache gets the f32 results rounded by `pack2x16float` (no `shader-f16`).
#[allow(clippy::too_many_arguments)]
pub fn rope_kv_store(
    prog: &mut Program,
    dev: &Device,
    step: &Buffer,
    freqs: &RopeFreqs,
    k: &Buffer,
    k_layout: &RopeLayout,
    v: &Buffer,
    v_layout: &RopeLayout,
    k_cache: &Buffer,
    v_cache: &Buffer,
    kv: KvDtype,
) -> Result<()> {
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => {
            let (step, k, v, k_cache, v_cache) = (step.gpu()?, k.gpu()?, v.gpu()?, k_cache.gpu()?, v_cache.gpu()?);
            check_rot(k_layout, freqs)?;
            let (k, v) = ((k, k_layout), (v, v_layout));
            gpu::rope::rope_kv_store(prog, gpu, step, &freqs.gpu()?, k, v, (k_cache, v_cache), kv)
        }
        On::Cpu(prog, _) => cpu_kv_store(prog, step, freqs, (k, k_layout), (v, v_layout), (k_cache, v_cache), kv, None),
    }
}

/// One sequence's part of [`rope_qkv_store`]: its step (positions), its fused q|k|v rows
/// (read and written) laid out as `layout` says, and its caches.
pub struct QkvSeq<'a> {
    pub step: &'a Buffer,
    pub qkv: &'a Buffer,
    pub layout: QkvRope,
    pub k_cache: &'a Buffer,
    pub v_cache: &'a Buffer,
}

/// [`rope_inplace`] of q and [`rope_kv_store`] of k and v over fused q|k|v rows, for each of
/// `seqs` (the sequences of a batched step): a dispatch per sequence on the GPU (one for all
/// of them when their caches share a KV arena: [`rope_qkv_store_seqs`]), one op for them all
/// on the CPU.
pub fn rope_qkv_store(prog: &mut Program, dev: &Device, freqs: &RopeFreqs, kv: KvDtype, seqs: &[QkvSeq]) -> Result<()> {
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => {
            for s in seqs {
                let (step, qkv) = (s.step.gpu()?, s.qkv.gpu()?);
                let (k_cache, v_cache) = (s.k_cache.gpu()?, s.v_cache.gpu()?);
                check_rot(&s.layout.k, freqs)?;
                let step = gpu::attention::Steps::One(step);
                gpu::rope::rope_qkv_store(prog, gpu, step, &freqs.gpu()?, qkv, &s.layout, (k_cache, v_cache), kv)?;
            }
            Ok(())
        }
        On::Cpu(prog, _) => {
            let table = freqs.cpu_table()?;
            let seqs = seqs
                .iter()
                .map(|s| {
                    Ok((
                        s.step.cpu()?.clone(),
                        s.qkv.cpu()?.clone(),
                        s.layout,
                        s.k_cache.cpu()?.clone(),
                        s.v_cache.cpu()?.clone(),
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            prog.push("rope_qkv_store", move |pool| {
                let table = table()?;
                let mut held = Vec::with_capacity(seqs.len());
                for (step, qkv, layout, k_cache, v_cache) in &seqs {
                    held.push((StepParams::read_cpu(step)?, *layout, qkv.write()?, k_cache.write()?, v_cache.write()?));
                }
                match kv {
                    KvDtype::F32 => cpu::rope::rope_qkv_store(pool, &table, qkv_rows(&mut held, |words| words))?,
                    KvDtype::F16 => {
                        cpu::rope::rope_qkv_store(pool, &table, qkv_rows(&mut held, bytemuck::cast_slice_mut::<f32, u16>))?
                    }
                }
                Ok(())
            });
            Ok(())
        }
    }
}

/// [`rope_qkv_store`] of `layout.k.max_tok` sequences of one token each: fused row `t` of
/// `qkv` is sequence `t`'s, its caches a range of `k_cache` / `v_cache` (the sequences' KV
/// arena) and its step `steps[t]` (see `attention::attention_decode_seqs`). On the GPU one
/// dispatch for them all, each row the bits of its sequence's own dispatch. GPU only (the
/// CPU backend's [`rope_qkv_store`] is one op for the sequences already).
#[allow(clippy::too_many_arguments)]
pub fn rope_qkv_store_seqs(
    prog: &mut Program,
    dev: &Device,
    freqs: &RopeFreqs,
    kv: KvDtype,
    steps: &Buffer,
    qkv: &Buffer,
    layout: &QkvRope,
    (k_cache, v_cache): (&Buffer, &Buffer),
) -> Result<()> {
    let On::Gpu(prog, gpu) = prog.on(dev)? else {
        return Err(GpuError::WrongBackend("rope_qkv_store_seqs runs on the GPU"));
    };
    check_rot(&layout.k, freqs)?;
    let (steps, qkv, k_cache, v_cache) = (steps.gpu()?, qkv.gpu()?, k_cache.gpu()?, v_cache.gpu()?);
    let steps = gpu::attention::Steps::PerRow(steps);
    gpu::rope::rope_qkv_store(prog, gpu, steps, &freqs.gpu()?, qkv, layout, (k_cache, v_cache), kv)
}

/// A sequence of the CPU op [`rope_qkv_store`] while it runs: its step, its layout, and its
/// rows and caches borrowed.
type HeldQkv<'b> = (StepParams, QkvRope, RefMut<'b, [f32]>, RefMut<'b, [f32]>, RefMut<'b, [f32]>);

/// The held sequences' rows for the CPU kernel, their caches' words seen as `T` (f32, or f16
/// bits two per word).
fn qkv_rows<'a, T>(held: &'a mut [HeldQkv<'_>], cache: fn(&mut [f32]) -> &mut [T]) -> Vec<cpu::rope::QkvRows<'a, T>> {
    let rows = held.iter_mut().map(|(s, layout, qkv, k_cache, v_cache)| cpu::rope::QkvRows {
        qkv: &mut qkv[..],
        layout: *layout,
        caches: (cache(k_cache), cache(v_cache)),
        n_tok: s.n_tok.min(layout.k.max_tok) as usize,
        kv_start: (s.kv_base + s.kv_start) as usize,
        pos0: s.rope_pos0,
    });
    rows.collect()
}

/// Records [`rope_kv_store`] (or, with `m`, [`rope_kv_store_mrope`]) on the CPU, into f32
/// caches or f16 ones (f16 bits two per word, as on the GPU).
#[allow(clippy::too_many_arguments)]
fn cpu_kv_store(
    prog: &mut cpu::Program,
    step: &Buffer,
    freqs: &RopeFreqs,
    (k, k_layout): (&Buffer, &RopeLayout),
    (v, v_layout): (&Buffer, &RopeLayout),
    (k_cache, v_cache): (&Buffer, &Buffer),
    kv: KvDtype,
    m: Option<&Mrope<'_>>,
) -> Result<()> {
    let (step, table) = (step.cpu()?.clone(), freqs.cpu_table()?);
    let (k, v, k_cache, v_cache) = (k.cpu()?.clone(), v.cpu()?.clone(), k_cache.cpu()?.clone(), v_cache.cpu()?.clone());
    let (k_layout, v_layout) = (*k_layout, *v_layout);
    let mrope = m.map(|m| Ok::<_, GpuError>((m.positions.cpu()?.clone(), m.sections))).transpose()?;
    prog.push("rope_kv_store", move |pool| {
        let s = StepParams::read_cpu(&step)?;
        let n = s.n_tok.min(k_layout.max_tok) as usize;
        let (k, v) = (k.read()?, v.read()?);
        let (mut kc, mut vc) = (k_cache.write()?, v_cache.write()?);
        let (table, axes) = (table()?, mrope.as_ref().map(|(p, _)| p.read_u32(3 * n)).transpose()?);
        let positions = match (&axes, &mrope) {
            (Some(p), Some((_, sections))) => Positions::Mrope { positions: mrope_axes(p, n), sections: *sections },
            _ => Positions::From(s.rope_pos0),
        };
        let (k, v, kv_start) = ((&k[..], &k_layout), (&v[..], &v_layout), (s.kv_base + s.kv_start) as usize);
        let (kc, vc) = (&mut kc[..], &mut vc[..]);
        Ok(match kv {
            KvDtype::F32 => cpu::rope::rope_kv_store(pool, k, v, (kc, vc), n, kv_start, &table, positions),
            KvDtype::F16 => {
                let caches = (bytemuck::cast_slice_mut::<f32, u16>(kc), bytemuck::cast_slice_mut::<f32, u16>(vc));
                cpu::rope::rope_kv_store(pool, k, v, caches, n, kv_start, &table, positions)
            }
        }?)
    });
    Ok(())
}

/// The three axes of a step's `[3][n_tok]` M-RoPE positions.
fn mrope_axes(p: &[u32], n_tok: usize) -> [&[u32]; 3] {
    [&p[..n_tok], &p[n_tok..2 * n_tok], &p[2 * n_tok..3 * n_tok]]
}

/// Interleaved multimodal RoPE positions of a step.
#[derive(Clone, Copy, Debug)]
pub struct Mrope<'a> {
    /// `[3][n_tok]` u32: the (t, h, w) positions of the step's `n_tok` tokens, axis by axis.
    pub positions: &'a Buffer,
    /// `mrope_section`: rotated pairs per axis (t, h, w); only h and w are read, pairs outside
    /// their interleaved slots turn with t.
    pub sections: [u32; 3],
}

impl Mrope<'_> {
    /// Fails unless `freqs` rotates at most the heads of `layout` and the sections fit its
    /// rotated pairs (both sides check at recording).
    fn check(&self, layout: &RopeLayout, freqs: &RopeFreqs) -> Result<()> {
        check_rot(layout, freqs)?;
        if self.sections.iter().sum::<u32>() > freqs.n_rot / 2 {
            return Err(GpuError::Shape(format!("mrope sections {:?} for {} rotated dims", self.sections, freqs.n_rot)));
        }
        Ok(())
    }

    /// The positions as the GPU kernels bind them.
    fn gpu(&self) -> Result<gpu::rope::MropePositions<'_>> {
        Ok(gpu::rope::MropePositions { positions: self.positions.gpu()?, sections: self.sections })
    }
}

/// [`rope_inplace`] at the positions of `m` (no query scaling).
pub fn rope_inplace_mrope(
    prog: &mut Program,
    dev: &Device,
    step: &Buffer,
    freqs: &RopeFreqs,
    x: &Buffer,
    layout: &RopeLayout,
    m: &Mrope<'_>,
) -> Result<()> {
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => {
            let (step, x) = (step.gpu()?, x.gpu()?);
            m.check(layout, freqs)?;
            gpu::rope::rope_inplace_mrope(prog, gpu, step, &freqs.gpu()?, x, layout, &m.gpu()?)
        }
        On::Cpu(prog, _) => {
            m.check(layout, freqs)?;
            let (step, x, table, layout) = (step.cpu()?.clone(), x.cpu()?.clone(), freqs.cpu_table()?, *layout);
            let (positions, sections) = (m.positions.cpu()?.clone(), m.sections);
            prog.push("rope_inplace_mrope", move |pool| {
                let n = StepParams::read_cpu(&step)?.n_tok.min(layout.max_tok) as usize;
                let p = positions.read_u32(3 * n)?;
                Ok(cpu::rope::rope_inplace_mrope(pool, &mut x.write()?, &layout, &table()?, mrope_axes(&p, n), sections)?)
            });
            Ok(())
        }
    }
}

/// [`rope_kv_store`] at the positions of `m`.
#[allow(clippy::too_many_arguments)]
pub fn rope_kv_store_mrope(
    prog: &mut Program,
    dev: &Device,
    step: &Buffer,
    freqs: &RopeFreqs,
    (k, k_layout): (&Buffer, &RopeLayout),
    (v, v_layout): (&Buffer, &RopeLayout),
    (k_cache, v_cache): (&Buffer, &Buffer),
    kv: KvDtype,
    m: &Mrope<'_>,
) -> Result<()> {
    match prog.on(dev)? {
        On::Gpu(prog, gpu) => {
            let step = step.gpu()?;
            let (k, v, k_cache, v_cache) = (k.gpu()?, v.gpu()?, k_cache.gpu()?, v_cache.gpu()?);
            m.check(k_layout, freqs)?;
            let (k, v) = ((k, k_layout), (v, v_layout));
            gpu::rope::rope_kv_store_mrope(prog, gpu, step, &freqs.gpu()?, k, v, (k_cache, v_cache), kv, &m.gpu()?)
        }
        On::Cpu(prog, _) => {
            m.check(k_layout, freqs)?;
            cpu_kv_store(prog, step, freqs, (k, k_layout), (v, v_layout), (k_cache, v_cache), kv, Some(m))
        }
    }
}

/// CPU reference of [`rope_inplace_mrope`]: [`rope_ref`] with pair i of token t turned by
/// `positions[mrope_axis(i)][t]`.
pub fn mrope_ref(x: &[f32], layout: &RopeLayout, table: &RopeTable, positions: &[Vec<u32>; 3], sections: [u32; 3]) -> Vec<f32> {
    let mut y = x.to_vec();
    let (hd, half_rot) = (layout.head_dim as usize, table.inv_freq.len());
    let n_tok = positions[0].len();
    for (t, h) in (0..n_tok).flat_map(|t| (0..layout.n_heads as usize).map(move |h| (t, h))) {
        let base = t * layout.stride as usize + layout.offset as usize + h * hd;
        for i in 0..table.inv_freq.len() {
            let (d0, d1) = match layout.mode {
                RopeMode::RotateHalf => (i, i + half_rot),
                RopeMode::Adjacent => (2 * i, 2 * i + 1),
            };
            let angle = table.angle(positions[mrope_axis(i, sections)][t], i);
            let (c, s) = (angle.cos() * table.attn_factor, angle.sin() * table.attn_factor);
            let (x0, x1) = (x[base + d0], x[base + d1]);
            y[base + d0] = x0 * c - x1 * s;
            y[base + d1] = x1 * c + x0 * s;
        }
    }
    y
}

/// CPU reference of [`rope_inplace`] (f32 math as transformers: `angle = f32(pos) * inv_freq`,
/// `cos(angle) * attn_factor`, `x*cos + rotate(x)*sin`, then the query scale), on `n_tok` rows.
pub fn rope_ref(x: &[f32], layout: &RopeLayout, n_tok: usize, table: &RopeTable, pos0: u32, q_scale: QScale) -> Vec<f32> {
    let mut y = x.to_vec();
    let (hd, half_rot) = (layout.head_dim as usize, table.inv_freq.len());
    for t in 0..n_tok {
        let pos = pos0 + t as u32;
        let scale = q_scale.factor(pos);
        for h in 0..layout.n_heads as usize {
            let base = t * layout.stride as usize + layout.offset as usize + h * hd;
            for i in 0..hd / 2 {
                let (d0, d1) = match layout.mode {
                    RopeMode::RotateHalf if i < half_rot => (i, i + half_rot),
                    _ => (2 * i, 2 * i + 1),
                };
                let (x0, x1) = (x[base + d0], x[base + d1]);
                let (y0, y1) = if i < half_rot {
                    let angle = table.angle(pos, i);
                    let (c, s) = (angle.cos() * table.attn_factor, angle.sin() * table.attn_factor);
                    (x0 * c - x1 * s, x1 * c + x0 * s)
                } else {
                    (x0, x1)
                };
                y[base + d0] = y0 * scale;
                y[base + d1] = y1 * scale;
            }
        }
    }
    y
}
