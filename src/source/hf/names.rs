//! Hugging Face tensor names → llama.cpp's GGUF names, and the row permutation the converter
//! applies to q and k.
//!
//! Reference: llama.cpp `gguf-py/gguf/tensor_mapping.py` (the name table) and
//! `conversion/llama.py` (`LlamaModel.permute`, applied in `modify_tensors`).

/// How a tensor's rows are reordered on the way to GGUF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permute {
    /// Kept as stored.
    None,
    /// `q_proj`: per query head, from rotate-half to adjacent-pair order.
    Query,
    /// `k_proj`: the same per key/value head.
    Key,
}

/// Tensors outside the blocks (Llama family).
const GLOBAL: &[(&str, &str)] = &[
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

/// Tensors of block N: `model.layers.N.<hf>` → `blk.N.<gguf>` (Llama family).
const BLOCK: &[(&str, &str, Permute)] = &[
    ("input_layernorm.weight", "attn_norm.weight", Permute::None),
    ("self_attn.q_proj.weight", "attn_q.weight", Permute::Query),
    ("self_attn.k_proj.weight", "attn_k.weight", Permute::Key),
    ("self_attn.v_proj.weight", "attn_v.weight", Permute::None),
    ("self_attn.o_proj.weight", "attn_output.weight", Permute::None),
    ("post_attention_layernorm.weight", "ffn_norm.weight", Permute::None),
    ("mlp.gate_proj.weight", "ffn_gate.weight", Permute::None),
    ("mlp.up_proj.weight", "ffn_up.weight", Permute::None),
    ("mlp.down_proj.weight", "ffn_down.weight", Permute::None),
];

/// Tensors the converter drops (transformers' cached RoPE table in older checkpoints).
const SKIPPED: &[&str] = &["rotary_emb.inv_freq"];

/// What becomes of one Hugging Face tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mapped {
    /// Stored under this GGUF name, rows permuted as said.
    To(String, Permute),
    /// Not part of the GGUF (the converter drops it too).
    Skipped,
}

/// The GGUF name of the Llama-family tensor `hf`, or `None` when it has none. Block indices
/// at or above `n_layer` have none.
pub fn gguf_name(hf: &str, n_layer: u32) -> Option<Mapped> {
    if SKIPPED.iter().any(|s| hf.ends_with(s)) {
        return Some(Mapped::Skipped);
    }
    if let Some(&(_, gguf)) = GLOBAL.iter().find(|(name, _)| *name == hf) {
        return Some(Mapped::To(gguf.to_string(), Permute::None));
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (index, suffix) = rest.split_once('.')?;
    let block: u32 = index.parse().ok().filter(|&b| b < n_layer && !index.starts_with('+'))?;
    let &(_, gguf, permute) = BLOCK.iter().find(|(name, _, _)| *name == suffix)?;
    Some(Mapped::To(format!("blk.{block}.{gguf}"), permute))
}

/// The rows of a `[rows][row_bytes]` matrix reordered as the converter's `permute`: within
/// each of `n_head` heads of `rows / n_head` rows, row `2j + t` of the result is row
/// `t * half + j` of the input (`half` = half the head's rows), turning transformers'
/// rotate-half layout into llama.cpp's adjacent pairs. The caller checked that `rows` is a
/// multiple of `2 * n_head` and `data.len() == rows * row_bytes`.
pub fn permute_rows(data: &[u8], n_head: usize, row_bytes: usize) -> Vec<u8> {
    let rows = data.len() / row_bytes;
    let head = rows / n_head;
    let half = head / 2;
    let mut out = Vec::with_capacity(data.len());
    for h in 0..n_head {
        for j in 0..half {
            for t in 0..2 {
                let src = (h * head + t * half + j) * row_bytes;
                out.extend_from_slice(&data[src..src + row_bytes]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let to = |s: &str, p| Some(Mapped::To(s.to_string(), p));
        assert_eq!(gguf_name("model.embed_tokens.weight", 2), to("token_embd.weight", Permute::None));
        assert_eq!(gguf_name("model.layers.1.self_attn.k_proj.weight", 2), to("blk.1.attn_k.weight", Permute::Key));
        assert_eq!(gguf_name("model.layers.0.mlp.down_proj.weight", 2), to("blk.0.ffn_down.weight", Permute::None));
        assert_eq!(gguf_name("model.layers.0.self_attn.rotary_emb.inv_freq", 2), Some(Mapped::Skipped));
        assert_eq!(gguf_name("model.layers.2.mlp.down_proj.weight", 2), None);
        assert_eq!(gguf_name("model.layers.x.mlp.down_proj.weight", 2), None);
        assert_eq!(gguf_name("model.layers.0.mlp.fc.weight", 2), None);
    }

    #[test]
    fn permutation_interleaves_halves_per_head() {
        // 2 heads of 4 rows, one byte per row: [a0 a1 b0 b1] -> [a0 b0 a1 b1].
        let rows: Vec<u8> = (0..8).collect();
        assert_eq!(permute_rows(&rows, 2, 1), [0, 2, 1, 3, 4, 6, 5, 7]);
        let wide: Vec<u8> = (0..8).flat_map(|r| [r, 10 + r]).collect();
        assert_eq!(permute_rows(&wide, 1, 2), [0, 10, 4, 14, 1, 11, 5, 15, 2, 12, 6, 16, 3, 13, 7, 17]);
    }
}
