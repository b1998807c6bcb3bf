//! The GPU sampler's dispatches (`shaders/sample.wgsl`): argmax, or temperature / top-k /
//! top-p sampling with a seed, entirely on the GPU and spread over one workgroup per
//! [`CHUNK`] logits ([`CHUNK_CPU`] on CPU adapters), and the buffers they use
//! ([`SampleBuffers`], one set per context). GPU-only: the CPU backend samples on the host.
//!
//! Top-k and top-p cuts come from a radix select (8-bit digits, most significant first) on
//! the order-preserving u32 key of each logit: per digit, every workgroup histograms its
//! chunk (by count for top-k, by 24.40 fixed-point mass for top-p) into a global histogram,
//! and the next dispatch's workgroups read it to fix that digit. The draw is an inverse CDF
//! in token-id order: per-chunk kept mass, then one workgroup picks the chunk and the id.
//!
//! Structure of one sampling step (fixed, whatever the settings; disabled stages exit at
//! once, as the settings come from the [`SamplerState`] uniform the host rewrites each step):
//!
//! | | dispatches | workgroups at vocab 131072 | passes over the logits |
//! |---|---|---|---|
//! | before: argmax + one-workgroup bisection | 2 | 32, then 1 | greedy 1; sampling up to 1 + 32 + 1 + 32 + 1, all but the first in one workgroup |
//! | now: radix select | [`DISPATCHES`] = 10 | 128 × 9, then 1 | greedy 1, temperature only 2, top-k 5, top-p 6, both 9, each over 128 workgroups |
//!
//! Pass 0 always reads the row (argmax, first top-k digit); `draw` reads two chunks.

use bytemuck::{Pod, Zeroable};

use super::{Access, Arg, Geometry, Gpu, GpuError, KernelSpec, Launch, Program, Result, MAX_GRID_DIM};

pub(super) const SHADER: &str = include_str!("../../../shaders/sample.wgsl");
const BINDINGS: &[Access] = &[
    Access::Uniform,
    Access::Uniform,
    Access::Read,
    Access::ReadWrite,
    Access::ReadWrite,
    Access::ReadWrite,
    Access::ReadWrite,
    Access::ReadWrite,
];
/// Logits per workgroup (`CHUNK` in the shader) in the GPU geometry: 128 workgroups at a
/// 131k vocabulary, enough for 128 compute units.
pub const CHUNK: u32 = 1024;
/// Logits per workgroup on CPU adapters, where every workgroup and barrier costs: 16
/// workgroups at 131k (lavapipe: 4096 per workgroup was already 2-3x cheaper than 1024).
pub const CHUNK_CPU: u32 = 8192;
/// Invocations per workgroup (`WG` in the shader).
const WG: u32 = 256;
/// Radix-select digit passes: 4 for the top-k key, 4 for the top-p key (`PASSES`).
const PASSES: u32 = 8;
/// Global histogram: PASSES x 256 bins x u64.
const HIST_BYTES: u64 = PASSES as u64 * 256 * 8;
/// Number of dispatches of one sampling step.
pub const DISPATCHES: usize = PASSES as usize + 2;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    vocab: u32,
    logits_offset: u32,
    out_index: u32,
    n_chunks: u32,
    pass_index: u32,
    _pad: [u32; 3],
}

/// Sampling settings as the shader reads them (mirrors `Sampler` in `sample.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct SamplerState {
    /// `<= 0` selects the argmax.
    pub temperature: f32,
    /// `0` disables top-k.
    pub top_k: u32,
    /// `>= 1` disables top-p.
    pub top_p: f32,
    pub seed: u32,
    /// Index of this draw in the request's stream of random numbers.
    pub draw: u32,
    pub _pad: [u32; 3],
}

impl SamplerState {
    pub fn greedy() -> Self {
        SamplerState { temperature: 0.0, top_p: 1.0, ..Default::default() }
    }
}

/// GPU buffers the sampler needs, allocated once per context.
pub struct SampleBuffers {
    /// The [`SamplerState`] uniform (host-written each step).
    pub state: wgpu::Buffer,
    partials: wgpu::Buffer,
    hist: wgpu::Buffer,
    sel: wgpu::Buffer,
    chunks: wgpu::Buffer,
    vocab: u32,
    /// Logits per workgroup, from the kernel geometry.
    chunk: u32,
}

impl SampleBuffers {
    /// Buffers for rows of `vocab` logits (1 to 65535 x [`CHUNK`]).
    pub fn new(gpu: &Gpu, vocab: u32) -> Result<SampleBuffers> {
        let chunk = if gpu.caps.geometry == Geometry::Gpu { CHUNK } else { CHUNK_CPU };
        let n_chunks = vocab.div_ceil(chunk);
        if n_chunks == 0 || vocab.div_ceil(CHUNK) > MAX_GRID_DIM {
            return Err(GpuError::Shape(format!("sampler vocabulary {vocab} outside 1..={}", MAX_GRID_DIM * CHUNK)));
        }
        let state = gpu.buffer(&wgpu::BufferDescriptor {
            label: Some("sampler state"),
            size: std::mem::size_of::<SamplerState>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(SampleBuffers {
            state,
            partials: gpu.storage("sampler partials", n_chunks as u64 * 8)?,
            // Zeroed at creation; the draw dispatch clears it again after each use.
            hist: gpu.storage("sampler histograms", HIST_BYTES)?,
            sel: gpu.storage("sampler selection state", (PASSES as u64 + 1) * 32)?,
            chunks: gpu.storage("sampler chunk masses", n_chunks as u64 * 4)?,
            vocab,
            chunk,
        })
    }

    /// Writes the settings for the next draw (call before submitting the step).
    pub fn set(&self, gpu: &Gpu, state: &SamplerState) {
        gpu.queue.write_buffer(&self.state, 0, bytemuck::bytes_of(state));
    }

    /// The smallest logit the last draw kept after top-k and top-p (`None`: every token),
    /// read back after the program ran.
    pub async fn read_cut(&self, gpu: &Gpu) -> Result<Option<f32>> {
        // `Sel::cut` of the last slot (8 u32 per slot, cut at word 3).
        let bytes = gpu.read(&self.sel, PASSES as u64 * 32 + 12, 4).await?;
        let key = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let bits = if key & 0x8000_0000 != 0 { key & 0x7fff_ffff } else { !key };
        Ok((key != 0).then(|| f32::from_bits(bits)))
    }

    /// Records the selection of a token from the logits row at element `logits_offset`,
    /// writing its id to `out[out_index]` (a u32 buffer): [`DISPATCHES`] dispatches.
    pub fn record(
        &self,
        prog: &mut Program,
        gpu: &Gpu,
        logits: &wgpu::Buffer,
        logits_offset: u32,
        out: &wgpu::Buffer,
        out_index: u32,
    ) -> Result<()> {
        let n_chunks = self.vocab.div_ceil(self.chunk);
        let args = [
            Arg::Buf(&self.state),
            Arg::Buf(logits),
            Arg::Buf(&self.partials),
            Arg::Buf(&self.hist),
            Arg::Buf(&self.sel),
            Arg::Buf(&self.chunks),
            Arg::Buf(out),
        ];
        let params = |pass_index| Params { vocab: self.vocab, logits_offset, out_index, n_chunks, pass_index, _pad: [0; 3] };
        let spec = |entry| KernelSpec::new("sample", SHADER, entry, BINDINGS).with_constant("CHUNK", self.chunk as i64);
        for d in 0..PASSES {
            prog.push_with_params(gpu, &spec("select_pass"), &params(d), &args, [n_chunks, 1, 1])?;
            prog.set_launch(Launch::threads(WG));
        }
        prog.push_with_params(gpu, &spec("chunk_mass"), &params(PASSES), &args, [n_chunks, 1, 1])?;
        prog.set_launch(Launch::threads(WG));
        prog.push_with_params(gpu, &spec("draw"), &params(PASSES + 1), &args, [1, 1, 1])?;
        prog.set_launch(Launch::threads(WG));
        Ok(())
    }
}
