//! Mllama vision encoder + projector weights on the GPU, by the GGUF names `source::hf` maps
//! the safetensors to (`v.*`, `mm.0.*`; table in `docs/MODELS.md`). Matrices keep their type
//! (or `quant`'s); vectors and the 1-element gates become f32; the position and aspect-ratio
//! tables keep their type (the encoder gathers the rows it needs as f32). Shapes row-major
//! `[rows][cols]` (GGUF dims reversed).

use crate::backend::{Buffer, Device};
use crate::kernels::quant::Weight;
use crate::source::{check_dims, LoadError, LoadQuant, WeightLoader};

use super::config::MllamaVisionConfig;

/// One pre-LayerNorm layer (`v.blk.N.*` local, `v.global.blk.N.*` global); attention without
/// biases, MLP fc1 / fc2 with biases.
pub struct MllamaLayerWeights {
    pub ln1_w: Buffer,
    pub ln1_b: Buffer,
    pub q: Weight,
    pub k: Weight,
    pub v: Weight,
    pub o: Weight,
    pub ln2_w: Buffer,
    pub ln2_b: Buffer,
    /// fc1 `[n_ff][hidden]`, fc2 `[hidden][n_ff]`.
    pub up: Weight,
    pub up_b: Buffer,
    pub down: Weight,
    pub down_b: Buffer,
    /// Global layers: the residual gates (`attn_gate`, `ffn_gate`, 1 value each, used as tanh).
    pub gates: Option<(Buffer, Buffer)>,
}

/// All encoder + projector weights.
pub struct MllamaVisionWeights {
    /// `v.patch_embd.weight`, GGUF dims `[P, P, 3, hidden]`: `[hidden][3*P*P]`.
    pub patch_embd: Weight,
    pub class_embd: Buffer,
    /// `v.position_embd.weight` `[tokens][hidden]` and its gate.
    pub pos_embd: Weight,
    pub pos_gate: Buffer,
    /// `v.tile_position_embd.weight` `[aspect_rows][max_tiles * tokens * hidden]`.
    pub tile_pos_embd: Weight,
    /// `v.{pre,post}_tile_position_embd.weight` `[aspect_rows][max_tiles * hidden]`, gates.
    pub pre_tile: Weight,
    pub pre_tile_gate: Buffer,
    pub post_tile: Weight,
    pub post_tile_gate: Buffer,
    pub pre_ln_w: Buffer,
    pub pre_ln_b: Buffer,
    pub post_ln_w: Buffer,
    pub post_ln_b: Buffer,
    pub local: Vec<MllamaLayerWeights>,
    pub global: Vec<MllamaLayerWeights>,
    /// `mm.0` (`multi_modal_projector`) `[text_hidden][output_dim]` and its bias.
    pub mm_0: Weight,
    pub mm_0_b: Buffer,
}

impl MllamaLayerWeights {
    fn bytes_on_gpu(&self) -> u64 {
        let matrices = [&self.q, &self.k, &self.v, &self.o, &self.up, &self.down].map(Weight::bytes_on_gpu);
        let vectors = [&self.ln1_w, &self.ln1_b, &self.ln2_w, &self.ln2_b, &self.up_b, &self.down_b].map(|b| b.size());
        let gates = self.gates.as_ref().map_or(0, |(a, f)| a.size() + f.size());
        matrices.iter().sum::<u64>() + vectors.iter().sum::<u64>() + gates
    }
}

impl MllamaVisionWeights {
    /// Bytes of weights held on the GPU.
    pub fn bytes_on_gpu(&self) -> u64 {
        let tables = [&self.patch_embd, &self.pos_embd, &self.tile_pos_embd, &self.pre_tile, &self.post_tile, &self.mm_0];
        let vectors = [
            &self.class_embd,
            &self.pos_gate,
            &self.pre_tile_gate,
            &self.post_tile_gate,
            &self.pre_ln_w,
            &self.pre_ln_b,
            &self.post_ln_w,
            &self.post_ln_b,
            &self.mm_0_b,
        ];
        let layers = self.local.iter().chain(&self.global).map(MllamaLayerWeights::bytes_on_gpu).sum::<u64>();
        tables.map(Weight::bytes_on_gpu).iter().sum::<u64>() + vectors.map(|b| b.size()).iter().sum::<u64>() + layers
    }

    /// Loads through `src`, layer and projector matrices requantized to `quant` (the patch
    /// embedding and the tables keep their type).
    pub fn load_from(
        dev: &Device,
        src: &mut dyn WeightLoader,
        cfg: &MllamaVisionConfig,
        quant: LoadQuant,
    ) -> Result<Self, LoadError> {
        let (d, ff) = (cfg.hidden, cfg.n_ff);
        let p = cfg.patch_size as u64;
        let table = |src: &mut dyn WeightLoader, name: &str, rows: u32, cols: u64| -> Result<Weight, LoadError> {
            check_dims(name, src.tensor_info(name), &[cols, rows as u64])?;
            let cols = u32::try_from(cols).map_err(|_| LoadError::Shape {
                name: name.into(),
                got: format!("{cols} columns"),
                want: "at most u32::MAX".into(),
            })?;
            src.reshaped(dev, name, rows, cols)
        };
        let layer = |src: &mut dyn WeightLoader, prefix: String, gated: bool| -> Result<MllamaLayerWeights, LoadError> {
            let name = |s: &str| format!("{prefix}{s}");
            let m = |src: &mut dyn WeightLoader, s: &str, rows, cols| src.matrix(dev, &name(s), rows, cols, quant);
            Ok(MllamaLayerWeights {
                q: m(src, "attn_q.weight", d, d)?,
                k: m(src, "attn_k.weight", d, d)?,
                v: m(src, "attn_v.weight", d, d)?,
                o: m(src, "attn_out.weight", d, d)?,
                up: m(src, "ffn_up.weight", ff, d)?,
                down: m(src, "ffn_down.weight", d, ff)?,
                ln1_w: src.vector(dev, &name("ln1.weight"), d)?,
                ln1_b: src.vector(dev, &name("ln1.bias"), d)?,
                ln2_w: src.vector(dev, &name("ln2.weight"), d)?,
                ln2_b: src.vector(dev, &name("ln2.bias"), d)?,
                up_b: src.vector(dev, &name("ffn_up.bias"), ff)?,
                down_b: src.vector(dev, &name("ffn_down.bias"), d)?,
                gates: match gated {
                    true => Some((src.vector(dev, &name("attn_gate.weight"), 1)?, src.vector(dev, &name("ffn_gate.weight"), 1)?)),
                    false => None,
                },
            })
        };
        check_dims("v.patch_embd.weight", src.tensor_info("v.patch_embd.weight"), &[p, p, 3, d as u64])?;
        let patch_embd = src.reshaped(dev, "v.patch_embd.weight", d, cfg.patch_dim())?;
        let (rows, tiles, tokens) = (cfg.aspect_rows(), cfg.max_tiles as u64, cfg.tokens() as u64);
        let local = (0..cfg.n_local).map(|i| layer(src, format!("v.blk.{i}."), false)).collect::<Result<_, _>>()?;
        let global = (0..cfg.n_global).map(|i| layer(src, format!("v.global.blk.{i}."), true)).collect::<Result<_, _>>()?;
        Ok(MllamaVisionWeights {
            patch_embd,
            class_embd: src.vector(dev, "v.class_embd.weight", d)?,
            pos_embd: table(src, "v.position_embd.weight", cfg.tokens(), d as u64)?,
            pos_gate: src.vector(dev, "v.position_embd.gate", 1)?,
            tile_pos_embd: table(src, "v.tile_position_embd.weight", rows, tiles * tokens * d as u64)?,
            pre_tile: table(src, "v.pre_tile_position_embd.weight", rows, tiles * d as u64)?,
            pre_tile_gate: src.vector(dev, "v.pre_tile_position_embd.gate", 1)?,
            post_tile: table(src, "v.post_tile_position_embd.weight", rows, tiles * d as u64)?,
            post_tile_gate: src.vector(dev, "v.post_tile_position_embd.gate", 1)?,
            pre_ln_w: src.vector(dev, "v.pre_ln.weight", d)?,
            pre_ln_b: src.vector(dev, "v.pre_ln.bias", d)?,
            post_ln_w: src.vector(dev, "v.post_ln.weight", d)?,
            post_ln_b: src.vector(dev, "v.post_ln.bias", d)?,
            local,
            global,
            mm_0: src.matrix(dev, "mm.0.weight", cfg.text_hidden, cfg.output_dim, quant)?,
            mm_0_b: src.vector(dev, "mm.0.bias", cfg.text_hidden)?,
        })
    }
}
