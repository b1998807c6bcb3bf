//! The memory plan of a Llama 3.2 Vision (`mllama`) model: one GGUF view holds the text
//! decoder, the vision encoder and the projector (a Hugging Face folder maps to it), so the
//! plan splits its tensors, and adds what only this family allocates: the decoder's extra
//! scratch rows, the per-context cross-attention store and the encoder's scratch.
//!
//! Mirrors `model::families::mllama` (`Mllama::scratch`, `CrossStore::new`) and
//! `model::vision::mllama` (`MllamaVisionWeights::load_from`, `Scratch::new`).

use crate::gguf::Metadata;
use crate::model::families::mllama::MllamaConfig;
use crate::model::vision::mllama::MllamaVisionConfig;
use crate::model::ModelError;

use super::PlanLimits;

/// Whether a tensor of the mllama view belongs to the vision encoder or projector.
pub fn is_vision_tensor(name: &str) -> bool {
    name.starts_with("v.") || name.starts_with("mm.")
}

/// The encoder's tables, uploaded in their file type whatever the load-time quantization
/// (`WeightLoader::reshaped`): the patch embedding and the position / aspect-ratio tables.
pub fn is_kept_table(name: &str) -> bool {
    matches!(
        name,
        "v.patch_embd.weight"
            | "v.position_embd.weight"
            | "v.tile_position_embd.weight"
            | "v.pre_tile_position_embd.weight"
            | "v.post_tile_position_embd.weight"
    )
}

/// The scratch rows a Mllama step holds beyond the Llama family's (`Mllama::scratch`): the
/// cross layers' raw queries, their MLP output and the MLP row mask, per chunk token.
pub fn extra_step_bytes(cfg: &MllamaConfig, chunk: u64) -> u64 {
    let t = &cfg.llama.text;
    4 * chunk * (t.q_dim() as u64 + t.n_embd as u64 + 1)
}

/// The cross-attention store of one image (`CrossStore::new` for `max_tiles` tiles): each
/// cross layer's f32 keys and values of the image's `max_tiles * tile_keys` states, and the
/// step's mask rows (`[chunk][tiles]` u32). The fill's temporary (one layer's raw keys) is
/// freed with it.
pub fn cross_store_bytes(cfg: &MllamaConfig, chunk: u64) -> u64 {
    let keys = cfg.max_tiles as u64 * cfg.tile_keys as u64;
    let per_layer = 2 * 4 * keys * cfg.llama.text.kv_dim() as u64;
    cfg.cross_layers.len() as u64 * per_layer + 4 * chunk * cfg.max_tiles as u64
}

/// The encoder's buffers for one image (`Scratch::new`: every image runs `max_tiles` tiles),
/// its output states included; each checked against the binding limit. The features are
/// split into row parts by the binding limit as the encoder splits them
/// ([`MllamaVisionConfig::feature_parts`]): together they are the whole features' bytes.
pub fn vision_scratch(md: &Metadata, limits: PlanLimits) -> Result<u64, ModelError> {
    let c = MllamaVisionConfig::from_metadata(md)?;
    let f32s = |rows: u64, cols: u32| 4 * rows * cols as u64;
    let n = c.pass_rows() as u64;
    let (d, tok, main, tiles) = (c.hidden, c.tokens() as u64, c.state_rows() as u64, c.max_tiles as u64);
    let limit = limits.part_limit();
    let ffn_rows = c.ffn_chunk_rows(limit) as u64;
    let feature_part = f32s(c.feature_part_rows(limit) as u64, c.output_dim);
    let buffers = [
        ("tile pixels", tiles * f32s(3 * c.image_size as u64, c.image_size)),
        ("patches", f32s(c.patches() as u64, c.patch_dim())),
        ("patch embeddings", f32s(tiles * c.patches() as u64, d)),
        ("aspect-ratio and position ids", 4 + 4 * tok),
        ("tile embeddings", 2 * f32s(tiles, d)),
        ("tile position embeddings", f32s(main, d)),
        ("position embeddings", f32s(tok, d)),
        ("activations", 7 * f32s(n, d)),
        ("MLP chunk", f32s(ffn_rows, c.n_ff)),
        ("features", f32s(main, c.output_dim)),
        ("states", f32s(main, c.text_hidden)),
    ];
    let single = [
        ("feature part", feature_part),
        ("states", f32s(main, c.text_hidden)),
        ("activations", f32s(n, d)),
        ("tile position embeddings", f32s(main, d)),
    ];
    if let Some(&(what, bytes)) = single.iter().find(|(_, b)| *b > limit) {
        return Err(ModelError::BufferTooLarge {
            what: format!("the Mllama vision {what} of {} tiles", c.max_tiles),
            bytes,
            limit,
        });
    }
    Ok(buffers.iter().map(|(_, b)| b).sum())
}
