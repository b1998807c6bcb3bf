"""An independent float64 numpy forward of a Hugging Face Mllama folder (Llama 3.2 Vision),
written from docs/MODELS.md's op sequence. make_mllama_models.py runs it on every case and
records how far it is from transformers, so the documented math is checked end to end.

Not a script by itself; imported by make_mllama_models.py.
"""

from __future__ import annotations

import json
from math import erf
from pathlib import Path

import numpy as np

F32_MIN = float(np.finfo(np.float32).min)


def load_weights(folder: Path) -> dict:
    """Every tensor of the folder's safetensors files as float64, by stored name."""
    from safetensors import safe_open

    weights = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as g:
            for k in g.keys():
                weights[k] = g.get_tensor(k).float().numpy().astype(np.float64)
    return weights


def _ln(x, w, b, eps=1e-5):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * w + b


def _rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


_gelu = np.vectorize(lambda x: 0.5 * x * (1 + erf(x / np.sqrt(2))))


def _softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _attend(q, k, v, mask):
    """q [n, H, hd], k / v [m, KV, hd] (GQA: query head h reads KV head h // (H / KV))."""
    rep = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, rep, 1), np.repeat(v, rep, 1)
    s = np.einsum("nhd,mhd->hnm", q, k) / np.sqrt(q.shape[-1]) + mask
    return np.einsum("hnm,mhd->nhd", _softmax(s), v).reshape(q.shape[0], -1)


def _vision_layer(W, p, x, heads, mask, gated):
    n, d = x.shape
    h = _ln(x, W[p + "input_layernorm.weight"], W[p + "input_layernorm.bias"])
    q, k, v = ((h @ W[p + f"self_attn.{t}_proj.weight"].T).reshape(n, heads, d // heads) for t in "qkv")
    a = _attend(q, k, v, mask) @ W[p + "self_attn.o_proj.weight"].T
    x = x + (np.tanh(W[p + "gate_attn"]) * a if gated else a)
    h = _ln(x, W[p + "post_attention_layernorm.weight"], W[p + "post_attention_layernorm.bias"])
    m = _gelu(h @ W[p + "mlp.fc1.weight"].T + W[p + "mlp.fc1.bias"]) @ W[p + "mlp.fc2.weight"].T
    m = m + W[p + "mlp.fc2.bias"]
    return x + (np.tanh(W[p + "gate_ffn"]) * m if gated else m)


def vision_states(W, vc: dict, tiles: np.ndarray, aspect_ratio_id: int) -> np.ndarray:
    """Cross-attention states [max_tiles * (patches + 1), text hidden] of one image whose
    `tiles` are [num_tiles, 3, T, T] (the processor's tiles without its zero padding tiles)."""
    d, heads, t, p, mt = (vc["hidden_size"], vc["attention_heads"], vc["image_size"], vc["patch_size"],
                          vc["max_num_tiles"])
    g = t // p
    n_tok = g * g + 1
    length = n_tok + (8 - n_tok % 8) % 8
    nt, a = tiles.shape[0], aspect_ratio_id
    px = np.zeros((mt, 3, t, t))
    px[:nt] = tiles
    v = "vision_model."
    patches = px.reshape(mt, 3, g, p, g, p).transpose(0, 2, 4, 1, 3, 5).reshape(mt, g * g, -1)
    x = patches @ W[v + "patch_embedding.weight"].reshape(d, -1).T
    x = x + np.tanh(W[v + "pre_tile_positional_embedding.gate"]) * \
        W[v + "pre_tile_positional_embedding.embedding.weight"][a].reshape(mt, 1, d)
    x = np.concatenate([np.broadcast_to(W[v + "class_embedding"], (mt, 1, d)), x], 1)
    gate = np.tanh(W[v + "gated_positional_embedding.gate"])
    x = x + (1 - gate) * W[v + "gated_positional_embedding.embedding"] + \
        gate * W[v + "gated_positional_embedding.tile_embedding.weight"][a].reshape(mt, n_tok, d)
    x = _ln(x, W[v + "layernorm_pre.weight"], W[v + "layernorm_pre.bias"])
    x = np.concatenate([x, np.zeros((mt, length - n_tok, d))], 1).reshape(mt * length, d)
    valid = np.zeros((mt, length), bool)
    valid[:nt, :n_tok] = True
    invalid = ~valid.reshape(-1)
    mask = np.where(invalid[:, None] & invalid[None, :], F32_MIN, 0.0)[None]
    kept = []
    for i in range(vc["num_hidden_layers"]):
        x = _vision_layer(W, f"{v}transformer.layers.{i}.", x, heads, mask, False)
        kept.append(x)
    x = _ln(x, W[v + "layernorm_post.weight"], W[v + "layernorm_post.bias"]).reshape(mt, length, d)
    x = x + np.tanh(W[v + "post_tile_positional_embedding.gate"]) * \
        W[v + "post_tile_positional_embedding.embedding.weight"][a].reshape(mt, 1, d)
    x = x.reshape(mt * length, d)
    for i in range(vc["num_global_layers"]):
        x = _vision_layer(W, f"{v}global_transformer.layers.{i}.", x, heads, mask, True)
    x = x.reshape(mt, length, d)[:, :n_tok]
    # Intermediate outputs interleaved per channel: feature d + c * K + j = layer j's channel c.
    inter = np.stack([kept[j] for j in vc["intermediate_layers_indices"]], -1).reshape(mt, length, -1)
    feats = np.concatenate([x, inter[:, :n_tok]], -1).reshape(mt * n_tok, -1)
    return feats @ W["multi_modal_projector.weight"].T + W["multi_modal_projector.bias"]


def _llama3_inv_freq(tc: dict, hd: int) -> np.ndarray:
    r = tc["rope_parameters"]
    inv = 1.0 / (r["rope_theta"] ** (np.arange(0, hd, 2) / hd))
    orig, lo_f, hi_f = r["original_max_position_embeddings"], r["low_freq_factor"], r["high_freq_factor"]
    wavelen = 2 * np.pi / inv
    smooth = (orig / wavelen - lo_f) / (hi_f - lo_f)
    mid = (wavelen <= orig / lo_f) & (wavelen >= orig / hi_f)
    out = np.where(wavelen > orig / lo_f, inv / r["factor"], inv)
    return np.where(mid, (1 - smooth) * inv / r["factor"] + smooth * inv, out)


def _rope(x, pos, inv):
    """Rotate-half RoPE on x [n, heads, hd]."""
    f = pos[:, None] * inv[None]
    e = np.concatenate([f, f], -1)
    half = x.shape[-1] // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * np.cos(e)[:, None] + rot * np.sin(e)[:, None]


def _mlp(W, p, h):
    gate = h @ W[p + "mlp.gate_proj.weight"].T
    return (gate / (1 + np.exp(-gate)) * (h @ W[p + "mlp.up_proj.weight"].T)) @ W[p + "mlp.down_proj.weight"].T


def text_logits(W, tc: dict, n_patches: int, ids: list[int], states: np.ndarray | None,
                cross_mask: np.ndarray | None) -> np.ndarray:
    """Logits [n, vocab] of a prompt from position 0. `states` [tiles * n_patches, hidden] and
    `cross_mask` [n, tiles] (one image) or None for a text-only prompt (cross layers skipped)."""
    heads, kv, d, eps = (tc["num_attention_heads"], tc["num_key_value_heads"], tc["hidden_size"],
                         tc["rms_norm_eps"])
    hd = d // heads
    n = len(ids)
    pos = np.arange(n, dtype=np.float64)
    inv = _llama3_inv_freq(tc, hd)
    causal = np.where(np.arange(n)[None] > np.arange(n)[:, None], -np.inf, 0.0)[None]
    x = W["language_model.model.embed_tokens.weight"][np.array(ids)]
    if states is not None:
        allowed = np.repeat(cross_mask, n_patches, 1).astype(bool)
        row = allowed.any(1)
        # A row with no allowed tile is left unmasked (it attends to every vision token).
        xmask = np.where(allowed | ~row[:, None], 0.0, F32_MIN)[None]
    for i in range(tc["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}."
        h = _rms(x, W[p + "input_layernorm.weight"], eps)
        if i in tc["cross_attention_layers"]:
            if states is None:
                continue
            q = _rms((h @ W[p + "cross_attn.q_proj.weight"].T).reshape(n, heads, hd), W[p + "cross_attn.q_norm.weight"], eps)
            k = _rms((states @ W[p + "cross_attn.k_proj.weight"].T).reshape(-1, kv, hd), W[p + "cross_attn.k_norm.weight"], eps)
            v = (states @ W[p + "cross_attn.v_proj.weight"].T).reshape(-1, kv, hd)
            x = x + np.tanh(W[p + "cross_attn_attn_gate"]) * (_attend(q, k, v, xmask) @ W[p + "cross_attn.o_proj.weight"].T)
            m = _mlp(W, p, _rms(x, W[p + "post_attention_layernorm.weight"], eps))
            x = x + np.tanh(W[p + "cross_attn_mlp_gate"]) * row[:, None] * m
        else:
            q = _rope((h @ W[p + "self_attn.q_proj.weight"].T).reshape(n, heads, hd), pos, inv)
            k = _rope((h @ W[p + "self_attn.k_proj.weight"].T).reshape(n, kv, hd), pos, inv)
            v = (h @ W[p + "self_attn.v_proj.weight"].T).reshape(n, kv, hd)
            x = x + _attend(q, k, v, causal) @ W[p + "self_attn.o_proj.weight"].T
            x = x + _mlp(W, p, _rms(x, W[p + "post_attention_layernorm.weight"], eps))
    x = _rms(x, W["language_model.model.norm.weight"], eps)
    return x @ W["language_model.lm_head.weight"].T


def check_case(folder: Path, case: dict) -> dict:
    """Differences of the numpy forward from the case's transformers references."""
    cfg = json.loads((folder / "config.json").read_text())
    W = load_weights(folder)
    vc, tc = cfg["vision_config"], cfg["text_config"]
    n_patches = (vc["image_size"] // vc["patch_size"]) ** 2 + 1
    out = {}
    states = mask = None
    if case["images"]:
        tiles = np.load(folder / case["pixel_values"])[0].astype(np.float64)
        states = vision_states(W, vc, tiles, case["aspect_ratio_ids"][0])
        want = np.load(folder / case["cross_attention_states"])
        out["cross_attention_states_max_abs_diff"] = float(np.abs(states - want).max())
        mask = np.load(folder / case["cross_attention_mask"])[:, 0, :]
    logits = text_logits(W, tc, n_patches, case["tokens"], states, mask)
    want = np.load(folder / case["logits"])
    out["logits_rel_l2"] = float(np.linalg.norm(logits - want) / np.linalg.norm(want))
    out["argmax_equal"] = bool((logits.argmax(-1) == np.array(case["argmax"])).all())
    return out
