//! The two ends of a decoder: the token-embedding gather, and the final RMSNorm with the LM
//! head (tied to the embedding when the file has no `output.weight`), whose logits are kept
//! for every row, the last one (from which the GPU sampler picks the next token) or each
//! sequence's last one in a batched step.

use crate::backend::gpu::Result;
use crate::backend::{Buffer, Device, Program};
use crate::kernels::quant::Weight;
use crate::kernels::{embedding, matvec, norm};
use crate::source::{LoadError, LoadQuant, WeightLoader};

use super::linear;
use crate::model::rows::Rows;
use crate::model::step::{LogitsMode, StepBuffers};

/// Token embedding, final norm and LM head.
pub struct Head {
    pub token_embd: Weight,  // [vocab][n_embd]
    pub output_norm: Buffer, // [n_embd] f32
    /// The LM head `[vocab][n_embd]`; `None` when tied to `token_embd`.
    pub output: Option<Weight>,
    pub rms_eps: f32,
}

impl Head {
    /// Loads `token_embd`, `output_norm` and `output` (if present).
    pub fn load(
        dev: &Device,
        src: &mut dyn WeightLoader,
        vocab: u32,
        d: u32,
        rms_eps: f32,
    ) -> std::result::Result<Head, LoadError> {
        let output = match src.tensor_info("output.weight") {
            Some(_) => Some(src.matrix(dev, "output.weight", vocab, d, LoadQuant::Keep)?),
            None => None,
        };
        Ok(Head {
            token_embd: src.matrix(dev, "token_embd.weight", vocab, d, LoadQuant::Keep)?,
            output_norm: src.vector(dev, "output_norm.weight", d)?,
            output,
            rms_eps,
        })
    }

    /// The LM head: `output.weight`, or the tied token embedding.
    pub fn lm_head(&self) -> &Weight {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }

    /// Bytes held on the GPU.
    pub fn bytes_on_gpu(&self) -> u64 {
        self.token_embd.bytes_on_gpu() + self.output.as_ref().map_or(0, |w| w.bytes_on_gpu()) + self.output_norm.size()
    }

    /// The embedding gather of `n` tokens (ids in `b.ids`) into `b.x`.
    pub fn record_embed(&self, p: &mut Program, dev: &Device, b: &StepBuffers, n: u32) -> Result<()> {
        embedding::record(p, dev, &self.token_embd, &b.ids, &b.x, n)
    }

    /// The final norm and the logits `mode` asks for, from the hidden states of `rows` in
    /// `b.x`; with [`LogitsMode::LastAndSample`] the sampled id goes to `b.ids[0]`.
    pub fn record_logits<S>(&self, p: &mut Program, dev: &Device, rows: &Rows<'_, S>, mode: LogitsMode) -> Result<()> {
        let (b, n, d) = (rows.b, rows.n, self.token_embd.cols);
        match mode {
            LogitsMode::None => Ok(()),
            LogitsMode::All => {
                norm::rms_norm(p, dev, &b.x, &self.output_norm, &b.h, n, d, self.rms_eps)?;
                linear(p, dev, self.lm_head(), &b.h, &b.logits, n, rows.products())
            }
            LogitsMode::LastOfEach => {
                // The decode kernel, as each sequence's last row alone gets.
                let (row, last) = (4 * d as u64, rows.last_rows());
                for (j, &r) in last.iter().enumerate() {
                    p.copy(&b.x, r as u64 * row, &b.x_last, j as u64 * row, row)?;
                }
                let k = last.len() as u32;
                norm::rms_norm(p, dev, &b.x_last, &self.output_norm, &b.h, k, d, self.rms_eps)?;
                matvec::record(p, dev, self.lm_head(), &b.h, &b.logits, k)
            }
            LogitsMode::LastAndSample => {
                let row = 4 * d as u64;
                p.copy(&b.x, (n - 1) as u64 * row, &b.x_last, 0, row)?;
                norm::rms_norm(p, dev, &b.x_last, &self.output_norm, &b.h, 1, d, self.rms_eps)?;
                matvec::record(p, dev, self.lm_head(), &b.h, &b.logits, 1)?;
                match &b.sampler {
                    Some(sampler) => sampler.record(p, dev, &b.logits, 0, &b.ids, 0),
                    None => Ok(()),
                }
            }
        }
    }
}
