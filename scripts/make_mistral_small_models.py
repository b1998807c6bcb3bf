"""Make the tiny Mistral-Small-3.1-shaped fixtures: one random model, both text archs.

Writes tests/fixtures/tiny_mistral_small_mistral3/ and tests/fixtures/tiny_mistral_small_llama/:

  tiny_mistral_small_mistral3  Mistral3ForConditionalGeneration whose text_config is a
                               MistralConfig (model_type "mistral"), as Mistral Small 3.1 /
                               3.2 24B: RoPE theta 1e9 without YaRN, explicit head_dim (16
                               with hidden 48 and 4 heads: 48/4 = 12, as the 24B has 128
                               with 5120/32 = 160), GQA, untied output, no sliding window.
                               Pixtral vision (SiLU, patch 14, merge 2, [IMG_BREAK]/[IMG_END])
                               at vision hidden 32. llama.cpp's converter writes the text as
                               arch `mistral3` (no YaRN keys, no temperature scale) and the
                               vision tower + projector as a `pixtral` mmproj. BF16.
  tiny_mistral_small_llama     The same text weights saved as MistralForCausalLM, which the
                               converter writes as arch `llama` (how older Mistral Small GGUFs
                               were published). Text cases only; its image case is the
                               mistral3 folder's (same mmproj, same reference logits: the
                               references of the two archs are the same numbers).

Cases: text logits at position 0 and at position 30000 (theta 1e9 turns the low frequencies
by a few radians only there), one image case; references from transformers in float32.
Helpers (random weights, converter, vision references) come from make_tiny_models.py.

Run (see scripts/README.md for the venv):
    /work/pyref/bin/python scripts/make_mistral_small_models.py
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FIXTURES, WORK, convert_hf_to_gguf, gguf_metadata, gguf_tensors, write_json  # noqa: E402
from make_tiny_models import (  # noqa: E402
    COMMON_NOTES, IMAGE_TOKENS, MAX_EDGE, MERGE, PATCH, QK_NOTE, SEED, interesting_keys,
    logits_for, make_fixture, save_hf, spm_tokenizer,
)

MISTRAL3 = "tiny_mistral_small_mistral3"
LLAMA = "tiny_mistral_small_llama"
# Mistral Small 3.1 24B's text config at tiny size (real: hidden 5120, 40 layers, 32 heads,
# 8 KV heads, head_dim 128, FFN 32768, vocab 131072, rms eps 1e-5, theta 1e9, context 131072).
TEXT = dict(hidden_size=48, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
            max_position_embeddings=131072, sliding_window=None,
            rope_parameters={"rope_type": "default", "rope_theta": 1e9})
# Its vision config (real: hidden 1024, 24 layers, 16 heads, FFN 4096) at tiny size.
VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2)
VOCAB = 400


def build_mistral_small(vocab_size: int, image_token_id: int):
    """A random Mistral3ForConditionalGeneration with a MistralConfig text model."""
    from transformers import (Mistral3Config, Mistral3ForConditionalGeneration, MistralConfig,
                              PixtralVisionConfig)

    text_config = MistralConfig(vocab_size=vocab_size, tie_word_embeddings=False,
                                bos_token_id=1, eos_token_id=2, **TEXT)
    vision_config = PixtralVisionConfig(image_size=MAX_EDGE, patch_size=PATCH, hidden_act="silu",
                                        **VISION)
    config = Mistral3Config(
        vision_config=vision_config, text_config=text_config, image_token_index=image_token_id,
        spatial_merge_size=MERGE, projector_hidden_act="gelu", multimodal_projector_bias=False,
        tie_word_embeddings=False,
    )
    assert config.text_config.model_type == "mistral", config.text_config.model_type
    torch.manual_seed(SEED)
    return Mistral3ForConditionalGeneration(config)


def text_only(vlm):
    """MistralForCausalLM holding the language model and head of `vlm` (same tensors)."""
    from transformers import MistralForCausalLM

    lm = MistralForCausalLM(vlm.config.text_config)
    state = {f"model.{k}": v for k, v in vlm.model.language_model.state_dict().items()}
    state["lm_head.weight"] = vlm.lm_head.weight
    missing, unexpected = lm.load_state_dict(state, strict=True)
    assert not missing and not unexpected, (missing, unexpected)
    return lm.eval()


NOTES = COMMON_NOTES + (
    " Mistral Small 3.1 shape at tiny size: text hidden 48, 4 heads x head_dim 16 (explicit: "
    "48/4 = 12), 2 KV heads, 2 layers, FFN 160, untied output, RoPE theta 1e9 (no YaRN, no "
    "query scaling, no sliding window), rms eps 1e-5; SentencePiece BPE vocab 400 "
    "(scripts/spm_corpus.py) + [IMG] [IMG_BREAK] [IMG_END] as added special tokens 400..402."
)


def tiny_mistral_small_mistral3(tok, spm_model: Path, ids: list[int]) -> None:
    text = tok.encode("The quick brown fox jumps over the lazy dog.", add_special_tokens=True)
    far = tok.encode("def main():\n\treturn 0", add_special_tokens=False)
    cases = [
        {"name": "pos0", "tokens": text[:12], "pos_offset": 0},
        {"name": "pos30000", "tokens": far[:6], "pos_offset": 30000},
    ]
    notes = NOTES + (
        " Mistral3ForConditionalGeneration with a MistralConfig text_config; the converter "
        "writes arch mistral3 without rope.scaling.* and attention.temperature_scale keys. "
        "mmproj.gguf: pixtral projector, vision hidden 32, 2 heads x 16, 3 layers (the "
        "converter maps mm.2 only with at least 3 vision layers), FFN 48, BF16 (patch_embd, patch_merger and norms F32: the converter forces them)."
    )
    vision = {
        "mmproj_outtype": "bf16",
        "images": {"img_56x28.png": (56, 28, 11)},
        "image_cases": [{"name": "img_56x28", "text": "<s>Describe[IMG] briefly.",
                         "images": ["img_56x28.png"]}],
    }
    model = build_mistral_small(len(tok), ids[0])
    make_fixture(MISTRAL3, "mistral3", model, tok, "bf16", cases, notes,
                 spm_model=spm_model, vision=vision)


def tiny_mistral_small_llama(tok, spm_model: Path) -> None:
    """The mistral3 fixture's text model converted through MistralForCausalLM (arch llama)."""
    from transformers import AutoModelForImageTextToText

    src = FIXTURES / MISTRAL3
    out = FIXTURES / LLAMA
    hf_dir = WORK / LLAMA / "hf"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    vlm = AutoModelForImageTextToText.from_pretrained(
        WORK / MISTRAL3 / "hf", dtype=torch.float32, attn_implementation="eager").eval()
    lm = text_only(vlm)
    save_hf(lm, tok, hf_dir, spm_model=spm_model)
    convert_hf_to_gguf(hf_dir, out / "model.gguf", "bf16")

    # Same tensors, names, types and data as the mistral3 file: only metadata differs.
    from gguf import GGUFReader

    a, b = GGUFReader(str(src / "model.gguf")), GGUFReader(str(out / "model.gguf"))
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    for ta, tb in zip(a.tensors, b.tensors):
        assert ta.tensor_type == tb.tensor_type and np.array_equal(ta.data, tb.data), ta.name

    import json

    ref = json.loads((src / "cases.json").read_text())
    cases = []
    for case in ref["cases"]:
        logits = logits_for(lm, case["tokens"], case["pos_offset"])
        want = np.load(src / case["logits"])
        assert np.array_equal(logits, want), case["name"]  # the same modules, the same numbers
        cases.append(dict(case, logits=f"../{MISTRAL3}/{case['logits']}"))
    meta_a = interesting_keys(gguf_metadata(src / "model.gguf"))
    meta_b = interesting_keys(gguf_metadata(out / "model.gguf"))
    strip = lambda k: k.split(".", 1)[1] if k.startswith(("mistral3.", "llama.")) else k  # noqa: E731
    doc = {
        "model": "model.gguf",
        "arch": meta_b["general.architecture"],
        "hf_class": type(lm).__name__,
        "outtype": "bf16",
        "cases": cases,
        "vision_from": MISTRAL3,
        "gguf_metadata": meta_b,
        "metadata_vs_mistral3": {
            "only_here": sorted({strip(k) for k in meta_b} - {strip(k) for k in meta_a}),
            "only_mistral3": sorted({strip(k) for k in meta_a} - {strip(k) for k in meta_b}),
            "differing": sorted(strip(k) for k in meta_b if k.startswith("llama.")
                                and meta_a.get("mistral3." + strip(k)) != meta_b[k]),
        },
        "gguf_tensors": gguf_tensors(out / "model.gguf"),
        "notes": NOTES + (
            " The mistral3 fixture's language model and lm_head loaded into a MistralForCausalLM "
            "(model_type mistral) and converted: arch llama. Tensors are byte-identical to "
            "the mistral3 file's; text logits are the mistral3 folder's files (logits paths "
            "are relative to this folder), asserted bit-equal to MistralForCausalLM's. "
            "vision_from: run that folder's image_cases with this model.gguf and its mmproj."
        ) + QK_NOTE,
    }
    assert doc["arch"] == "llama", doc["arch"]
    write_json(out / "cases.json", doc)
    print(f"wrote {out}")


def main() -> None:
    tok, spm_model = spm_tokenizer(WORK / MISTRAL3, VOCAB, image_tokens=True)
    ids = tok.convert_tokens_to_ids(list(IMAGE_TOKENS))
    tiny_mistral_small_mistral3(tok, spm_model, ids)
    tiny_mistral_small_llama(tok, spm_model)


if __name__ == "__main__":
    main()
