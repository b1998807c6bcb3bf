//! The Mllama (Llama 3.2 Vision) vision encoder and projector: one image's tiles (padded to
//! `max_tiles`) in, its cross-attention states `[max_tiles * tokens][text_hidden]` out, on the
//! GPU in one command buffer. The op sequence is `docs/MODELS.md` § "Vision encoder".
//! Reference: transformers' `MllamaVisionModel` and `multi_modal_projector`
//! (`modeling_mllama.py`).
//!
//! Token order: Mllama pads each tile's `tokens` to a multiple of 8 and masks score (i, j)
//! iff tokens i and j are both invalid (padding slot, or a tile past the image's). Every step
//! but attention is per token, and attention has no positions, so the pass keeps the tokens
//! in an order where the mask is two ranges: the `max_tiles * tokens` real slots tile by tile
//! (the image's tiles first, so the valid tokens are rows `0..num_tiles * tokens`), then the
//! padding slots tile by tile. Rows `>= num_tiles * tokens` see only keys below it
//! ([`AttnShape::valid_rows`]), and the states are the first `max_tiles * tokens` rows.
//!
//! Binding sizes: every buffer the pass binds fits the adapter's storage-binding limit at the
//! 11B's shape. The one that would not, the `[max_tiles * tokens][output_dim]` features
//! (196.7 MB at 4 tiles of 1601 tokens x 7680), is kept in row parts that each fit
//! ([`MllamaVisionConfig::feature_parts`]); the kept layers scatter their rows into each
//! part and the projector runs per part, writing its rows of the states. The MLP runs in
//! row chunks ([`MllamaVisionConfig::ffn_chunk_rows`]). The activations (6432 x 1280 f32,
//! 32.9 MB) and the states (6404 x 4096 f32, 104.9 MB) stay whole; attention needs no
//! scratch of its own.

mod config;
mod weights;

pub use config::MllamaVisionConfig;
pub use weights::{MllamaLayerWeights, MllamaVisionWeights};

use crate::backend::gpu::{GpuError, Result as GpuResult};
use crate::backend::{Buffer, Device, Program};
use crate::image::mllama::MllamaPixels;
use crate::kernels::attention::{attention_prefill, AttnShape, StepParams};
use crate::kernels::matmul::{record_rows, MatmulCompute};
use crate::kernels::vision::patch_unfold;
use crate::kernels::vision_mllama as vm;
use crate::kernels::vision_qwen as vq;
use crate::kernels::{elementwise, embedding, matmul};
use crate::model::ModelError;
use crate::source::{Eager, LoadQuant, TensorSource, WeightLoader};

/// A loaded Mllama vision encoder + projector.
pub struct MllamaVision {
    pub cfg: MllamaVisionConfig,
    pub weights: MllamaVisionWeights,
    /// Matmul precision (f32 by default).
    pub compute: MatmulCompute,
    /// A binding size below the adapter's to split the features and the MLP chunks by
    /// (`None`, the default: the adapter's [`crate::backend::gpu::Caps::part_limit`]); tests set it
    /// to run the split path on tiny models.
    pub split_limit: Option<u64>,
}

/// One image's cross-attention states on the GPU: `[rows][dim]` f32, `rows = max_tiles *
/// tokens` (tile-major, class token first; tiles past the image's included, as transformers
/// returns them), `dim` the text model's hidden size.
pub struct MllamaStates {
    pub buffer: Buffer,
    pub rows: u32,
    pub dim: u32,
    /// Tiles of the image (the cross-attention mask's allowed tiles).
    pub num_tiles: u32,
    /// GPU bytes the pass allocated, these states included (what the memory plan counts as
    /// the vision scratch); all but the states are freed once the pass has run.
    pub scratch_bytes: u64,
}

impl MllamaVision {
    pub fn load(dev: &Device, src: &dyn TensorSource, quant: LoadQuant) -> Result<MllamaVision, ModelError> {
        Self::load_from(dev, &mut Eager(src), quant)
    }

    /// [`MllamaVision::load`] through any [`WeightLoader`].
    pub fn load_from(dev: &Device, src: &mut dyn WeightLoader, quant: LoadQuant) -> Result<MllamaVision, ModelError> {
        let cfg = MllamaVisionConfig::from_metadata(src.metadata())?;
        let weights = MllamaVisionWeights::load_from(dev, src, &cfg, quant)?;
        Ok(MllamaVision { cfg, weights, compute: MatmulCompute::F32, split_limit: None })
    }

    /// Encodes a preprocessed image ([`crate::image::mllama::preprocess_mllama`]).
    pub fn encode(&self, dev: &Device, pixels: &MllamaPixels) -> GpuResult<MllamaStates> {
        if pixels.tile_size != self.cfg.image_size {
            return Err(GpuError::Shape(format!(
                "tiles of {} pixels, the encoder's are {}",
                pixels.tile_size, self.cfg.image_size
            )));
        }
        self.encode_tiles(dev, &pixels.tiles, pixels.num_tiles(), pixels.tiling.aspect_ratio_id)
    }

    /// Encodes `num_tiles` normalised tiles (`[num_tiles][3][tile][tile]`, the processor's
    /// `pixel_values` without its all-zero padding tiles) of aspect-ratio id
    /// `aspect_ratio_id` (1-based): records and submits the whole pass in one command buffer
    /// and returns the states without waiting for them.
    pub fn encode_tiles(&self, dev: &Device, tiles: &[f32], num_tiles: u32, aspect_ratio_id: u32) -> GpuResult<MllamaStates> {
        let c = &self.cfg;
        let tile_len = 3 * c.image_size as usize * c.image_size as usize;
        if num_tiles == 0 || num_tiles > c.max_tiles || tiles.len() != num_tiles as usize * tile_len {
            return Err(GpuError::Shape(format!(
                "{} pixel values for {num_tiles} tiles of {tile_len} (at most {})",
                tiles.len(),
                c.max_tiles
            )));
        }
        let ratio = (aspect_ratio_id as usize).checked_sub(1).and_then(|i| c.aspect_ratios.get(i));
        match ratio {
            Some(&(down, across)) if down * across == num_tiles => {}
            _ => return Err(GpuError::Shape(format!("aspect-ratio id {aspect_ratio_id} does not have {num_tiles} tiles"))),
        }
        let limit = self.split_limit.map_or(dev.caps().part_limit(), |l| l.min(dev.caps().part_limit()));
        let s = Scratch::new(dev, c, tiles, tile_len, aspect_ratio_id, limit)?;
        let prog = self.record(dev, &s, num_tiles)?;
        StepParams::new(0, s.n, 0).write(dev, &s.step)?;
        prog.run(dev)?;
        let scratch_bytes = s.bytes();
        Ok(MllamaStates { buffer: s.out, rows: c.state_rows(), dim: c.text_hidden, num_tiles, scratch_bytes })
    }

    fn record(&self, dev: &Device, s: &Scratch, num_tiles: u32) -> GpuResult<Program> {
        let (c, w, mm) = (&self.cfg, &self.weights, self.compute);
        let (d, t, np, tok, n) = (c.hidden, c.max_tiles, c.patches(), c.tokens(), s.n);
        let main = t * tok;
        let eps = c.norm_eps;
        let mut p = Program::new();

        // 1-2. Patch embeddings (padding tiles stay 0: their pixels are 0 and there is no
        // bias) + pre-tile embedding; class tokens; gated position embeddings.
        for (i, px) in s.pixels.iter().enumerate() {
            patch_unfold(&mut p, dev, px, &s.patches, 3, c.image_size, c.image_size, c.patch_size)?;
            record_rows(&mut p, dev, &w.patch_embd, (&s.patches, 0), (&s.emb, i as u32 * np), np, mm)?;
        }
        embedding::record(&mut p, dev, &w.pre_tile, &s.ratio_id, &s.pre_tile, 1)?;
        embedding::record(&mut p, dev, &w.post_tile, &s.ratio_id, &s.post_tile, 1)?;
        embedding::record(&mut p, dev, &w.tile_pos_embd, &s.ratio_id, &s.tile_pos, 1)?;
        embedding::record(&mut p, dev, &w.pos_embd, &s.pos_ids, &s.pos, tok)?;
        vm::tile_add(&mut p, dev, &s.pre_tile, &w.pre_tile_gate, &s.emb, 0, t * np, np, d)?;
        vm::assemble(&mut p, dev, &s.emb, &w.class_embd, &s.h, t, tok, n, d)?;
        vm::gated_pos(&mut p, dev, &s.pos, &s.tile_pos, &w.pos_gate, &s.h, main, tok, d)?;
        // 3. layernorm_pre on the real slots; the padding slots stay 0 (x is fresh).
        vq::layer_norm(&mut p, dev, &s.h, &w.pre_ln_w, &w.pre_ln_b, &s.x, main, d, eps)?;

        // 4-5. Local layers, the kept outputs scattered into the features.
        let attn =
            AttnShape { causal: false, valid_rows: num_tiles * tok, ..AttnShape::new(c.n_head, c.n_head, d / c.n_head, n) };
        let n_kept = c.kept_layers.len() as u32;
        for (i, l) in w.local.iter().enumerate() {
            self.layer(&mut p, dev, s, l, &attn)?;
            if let Some(j) = c.kept_layers.iter().position(|&k| k as usize == i) {
                for (part, &(r0, rows)) in s.features.iter().zip(&s.feature_parts) {
                    vm::scatter_cols_from(&mut p, dev, (&s.x, r0), part, rows, d, c.output_dim, d + j as u32, n_kept)?;
                }
            }
        }
        // 6. layernorm_post and the post-tile embedding on every slot, then the global layers.
        vq::layer_norm(&mut p, dev, &s.x, &w.post_ln_w, &w.post_ln_b, &s.h, n, d, eps)?;
        vq::copy_cols(&mut p, dev, &s.h, &s.x, n, d, d, 0)?;
        let pad = c.padded_tokens() - tok;
        vm::tile_add(&mut p, dev, &s.post_tile, &w.post_tile_gate, &s.x, 0, main, tok, d)?;
        if pad > 0 {
            vm::tile_add(&mut p, dev, &s.post_tile, &w.post_tile_gate, &s.x, main, t * pad, pad, d)?;
        }
        for l in &w.global {
            self.layer(&mut p, dev, s, l, &attn)?;
        }
        // 7-8. Features (global output, then the kept layers interleaved) and the projector,
        // part by part, each writing its rows of the states.
        for (part, &(r0, rows)) in s.features.iter().zip(&s.feature_parts) {
            vm::scatter_cols_from(&mut p, dev, (&s.x, r0), part, rows, d, c.output_dim, 0, 1)?;
            record_rows(&mut p, dev, &w.mm_0, (part, 0), (&s.out, r0), rows, mm)?;
        }
        vq::add_bias(&mut p, dev, &w.mm_0_b, &s.out, main, c.text_hidden)?;
        Ok(p)
    }

    /// One pre-LayerNorm layer on `s.x`: `x += g_a * o(attn(LN1 x)); x += g_f * fc2(gelu(fc1(LN2
    /// x)))`, the gates `tanh` of the global layers' weights, 1 for local layers.
    fn layer(&self, p: &mut Program, dev: &Device, s: &Scratch, l: &MllamaLayerWeights, attn: &AttnShape) -> GpuResult<()> {
        let (c, mm, n) = (&self.cfg, self.compute, s.n);
        let (d, ff) = (c.hidden, c.n_ff);
        let residual = |p: &mut Program, y: &Buffer, gate: Option<&Buffer>| match gate {
            Some(g) => vm::gated_add(p, dev, y, g, &s.x, n * d),
            None => elementwise::add_inplace(p, dev, y, &s.x, n * d),
        };
        vq::layer_norm(p, dev, &s.x, &l.ln1_w, &l.ln1_b, &s.h, n, d, c.norm_eps)?;
        matmul::record_with(p, dev, &l.q, &s.h, &s.q, n, mm)?;
        matmul::record_with(p, dev, &l.k, &s.h, &s.k, n, mm)?;
        matmul::record_with(p, dev, &l.v, &s.h, &s.v, n, mm)?;
        attention_prefill(p, dev, attn, &s.step, &s.q, &s.k, &s.v, &s.attn)?;
        matmul::record_with(p, dev, &l.o, &s.attn, &s.h, n, mm)?;
        residual(p, &s.h, l.gates.as_ref().map(|g| &g.0))?;
        vq::layer_norm(p, dev, &s.x, &l.ln2_w, &l.ln2_b, &s.h, n, d, c.norm_eps)?;
        for r0 in (0..n).step_by(s.ffn_rows as usize) {
            let m = s.ffn_rows.min(n - r0);
            record_rows(p, dev, &l.up, (&s.h, r0), (&s.up, 0), m, mm)?;
            vq::add_bias(p, dev, &l.up_b, &s.up, m, ff)?;
            elementwise::gelu_inplace(p, dev, &s.up, m * ff)?;
            record_rows(p, dev, &l.down, (&s.up, 0), (&s.tmp, r0), m, mm)?;
        }
        vq::add_bias(p, dev, &l.down_b, &s.tmp, n, d)?;
        residual(p, &s.tmp, l.gates.as_ref().map(|g| &g.1))
    }
}

/// The buffers of one image's pass.
struct Scratch {
    /// Tokens in the pass: `max_tiles * padded_tokens`.
    n: u32,
    step: Buffer,
    /// One buffer per image tile; the padding tiles have none.
    pixels: Vec<Buffer>,
    patches: Buffer,
    /// Patch embeddings `[max_tiles * patches][hidden]`.
    emb: Buffer,
    /// `[aspect_ratio_id]` and `0..tokens`: the table rows gathered below.
    ratio_id: Buffer,
    pos_ids: Buffer,
    pre_tile: Buffer,
    post_tile: Buffer,
    tile_pos: Buffer,
    pos: Buffer,
    x: Buffer,
    h: Buffer,
    tmp: Buffer,
    q: Buffer,
    k: Buffer,
    v: Buffer,
    attn: Buffer,
    ffn_rows: u32,
    up: Buffer,
    /// The features `[max_tiles * tokens][output_dim]` in row parts that each fit a binding:
    /// `feature_parts[i]` is part `i`'s (first row, rows).
    feature_parts: Vec<(u32, u32)>,
    features: Vec<Buffer>,
    out: Buffer,
}

impl Scratch {
    /// The buffers of a pass over `tiles`, split by bindings of `limit` bytes.
    fn new(
        dev: &Device,
        c: &MllamaVisionConfig,
        tiles: &[f32],
        tile_len: usize,
        aspect_ratio_id: u32,
        limit: u64,
    ) -> GpuResult<Scratch> {
        let n = c.pass_rows();
        let (d, tok, main) = (c.hidden, c.tokens(), c.state_rows() as u64);
        let f32s = |rows: u64, cols: u32| rows * cols as u64 * 4;
        let ffn_rows = c.ffn_chunk_rows(limit);
        let feature_parts = c.feature_parts(limit);
        let buf = |label: &str, rows: u64, cols: u32| dev.storage(&format!("mllama_vision.{label}"), f32s(rows, cols));
        let pixels = tiles
            .chunks(tile_len)
            .map(|tile| dev.storage_with("mllama_vision.pixels", bytemuck::cast_slice(tile)))
            .collect::<GpuResult<Vec<_>>>()?;
        let pos_ids: Vec<u32> = (0..tok).collect();
        let features = (feature_parts.iter().enumerate())
            .map(|(i, &(_, rows))| buf(&format!("features.{i}"), rows as u64, c.output_dim))
            .collect::<GpuResult<Vec<_>>>()?;
        let n = n as u64;
        Ok(Scratch {
            n: n as u32,
            step: StepParams::create_buffer(dev)?,
            pixels,
            patches: buf("patches", c.patches() as u64, c.patch_dim())?,
            emb: buf("emb", c.max_tiles as u64 * c.patches() as u64, d)?,
            ratio_id: dev.storage_with("mllama_vision.ratio_id", bytemuck::cast_slice(&[aspect_ratio_id]))?,
            pos_ids: dev.storage_with("mllama_vision.pos_ids", bytemuck::cast_slice(&pos_ids))?,
            pre_tile: buf("pre_tile", c.max_tiles as u64, d)?,
            post_tile: buf("post_tile", c.max_tiles as u64, d)?,
            tile_pos: buf("tile_pos", main, d)?,
            pos: buf("pos", tok as u64, d)?,
            x: buf("x", n, d)?,
            h: buf("h", n, d)?,
            tmp: buf("tmp", n, d)?,
            q: buf("q", n, d)?,
            k: buf("k", n, d)?,
            v: buf("v", n, d)?,
            attn: buf("attn", n, d)?,
            ffn_rows,
            up: buf("up", ffn_rows as u64, c.n_ff)?,
            feature_parts,
            features,
            out: buf("states", main, c.text_hidden)?,
        })
    }

    /// Bytes of every buffer (the step uniform aside).
    fn bytes(&self) -> u64 {
        let whole = [
            &self.patches,
            &self.emb,
            &self.ratio_id,
            &self.pos_ids,
            &self.pre_tile,
            &self.post_tile,
            &self.tile_pos,
            &self.pos,
            &self.x,
            &self.h,
            &self.tmp,
            &self.q,
            &self.k,
            &self.v,
            &self.attn,
            &self.up,
            &self.out,
        ];
        let sizes = whole.into_iter().chain(&self.pixels).chain(&self.features).map(Buffer::size);
        sizes.sum()
    }
}
