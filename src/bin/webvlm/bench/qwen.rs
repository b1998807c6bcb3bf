//! The structural figures of a synthetic Qwen3.5 size, from its shapes alone (no GPU, no
//! weights): the layer mix, the bytes of its weights in the file, of the DeltaNet layers'
//! recurrent state and of the attention layers' KV cache at a 4k context, and its vision
//! encoder's weights. Printed before the model is built or run, so that every size gets them,
//! even one the kernels cannot run yet.

use serde_json::{json, Value};

use webvlm::model::synthetic::{Qwen35Shape, QwenVisionShape};

use super::Out;

/// The context of the KV figure.
pub const KV_CONTEXT: u64 = 4096;

/// Bytes per KV cache value: the context's default f16 cache.
const KV_ELEM: u64 = 2;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// Emits the `structure` line of `shape` (and notes it on stderr); returns it.
pub fn structure(out: &Out, label: &str, shape: &Qwen35Shape, vision: &QwenVisionShape) -> Value {
    let (recurrent, attention) = shape.layer_counts();
    let state = shape.recurrent_state_bytes();
    let kv_per_token = shape.kv_bytes(1, KV_ELEM);
    let kv = shape.kv_bytes(KV_CONTEXT, KV_ELEM);
    let v = vision;
    let vision_json = json!({
        "hidden": v.hidden, "n_layer": v.n_layer, "n_head": v.n_head, "head_dim": v.hidden / v.n_head,
        "n_ff": v.n_ff, "text_hidden": v.text_hidden, "weight_bytes": v.weight_bytes(),
    });
    out.note(&format!(
        "{label}: {} layers ({recurrent} Gated DeltaNet + {attention} gated attention), hidden {}, ffn {}, vocab {}{}; \
         {:.2} GB of weights in the file; recurrent state {:.2} MiB; KV cache {:.1} KiB per token = {:.1} MiB at {} tokens (f16); \
         vision encoder {} layers x {}, {:.1} MiB of F16 weights",
        shape.n_layer,
        shape.n_embd,
        shape.n_ff,
        shape.vocab,
        if shape.tied { ", tied LM head" } else { "" },
        shape.weight_bytes() as f64 / 1e9,
        mib(state),
        kv_per_token as f64 / 1024.0,
        mib(kv),
        KV_CONTEXT,
        v.n_layer,
        v.hidden,
        mib(v.weight_bytes())
    ));
    let v = json!({
        "kind": "structure", "model": label, "arch": "qwen35", "n_layer": shape.n_layer,
        "recurrent_layers": recurrent, "attention_layers": attention, "n_embd": shape.n_embd, "n_ff": shape.n_ff,
        "n_head": shape.n_head, "n_head_kv": shape.n_head_kv, "head_dim": shape.head_dim, "n_rot": shape.n_rot,
        "ssm_conv_kernel": shape.conv_kernel, "ssm_k_heads": shape.n_k_heads, "ssm_v_heads": shape.n_v_heads,
        "ssm_d_k": shape.d_k, "ssm_d_v": shape.d_v, "vocab": shape.vocab, "tied_embeddings": shape.tied,
        "weight_bytes": shape.weight_bytes(), "recurrent_state_bytes": state, "kv_dtype": "f16",
        "kv_bytes_per_token": kv_per_token, "kv_context": KV_CONTEXT, "kv_bytes": kv,
        "state_bytes_at_context": state + kv, "vision": vision_json,
    });
    out.emit(v.clone());
    v
}
