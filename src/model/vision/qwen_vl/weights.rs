//! Qwen2-VL-family vision encoder + merger weights on the GPU, loaded from an mmproj GGUF by
//! llama.cpp tensor name (`v.*`, `mm.*`; `tests/fixtures/tiny_qwen35_a/cases.json`
//! `mmproj_vs_hf` names the transformers parameter each equals, unpermuted). Matrices keep
//! their GGUF type (or `quant`'s); vectors become f32; the position table keeps its type (the
//! encoder gathers the rows it needs as f32). Shapes are row-major `[rows][cols]` (GGUF dims reversed).

use crate::backend::{Buffer, Device};
use crate::kernels::quant::Weight;
use crate::source::{check_dims, LoadError, LoadQuant, WeightLoader};

use super::config::{QwenVlConfig, POSITION_EMBD};

/// One pre-LayerNorm encoder block (`v.blk.N.*`), every linear with a bias.
pub struct QwenVlLayerWeights {
    pub ln1_w: Buffer,
    pub ln1_b: Buffer,
    /// `attn_qkv`, `[3 hidden][hidden]`: q, k, v stacked by rows (heads contiguous).
    pub qkv: Weight,
    pub qkv_b: Buffer,
    pub wo: Weight,
    pub wo_b: Buffer,
    pub ln2_w: Buffer,
    pub ln2_b: Buffer,
    /// `ffn_up` (`linear_fc1`), `[n_ff][hidden]`.
    pub up: Weight,
    pub up_b: Buffer,
    /// `ffn_down` (`linear_fc2`), `[hidden][n_ff]`.
    pub down: Weight,
    pub down_b: Buffer,
}

/// All encoder + merger weights.
pub struct QwenVlWeights {
    /// The two temporal slices of the Conv3d kernel (`v.patch_embd.weight`, `.weight.1`), GGUF
    /// dims `[P, P, 3, hidden]` each: `[hidden][3*P*P]` matrices with columns `[c][ky][kx]`.
    pub patch_embd: [Weight; 2],
    pub patch_embd_b: Buffer,
    /// `v.position_embd.weight`, `[side*side][hidden]` (rows read by the embedding gather).
    pub pos_embd: Weight,
    pub layers: Vec<QwenVlLayerWeights>,
    /// `v.post_ln` (the merger's LayerNorm, per patch before the 2x2 merge).
    pub post_ln_w: Buffer,
    pub post_ln_b: Buffer,
    /// `mm.0` (`merger.linear_fc1`), `[4 hidden][4 hidden]`, columns `[k][c]` (window patch k).
    pub mm_0: Weight,
    pub mm_0_b: Buffer,
    /// `mm.2` (`merger.linear_fc2`, after GELU erf), `[text_hidden][4 hidden]`.
    pub mm_2: Weight,
    pub mm_2_b: Buffer,
}

impl QwenVlWeights {
    /// Loads through `src`, block and merger matrices requantized to `quant` (the patch
    /// embedding keeps its type).
    pub fn load_from(dev: &Device, src: &mut dyn WeightLoader, cfg: &QwenVlConfig, quant: LoadQuant) -> Result<Self, LoadError> {
        let matrix = |src: &mut dyn WeightLoader, name: &str, rows, cols| src.matrix(dev, name, rows, cols, quant);
        let vector = |src: &mut dyn WeightLoader, name: &str, n| src.vector(dev, name, n);
        let (d, ff, t, m) = (cfg.hidden, cfg.n_ff, cfg.text_hidden, cfg.merged_dim());
        let p = cfg.patch_size as u64;
        let slice = |src: &mut dyn WeightLoader, name: &str| -> Result<Weight, LoadError> {
            check_dims(name, src.tensor_info(name), &[p, p, 3, d as u64])?;
            src.reshaped(dev, name, d, cfg.patch_dim())
        };
        let patch_embd = [slice(src, "v.patch_embd.weight")?, slice(src, "v.patch_embd.weight.1")?];
        let n_pos = cfg.pos_side * cfg.pos_side;
        check_dims(POSITION_EMBD, src.tensor_info(POSITION_EMBD), &[d as u64, n_pos as u64])?;
        let pos_embd = src.reshaped(dev, POSITION_EMBD, n_pos, d)?;
        let mut layers = Vec::with_capacity(cfg.n_layer as usize);
        for i in 0..cfg.n_layer {
            let name = |s: &str| format!("v.blk.{i}.{s}");
            layers.push(QwenVlLayerWeights {
                ln1_w: vector(src, &name("ln1.weight"), d)?,
                ln1_b: vector(src, &name("ln1.bias"), d)?,
                qkv: matrix(src, &name("attn_qkv.weight"), 3 * d, d)?,
                qkv_b: vector(src, &name("attn_qkv.bias"), 3 * d)?,
                wo: matrix(src, &name("attn_out.weight"), d, d)?,
                wo_b: vector(src, &name("attn_out.bias"), d)?,
                ln2_w: vector(src, &name("ln2.weight"), d)?,
                ln2_b: vector(src, &name("ln2.bias"), d)?,
                up: matrix(src, &name("ffn_up.weight"), ff, d)?,
                up_b: vector(src, &name("ffn_up.bias"), ff)?,
                down: matrix(src, &name("ffn_down.weight"), d, ff)?,
                down_b: vector(src, &name("ffn_down.bias"), d)?,
            });
        }
        Ok(QwenVlWeights {
            patch_embd,
            patch_embd_b: vector(src, "v.patch_embd.bias", d)?,
            pos_embd,
            layers,
            post_ln_w: vector(src, "v.post_ln.weight", d)?,
            post_ln_b: vector(src, "v.post_ln.bias", d)?,
            mm_0: matrix(src, "mm.0.weight", m, m)?,
            mm_0_b: vector(src, "mm.0.bias", m)?,
            mm_2: matrix(src, "mm.2.weight", t, m)?,
            mm_2_b: vector(src, "mm.2.bias", t)?,
        })
    }

    /// Bytes of weights held on the GPU.
    pub fn bytes_on_gpu(&self) -> u64 {
        let per_layer = |l: &QwenVlLayerWeights| {
            [&l.qkv, &l.wo, &l.up, &l.down].iter().map(|w| w.bytes_on_gpu()).sum::<u64>()
                + [&l.ln1_w, &l.ln1_b, &l.qkv_b, &l.wo_b, &l.ln2_w, &l.ln2_b, &l.up_b, &l.down_b]
                    .iter()
                    .map(|b| b.size())
                    .sum::<u64>()
        };
        [&self.patch_embd[0], &self.patch_embd[1], &self.pos_embd, &self.mm_0, &self.mm_2]
            .iter()
            .map(|w| w.bytes_on_gpu())
            .sum::<u64>()
            + [&self.patch_embd_b, &self.post_ln_w, &self.post_ln_b, &self.mm_0_b, &self.mm_2_b]
                .iter()
                .map(|b| b.size())
                .sum::<u64>()
            + self.layers.iter().map(per_layer).sum::<u64>()
    }
}
