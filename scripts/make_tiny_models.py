"""Make the tiny random-weight GGUF models and their reference logits.

Writes, for each model, tests/fixtures/<name>/{model.gguf, cases.json, *.npy}:

  tiny_mistral3_tekken  Mistral3ForConditionalGeneration (Ministral 3 text + Pixtral vision),
                        real Tekken tokenizer (vocab 131072), YaRN + llama-4 query scaling
                        exactly as Ministral 3 3B, F16 GGUF, plus mmproj.gguf (F16).
  tiny_mistral3_b       Ministral3ForCausalLM of another shape, untied output, SentencePiece
                        BPE tokenizer (vocab 1000), BF16 GGUF.
  tiny_llama_spm        LlamaForCausalLM, SentencePiece BPE tokenizer with byte_fallback
                        (vocab 800), rope theta 1e4, F32 GGUF.

Random weights are rounded through the GGUF storage dtype before saving, so the float32
reference logits computed by transformers are exact for the stored weights. The GGUF files
are written by llama.cpp's own convert_hf_to_gguf.py (llama-cpp-python 0.3.36 sdist).

Run (see scripts/README.md for the venv):
    /work/pyref/bin/python scripts/make_tiny_models.py [name ...]
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    FIXTURES, LLAMA_CPP, WORK, convert_hf_to_gguf, gguf_metadata, gguf_tensor,
    gguf_tensors, save_npy, write_json,
)
from spm_corpus import train_spm_bpe  # noqa: E402

SEED = 1234
MINISTRAL3_ROPE = {
    "rope_type": "yarn",
    "rope_theta": 1000000.0,
    "factor": 16.0,
    "original_max_position_embeddings": 16384,
    "max_position_embeddings": 262144,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
    "llama_4_scaling_beta": 0.1,
}
ROUND = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}
# The real Ministral 3 chat template that llama.cpp ships (see scripts/README.md).
MINISTRAL3_TEMPLATE = LLAMA_CPP / "models/templates/mistralai-Ministral-3-14B-Reasoning-2512.jinja"


# ----------------------------------------------------------------------------- weights

def randomize_(model: torch.nn.Module, outtype: str, std: float = 0.08) -> None:
    """Fill all weights with seeded random values, round them through the storage dtype.

    Matrices get N(0, std); 1-D tensors (norm weights) get 1 + N(0, 0.1) so that a kernel
    that ignores the norm weight is caught.
    """
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            value = 1.0 + 0.1 * noise if p.dim() == 1 else std * noise
            p.copy_(value.to(ROUND[outtype]).float())


def logits_for(model, tokens: list[int], pos_offset: int) -> np.ndarray:
    """float32 logits [n_tokens, vocab] for one sequence at explicit positions."""
    ids = torch.tensor([tokens], dtype=torch.long)
    pos = torch.arange(pos_offset, pos_offset + len(tokens), dtype=torch.long)[None]
    with torch.no_grad():
        out = model(input_ids=ids, position_ids=pos, use_cache=False)
    return out.logits[0].float().numpy()


def llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Row order llama.cpp's converter writes for attn_q/attn_k: within each head, rows of the
    first and second rotate-half halves are interleaved (GGML's 'normal' RoPE pairs)."""
    rows, cols = w.shape
    return w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def qk_layout(gguf_path: Path, gguf_name: str, hf_weight: torch.Tensor, n_head: int) -> str:
    """'permuted' if the GGUF tensor equals llama_permute(HF), 'same' if equal to HF."""
    got = gguf_tensor(gguf_path, gguf_name).reshape(hf_weight.shape)
    hf = hf_weight.detach().numpy()
    if np.array_equal(got, llama_permute(hf, n_head)):
        return "permuted"
    if np.array_equal(got, hf):
        return "same"
    return "different"


def rope_summary(model) -> dict:
    """transformers' text RoPE inverse frequencies and cos/sin scale (YaRN attention factor)."""
    rotary = next(m for n, m in model.named_modules()
                  if n.endswith("rotary_emb") and "vision" not in n)
    return {"inv_freq": rotary.inv_freq.float().tolist(),
            "attention_scaling": float(rotary.attention_scaling)}


def check_embedding(gguf_path: Path, hf_embed: torch.Tensor) -> float:
    """Max abs difference between the GGUF token_embd and the HF embedding."""
    got = gguf_tensor(gguf_path, "token_embd.weight").reshape(hf_embed.shape)
    return float(np.abs(got - hf_embed.numpy()).max())


# ----------------------------------------------------------------------------- tokenizers

def tekken_tokenizer():
    """The real Tekken tokenizer (mistral-common wheel) converted by transformers."""
    import mistral_common
    from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer

    path = Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"
    return convert_tekken_tokenizer(str(path), chat_template=MINISTRAL3_TEMPLATE.read_text())


def spm_tokenizer(work: Path, vocab_size: int):
    """A freshly trained SentencePiece BPE (byte_fallback) loaded as a transformers LlamaTokenizer."""
    from transformers import AutoTokenizer

    model_file = train_spm_bpe(work / "spm", vocab_size)
    tok_dir = work / "spm_tok"
    tok_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_file, tok_dir / "tokenizer.model")
    write_json(tok_dir / "tokenizer_config.json", {
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False, "legacy": False,
    })
    return AutoTokenizer.from_pretrained(tok_dir), model_file


# ----------------------------------------------------------------------------- models

def build_mistral3_tekken():
    from transformers import (Ministral3Config, Mistral3Config, Mistral3ForConditionalGeneration,
                              PixtralVisionConfig)

    text = Ministral3Config(
        vocab_size=131072, hidden_size=16, intermediate_size=72, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
        max_position_embeddings=262144, rope_parameters=dict(MINISTRAL3_ROPE),
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=11,
    )
    vision = PixtralVisionConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2,
        image_size=56, patch_size=14, hidden_act="silu",
    )
    config = Mistral3Config(
        vision_config=vision, text_config=text, image_token_index=10,
        spatial_merge_size=2, projector_hidden_act="gelu", multimodal_projector_bias=False,
        tie_word_embeddings=True,
    )
    torch.manual_seed(SEED)
    return Mistral3ForConditionalGeneration(config)


def build_ministral3_b(vocab_size: int):
    from transformers import Ministral3Config, Ministral3ForCausalLM

    config = Ministral3Config(
        vocab_size=vocab_size, hidden_size=96, intermediate_size=200, num_hidden_layers=3,
        num_attention_heads=6, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-5,
        max_position_embeddings=262144, rope_parameters=dict(MINISTRAL3_ROPE),
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=None,
    )
    torch.manual_seed(SEED)
    return Ministral3ForCausalLM(config)


def build_llama(vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=136, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
        max_position_embeddings=2048, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(SEED)
    return LlamaForCausalLM(config)


# ----------------------------------------------------------------------------- driver

def save_hf(model, tokenizer, hf_dir: Path, spm_model: Path | None = None, vision: bool = False):
    if hf_dir.exists():
        shutil.rmtree(hf_dir)
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    if spm_model is not None:
        shutil.copy(spm_model, hf_dir / "tokenizer.model")
    if vision:
        from transformers import PixtralImageProcessor

        PixtralImageProcessor(patch_size=14, size={"longest_edge": 1540}).save_pretrained(hf_dir)


def interesting_keys(meta: dict) -> dict:
    """Metadata worth recording in cases.json (everything but the big tokenizer arrays)."""
    skip = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
            "tokenizer.ggml.merges", "tokenizer.chat_template")
    return {k: v for k, v in meta.items() if k not in skip}


def make_fixture(name: str, arch: str, model, tokenizer, outtype: str, cases: list[dict],
                 notes: str, spm_model: Path | None = None, vision: bool = False) -> None:
    """Save, convert, compute references, write cases.json for one tiny model."""
    from transformers import AutoModelForImageTextToText, AutoModelForCausalLM

    work = WORK / name
    hf_dir = work / "hf"
    out = FIXTURES / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    randomize_(model, outtype)
    save_hf(model, tokenizer, hf_dir, spm_model=spm_model, vision=vision)

    convert_hf_to_gguf(hf_dir, out / "model.gguf", outtype)
    if vision:
        convert_hf_to_gguf(hf_dir, out / "mmproj.gguf", "f16", mmproj=True)

    loader = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    ref = loader.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
    embed = ref.get_input_embeddings().weight.detach()
    embd_err = check_embedding(out / "model.gguf", embed)
    assert embd_err == 0.0, f"token_embd differs from HF embedding by {embd_err}"

    params = dict(ref.named_parameters())
    text_cfg = ref.config.get_text_config()
    layout = {}
    for proj, n_head, tname in (("q_proj", text_cfg.num_attention_heads, "blk.0.attn_q.weight"),
                                ("k_proj", text_cfg.num_key_value_heads, "blk.0.attn_k.weight")):
        key = next(k for k in params if k.endswith(f"layers.0.self_attn.{proj}.weight")
                   and "vision" not in k)
        layout[tname] = qk_layout(out / "model.gguf", tname, params[key], n_head)
    if vision:
        vcfg = ref.config.vision_config
        for proj, tname in (("q_proj", "v.blk.0.attn_q.weight"), ("k_proj", "v.blk.0.attn_k.weight")):
            key = next(k for k in params if k.endswith(f"layers.0.attention.{proj}.weight"))
            layout[tname] = qk_layout(out / "mmproj.gguf", tname, params[key],
                                      vcfg.num_attention_heads)

    for case in cases:
        logits = logits_for(ref, case["tokens"], case["pos_offset"])
        case["logits"] = f"{case['name']}.npy"
        case["argmax"] = logits.argmax(-1).tolist()
        save_npy(out / case["logits"], logits.astype(np.float32))

    meta = gguf_metadata(out / "model.gguf")
    doc = {
        "model": "model.gguf",
        "arch": meta["general.architecture"],
        "hf_class": type(ref).__name__,
        "outtype": outtype,
        "cases": cases,
        "gguf_metadata": interesting_keys(meta),
        "gguf_tensors": gguf_tensors(out / "model.gguf"),
        "qk_layout_vs_hf": layout,
        "rope": rope_summary(ref),
        "notes": notes + QK_NOTE,
    }
    if vision:
        doc["mmproj"] = "mmproj.gguf"
        doc["mmproj_metadata"] = interesting_keys(gguf_metadata(out / "mmproj.gguf"))
        doc["mmproj_tensors"] = gguf_tensors(out / "mmproj.gguf")
    assert doc["arch"] == arch, doc["arch"]
    write_json(out / "cases.json", doc)
    print(f"wrote {out}")


COMMON_NOTES = (
    "Logits: float32 [n_tokens, vocab] from transformers (float32, CPU, eager attention) with "
    "position_ids = arange(pos_offset, pos_offset + n) and no earlier context (the sequence "
    "starts at pos_offset with an empty KV cache, causal mask within the case). Weights were "
    "rounded through the GGUF storage type before the reference was computed, so the logits "
    "are exact for the stored weights up to float32 accumulation order. 'argmax' is the "
    "per-position argmax of the logits."
)


QK_NOTE = (
    " qk_layout_vs_hf: 'permuted' means llama.cpp's converter reordered the rows of that "
    "tensor per head as w.reshape(n_head, 2, head_dim/2, in).swapaxes(1, 2): GGUF rows 2i and "
    "2i+1 of a head are HF rows i and i + head_dim/2, so RoPE must rotate adjacent pairs "
    "(GGML 'normal' mode) on the GGUF weights to equal HF's rotate-half on the HF weights."
)


def tiny_mistral3_tekken() -> None:
    tok = tekken_tokenizer()
    sentence = tok.encode("The capital of France is Paris, a city", add_special_tokens=False)
    far = tok.encode(" and the river Seine flows", add_special_tokens=False)
    # Few positions: each costs 0.5 MiB of float32 logits (vocab 131072).
    cases = [
        {"name": "pos0", "tokens": [tok.bos_token_id] + sentence[:4], "pos_offset": 0},
        {"name": "pos20000", "tokens": far[:3], "pos_offset": 20000},
        {"name": "pos40000", "tokens": far[:3], "pos_offset": 40000},
    ]
    notes = COMMON_NOTES + (
        " Ministral 3 rope_parameters exactly as the 3B model: YaRN (theta 1e6, factor 16, "
        "original context 16384, beta_fast 32, beta_slow 1, mscale = mscale_all_dim = 1, "
        "attention factor 1.0) and query scaling 1 + 0.1*ln(1 + floor(pos/16384)) after RoPE "
        "(GGUF mistral3.attention.temperature_scale). A sequence's first token "
        "attends only to itself, so its logits do not depend on position; RoPE is relative, "
        "so pos20000 and pos40000 differ only through the query scaling (and float32 angle "
        "rounding: transformers computes pos * inv_freq in float32). Hidden 16, 4 query "
        "heads x head_dim 16 (q dim 64 != hidden), 2 KV heads, 2 layers, FFN 72. Tied embeddings (no output.weight). "
        "Tokenizer: Tekken tekken_240911.json from mistral-common, converted by "
        "transformers.integrations.mistral.tokenizer.convert_tekken_tokenizer; chat template: "
        "llama.cpp's models/templates/mistralai-Ministral-3-14B-Reasoning-2512.jinja. "
        "mmproj.gguf: the Pixtral vision tower (hidden 32, 3 layers, 2 heads, patch 14, SiLU) "
        "and projector of the same random model, F16 (no vision references yet)."
    )
    make_fixture("tiny_mistral3_tekken", "mistral3", build_mistral3_tekken(), tok, "f16",
                 cases, notes, vision=True)


def tiny_mistral3_b() -> None:
    tok, spm_model = spm_tokenizer(WORK / "tiny_mistral3_b", 1000)
    ids = tok.encode("The quick brown fox jumps over the lazy dog. Paris is the capital of France.",
                     add_special_tokens=True)
    far = tok.encode("def main():\n\treturn 0", add_special_tokens=False)
    cases = [
        {"name": "pos0", "tokens": ids[:24], "pos_offset": 0},
        {"name": "pos30000", "tokens": far[:6], "pos_offset": 30000},
    ]
    notes = COMMON_NOTES + (
        " Ministral3ForCausalLM (arch mistral3), hidden 96, 6 heads x head_dim 32 (q dim 192 != "
        "hidden), 2 KV heads, 3 layers, FFN 200, untied output.weight, same YaRN + query "
        "scaling as Ministral 3 3B. Tokenizer: SentencePiece BPE with byte_fallback, vocab "
        "1000, trained by scripts/spm_corpus.py (a byte-level BPE trained with `tokenizers` "
        "cannot be converted: llama.cpp's converter only accepts BPE pre-tokenizers whose "
        "hash it knows)."
    )
    make_fixture("tiny_mistral3_b", "mistral3", build_ministral3_b(len(tok)), tok, "bf16",
                 cases, notes, spm_model=spm_model)


def tiny_llama_spm() -> None:
    tok, spm_model = spm_tokenizer(WORK / "tiny_llama_spm", 800)
    ids = tok.encode("Hello world! The quick brown fox jumps over the lazy dog; café 你好.",
                     add_special_tokens=True)
    cases = [{"name": "pos0", "tokens": ids[:24], "pos_offset": 0}]
    notes = COMMON_NOTES + (
        " LlamaForCausalLM (arch llama), hidden 64, 4 heads x 16, 2 KV heads, 2 layers, FFN "
        "136, rope theta 1e4 without scaling, untied output. Tokenizer: SentencePiece BPE "
        "with byte_fallback, vocab 800 (scripts/spm_corpus.py), converter writes "
        "tokenizer.ggml.model = llama with scores."
    )
    make_fixture("tiny_llama_spm", "llama", build_llama(len(tok)), tok, "f32", cases, notes,
                 spm_model=spm_model)


MODELS = {
    "tiny_mistral3_tekken": tiny_mistral3_tekken,
    "tiny_mistral3_b": tiny_mistral3_b,
    "tiny_llama_spm": tiny_llama_spm,
}

if __name__ == "__main__":
    for model_name in sys.argv[1:] or list(MODELS):
        MODELS[model_name]()
