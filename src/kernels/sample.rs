//! Next-token selection on the device: argmax, or temperature / top-k / top-p sampling with a
//! seed ([`SamplerState`]), entirely on the GPU (`backend::gpu::sample`: the radix select of
//! `shaders/sample.wgsl` and its buffers). The CPU backend has no device sampler: the engine
//! picks its tokens on the host. [`filtered_distribution`] is the reference the tests draw
//! against.

pub use crate::backend::gpu::sample::{SamplerState, CHUNK, CHUNK_CPU, DISPATCHES};
use crate::backend::gpu::{self, Result};
use crate::backend::{Buffer, Device, Program};

/// The GPU sampler of one context.
pub struct Sampler {
    buffers: gpu::sample::SampleBuffers,
}

impl Sampler {
    /// Buffers for rows of `vocab` logits (1 to 65535 x [`CHUNK`]).
    pub fn new(dev: &Device, vocab: u32) -> Result<Sampler> {
        Ok(Sampler { buffers: gpu::sample::SampleBuffers::new(dev.gpu()?, vocab)? })
    }

    /// Writes the settings for the next draw (call before submitting the step).
    pub fn set(&self, dev: &Device, state: &SamplerState) -> Result<()> {
        self.buffers.set(dev.gpu()?, state);
        Ok(())
    }

    /// The smallest logit the last draw kept after top-k and top-p (`None`: every token),
    /// read back after the program ran. For tests, against [`filtered_distribution`].
    pub async fn read_cut(&self, dev: &Device) -> Result<Option<f32>> {
        self.buffers.read_cut(dev.gpu()?).await
    }

    /// Records the selection of a token from the logits row at element `logits_offset`,
    /// writing its id to `out[out_index]` (a u32 buffer).
    pub fn record(
        &self,
        prog: &mut Program,
        dev: &Device,
        logits: &Buffer,
        logits_offset: u32,
        out: &Buffer,
        out_index: u32,
    ) -> Result<()> {
        let (prog, gpu) = prog.gpu(dev, "sample")?;
        self.buffers.record(prog, gpu, logits.gpu()?, logits_offset, out.gpu()?, out_index)
    }
}

/// The distribution [`Sampler`] draws from, computed on the CPU in f64: probabilities per
/// token after temperature, top-k and top-p (zero outside the kept set). NaN and -inf logits
/// weigh 0 (they rank below every live logit for top-k); with no live logit, token 0 is
/// certain. For tests.
pub fn filtered_distribution(logits: &[f32], st: &SamplerState) -> Vec<f64> {
    let logits: Vec<f32> = logits.iter().map(|&l| if l.is_nan() { f32::NEG_INFINITY } else { l }).collect();
    let mut p = vec![0.0; logits.len()];
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    if m == f32::NEG_INFINITY {
        p[0] = 1.0;
        return p;
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let mut keep = logits.len();
    if st.top_k > 0 {
        let kth = logits[order[(st.top_k as usize).min(logits.len()) - 1]];
        keep = order.iter().take_while(|&&i| logits[i] >= kth).count();
    }
    // The maximum weighs exactly 1 (also when it is +inf).
    let w: Vec<f64> = logits.iter().map(|&l| if l == m { 1.0 } else { (((l - m) / st.temperature) as f64).exp() }).collect();
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
    let z: f64 = order[..keep].iter().map(|&i| w[i]).sum();
    for &i in &order[..keep] {
        p[i] = w[i] / z;
    }
    p
}
