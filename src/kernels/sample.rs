//! Next-token selection (`shaders/sample.wgsl`): argmax, or temperature / top-k / top-p
//! sampling with a seed, entirely on the GPU.
//!
//! The recorded dispatches read a [`SamplerState`] uniform that the host rewrites before
//! each step (16 bytes of settings plus the draw counter), so one program serves every
//! request. Two dispatches: per-chunk maxima, then selection by a single workgroup.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{Access, Arg, Gpu, KernelSpec, Program, Result};

pub(super) const SHADER: &str = include_str!("../../shaders/sample.wgsl");
const BINDINGS: &[Access] = &[Access::Uniform, Access::Uniform, Access::Read, Access::ReadWrite, Access::ReadWrite];
const PER_WG: u32 = 4096;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    vocab: u32,
    logits_offset: u32,
    out_index: u32,
    n_partials: u32,
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
pub struct Sampler {
    /// The [`SamplerState`] uniform (host-written each step).
    pub state: wgpu::Buffer,
    partials: wgpu::Buffer,
    vocab: u32,
}

impl Sampler {
    pub fn new(gpu: &Gpu, vocab: u32) -> Result<Sampler> {
        let state = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("sampler state"),
            size: std::mem::size_of::<SamplerState>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let partials = gpu.storage("sampler partials", vocab.div_ceil(PER_WG) as u64 * 8)?;
        Ok(Sampler { state, partials, vocab })
    }

    /// Writes the settings for the next draw (call before submitting the step).
    pub fn set(&self, gpu: &Gpu, state: &SamplerState) {
        gpu.queue.write_buffer(&self.state, 0, bytemuck::bytes_of(state));
    }

    /// Records the selection of a token from the logits row at element `logits_offset`,
    /// writing its id to `out[out_index]` (a u32 buffer).
    pub fn record(
        &self,
        prog: &mut Program,
        gpu: &Gpu,
        logits: &wgpu::Buffer,
        logits_offset: u32,
        out: &wgpu::Buffer,
        out_index: u32,
    ) -> Result<()> {
        let n_partials = self.vocab.div_ceil(PER_WG);
        let params = Params { vocab: self.vocab, logits_offset, out_index, n_partials };
        let args = [Arg::Buf(&self.state), Arg::Buf(logits), Arg::Buf(&self.partials), Arg::Buf(out)];
        let partial = KernelSpec::new("sample", SHADER, "argmax_partial", BINDINGS);
        prog.push_with_params(gpu, &partial, &params, &args, [n_partials, 1, 1])?;
        let select = KernelSpec::new("sample", SHADER, "select_token", BINDINGS);
        prog.push_with_params(gpu, &select, &params, &args, [1, 1, 1])
    }
}

/// The distribution [`Sampler`] draws from, computed on the CPU in f64: probabilities per
/// token after temperature, top-k and top-p (zero outside the kept set). For tests.
pub fn filtered_distribution(logits: &[f32], st: &SamplerState) -> Vec<f64> {
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let mut keep = logits.len();
    if st.top_k > 0 {
        let kth = logits[order[(st.top_k as usize).min(logits.len()) - 1]];
        keep = order.iter().take_while(|&&i| logits[i] >= kth).count();
    }
    let w: Vec<f64> = logits.iter().map(|&l| (((l - m) / st.temperature) as f64).exp()).collect();
    if st.top_p < 1.0 {
        let z: f64 = order[..keep].iter().map(|&i| w[i]).sum();
        let mut mass = 0.0;
        let mut n = 0;
        while n < keep {
            mass += w[order[n]];
            n += 1;
            if mass >= st.top_p as f64 * z {
                break;
            }
        }
        // Ties with the last kept logit stay in, as in the shader.
        let last = logits[order[n - 1]];
        keep = order[..keep].iter().take_while(|&&i| logits[i] >= last).count();
    }
    let mut p = vec![0.0; logits.len()];
    let z: f64 = order[..keep].iter().map(|&i| w[i]).sum();
    for &i in &order[..keep] {
        p[i] = w[i] / z;
    }
    p
}
