//! Causal grouped-query attention over the KV cache, prefill ([`attention_prefill`]) and
//! decode ([`attention_decode`]), both for the sequences of a batched step
//! ([`attention_batch`]), plus [`StepParams`], the per-step uniform that RoPE, the
//! KV-cache store and attention read. The GPU side in `backend::gpu::attention` (a tiled
//! FlashAttention-style prefill kernel and a split-K decode kernel with its combine pass, their
//! launch shapes and decode grid), the CPU side in `backend::cpu::attention` (one pass per
//! query row on both paths).
//!
//! Layouts (row-major): q `[n_tok][q_stride]` f32 with head h at `q_offset + h*head_dim`;
//! caches `[max_ctx][n_kv_head*head_dim]` of [`KvDtype`] (f32, or f16 packed two per word);
//! out `[n_tok][n_head*head_dim]` f32. Query head h uses KV head `h / (n_head / n_kv_head)`.
//! New token t sits at cache row `kv_start + t` and (causal) sees rows `0..=kv_start + t`; the
//! cache must already hold the new rows. The math is f32 whatever the cache type.

use std::cell::{Ref, RefMut};

pub use super::shapes::{AttnShape, KvDtype};
use bytemuck::{Pod, Zeroable};

pub use crate::backend::gpu::attention::default_splits;
use crate::backend::gpu::{self, GpuError, Result};
use crate::backend::{cpu, Buffer, Device, On, Program};

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
}

/// Largest supported head_dim (the GPU's widest row width; Qwen3.5's full-attention layers).
pub const MAX_HEAD_DIM: u32 = 256;

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
    /// The sequence's first row in the cache buffers: 0 for caches of its own, its range's
    /// first row in a KV arena shared by the slots of a batched run (`model::KvArena`).
    /// Cache row `kv_start + t` of the sequence is buffer row `kv_base + kv_start + t`.
    pub kv_base: u32,
}

impl StepParams {
    pub fn new(kv_start: u32, n_tok: u32, rope_pos0: u32) -> StepParams {
        StepParams { kv_start, n_tok, rope_pos0, kv_base: 0 }
    }

    /// The same step of a sequence whose cache rows start at buffer row `kv_base`.
    pub fn at_base(self, kv_base: u32) -> StepParams {
        StepParams { kv_base, ..self }
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
        Ok(StepParams { kv_start: w[0], n_tok: w[1], rope_pos0: w[2], kv_base: w[3] })
    }

    /// A storage buffer for the steps of up to `n` sequences, one per token row of a batched
    /// step ([`attention_decode_seqs`]; written with [`Device::write`] of the steps' bytes).
    pub fn create_rows_buffer(dev: &Device, n: u32) -> Result<Buffer> {
        dev.storage("steps", std::mem::size_of::<StepParams>() as u64 * n.max(1) as u64)
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
}

/// Records prefill attention: the step's `n_tok` new tokens (queries in `q`) against cache
/// rows `0..kv_start + n_tok` of `k_cache`/`v_cache`, into `out` `[n_tok][n_head*head_dim]`.
/// On the GPU, a grid of `ceil(max_tok * group / rows)` x `n_kv_head` workgroups of the launch
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
    let side = prog.on(dev)?;
    shape.check()?;
    match side {
        On::Gpu(prog, gpu) => {
            let (step, q, k_cache, v_cache, out) = (step.gpu()?, q.gpu()?, k_cache.gpu()?, v_cache.gpu()?, out.gpu()?);
            gpu::attention::attention_prefill(prog, gpu, shape, step, q, k_cache, v_cache, out)
        }
        On::Cpu(prog, _) => cpu_attention(prog, vec![CpuSeq::new(shape, step, q, (k_cache, v_cache), out)?]),
    }
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

    /// The buffers as the GPU kernels bind them.
    fn gpu(&self) -> Result<gpu::attention::Scratch<'_>> {
        let (ml, o) = (self.ml.gpu()?, self.o.gpu()?);
        Ok(gpu::attention::Scratch { ml, o, n_split: self.n_split, rows: self.rows, head_dim: self.head_dim })
    }
}

/// One sequence's side of a CPU attention op: its shape and buffers.
struct CpuSeq {
    shape: AttnShape,
    step: cpu::Buffer,
    q: cpu::Buffer,
    k: cpu::Buffer,
    v: cpu::Buffer,
    out: cpu::Buffer,
}

impl CpuSeq {
    fn new(shape: &AttnShape, step: &Buffer, q: &Buffer, (k, v): (&Buffer, &Buffer), out: &Buffer) -> Result<CpuSeq> {
        let (step, q, k, v, out) =
            (step.cpu()?.clone(), q.cpu()?.clone(), k.cpu()?.clone(), v.cpu()?.clone(), out.cpu()?.clone());
        Ok(CpuSeq { shape: *shape, step, q, k, v, out })
    }
}

/// Records attention on the CPU of each of `seqs` at its step's `kv_start` and `n_tok` (read
/// when it runs), in one op.
fn cpu_attention(prog: &mut cpu::Program, seqs: Vec<CpuSeq>) -> Result<()> {
    prog.push("attention", move |pool| {
        let mut borrowed = Vec::with_capacity(seqs.len());
        for s in &seqs {
            let step = StepParams::read_cpu(&s.step)?;
            let n = step.n_tok.min(s.shape.max_tok) as usize;
            let width = s.shape.n_head as usize * s.shape.head_dim as usize;
            let at = (step.kv_start as usize, step.kv_base as usize);
            borrowed.push((s.shape, n, at, s.q.read()?, s.k.read()?, s.v.read()?, s.out.write_n(n * width)?));
        }
        fn run<T: cpu::attention::KvElem + bytemuck::Pod>(
            pool: &cpu::ThreadPool,
            borrowed: &mut [Borrowed],
        ) -> std::result::Result<(), cpu::ShapeError> {
            let seqs = borrowed.iter_mut().map(|(shape, n_tok, (kv_start, kv_base), q, k, v, out)| {
                // The sequence's rows of the cache buffers (its range of a KV arena).
                let base = *kv_base * shape.n_kv_head as usize * shape.head_dim as usize;
                let (k, v) = (bytemuck::cast_slice::<f32, T>(k), bytemuck::cast_slice::<f32, T>(v));
                cpu::attention::SeqAttention {
                    shape: *shape,
                    q,
                    k_cache: &k[base.min(k.len())..],
                    v_cache: &v[base.min(v.len())..],
                    out,
                    n_tok: *n_tok,
                    kv_start: *kv_start,
                }
            });
            cpu::attention::attention_seqs(pool, seqs.collect())
        }
        Ok(match seqs.first().map(|s| s.shape.kv) {
            Some(KvDtype::F16) => run::<u16>(pool, &mut borrowed),
            _ => run::<f32>(pool, &mut borrowed),
        }?)
    });
    Ok(())
}

/// A sequence's shape, row count, `(kv_start, kv_base)`, and its buffers borrowed for one run.
type Borrowed<'a> = (AttnShape, usize, (usize, usize), Ref<'a, [f32]>, Ref<'a, [f32]>, Ref<'a, [f32]>, RefMut<'a, [f32]>);

/// Records split-K decode attention: like [`attention_prefill`], for any `kv_len` up to the
/// cache size. On the GPU, two dispatches with a grid that does not depend on `kv_len`
/// (`backend::gpu::attention::decode_grid`: `n_split` x `n_kv_head` x row chunks), then the
/// combine pass, the step's `kv_len` picking the splits that work; the CPU needs no split-K
/// partials (`scratch` unused): one pass per query row.
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
    let side = prog.on(dev)?;
    shape.check()?;
    match side {
        On::Gpu(prog, gpu) => {
            let (step, q, k_cache, v_cache, out) = (step.gpu()?, q.gpu()?, k_cache.gpu()?, v_cache.gpu()?, out.gpu()?);
            gpu::attention::attention_decode(prog, gpu, shape, step, q, k_cache, v_cache, &scratch.gpu()?, out)
        }
        On::Cpu(prog, _) => cpu_attention(prog, vec![CpuSeq::new(shape, step, q, (k_cache, v_cache), out)?]),
    }
}

/// One sequence of [`attention_batch`]: what [`attention_decode`] (a step recorded for one row)
/// or [`attention_prefill`] (for more) takes.
pub struct AttnSeq<'a> {
    pub shape: AttnShape,
    pub step: &'a Buffer,
    pub q: &'a Buffer,
    pub k_cache: &'a Buffer,
    pub v_cache: &'a Buffer,
    pub scratch: &'a DecodeScratch,
    pub out: &'a Buffer,
}

/// Records the attention of the sequences of a batched step, each against its own caches at
/// its own step: on the GPU each sequence's dispatches, on the CPU one op whose tasks (runs of
/// KV heads of each sequence's rows) share the pool.
pub fn attention_batch(prog: &mut Program, dev: &Device, seqs: &[AttnSeq]) -> Result<()> {
    if let On::Cpu(cpu_prog, _) = prog.on(dev)? {
        let cpu_seqs = seqs.iter().map(|s| {
            s.shape.check()?;
            CpuSeq::new(&s.shape, s.step, s.q, (s.k_cache, s.v_cache), s.out)
        });
        return cpu_attention(cpu_prog, cpu_seqs.collect::<Result<_>>()?);
    }
    for s in seqs {
        match s.shape.max_tok {
            1 => attention_decode(prog, dev, &s.shape, s.step, s.q, s.k_cache, s.v_cache, s.scratch, s.out)?,
            _ => attention_prefill(prog, dev, &s.shape, s.step, s.q, s.k_cache, s.v_cache, s.out)?,
        }
    }
    Ok(())
}

/// Records [`attention_decode`] of `shape.max_tok` sequences of one token each: q row and
/// out row `t` are sequence `t`'s, its cache rows a range of `k_cache` / `v_cache` (the
/// sequences' KV arena, `model::KvArena`) and its step `steps[t]` (a storage buffer of
/// [`StepParams`], one per sequence, each with its `kv_base`). On the GPU the same two
/// dispatches for all of them, each row computed as in the one-token decode of its sequence
/// alone (the same bits). GPU only: the CPU backend runs a batched step's attention in one
/// op already ([`attention_batch`]).
#[allow(clippy::too_many_arguments)]
pub fn attention_decode_seqs(
    prog: &mut Program,
    dev: &Device,
    shape: &AttnShape,
    steps: &Buffer,
    q: &Buffer,
    (k_cache, v_cache): (&Buffer, &Buffer),
    scratch: &DecodeScratch,
    out: &Buffer,
) -> Result<()> {
    let On::Gpu(prog, gpu) = prog.on(dev)? else {
        return Err(GpuError::WrongBackend("attention_decode_seqs runs on the GPU"));
    };
    shape.check()?;
    let (steps, q, k_cache, v_cache, out) = (steps.gpu()?, q.gpu()?, k_cache.gpu()?, v_cache.gpu()?, out.gpu()?);
    gpu::attention::attention_decode_seqs(prog, gpu, shape, steps, q, (k_cache, v_cache), &scratch.gpu()?, out)
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
