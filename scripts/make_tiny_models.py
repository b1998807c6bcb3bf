"""Make the tiny random-weight GGUF models and their reference logits.

Writes, for each model, tests/fixtures/<name>/{model.gguf, cases.json, *.npy}, and for the
vision models also mmproj*.gguf, the test images (*.png) and the image references:

  tiny_mistral3_tekken  Mistral3ForConditionalGeneration (Ministral 3 text + Pixtral vision),
                        real Tekken tokenizer (vocab 131072), YaRN + llama-4 query scaling
                        exactly as Ministral 3 3B, F16 GGUF, mmproj.gguf F16 (vision hidden
                        32, 2 heads, 3 layers); one image case, two chat cases (rendered
                        prompt + processor token ids, no logits).
  tiny_mistral3_b       Mistral3ForConditionalGeneration, text of another shape (head_dim 32,
                        untied output), SentencePiece BPE vocab 1000 + [IMG] [IMG_BREAK]
                        [IMG_END] as added special tokens (ids 1000..1002), BF16 GGUF,
                        mmproj.gguf BF16 (vision hidden 48, 2 heads x 24, 3 layers); one
                        single-image case and one two-image case.
  tiny_mistral3_c       Mistral3ForConditionalGeneration, tied embeddings, SentencePiece BPE
                        vocab 800 + the 3 image tokens, F32 GGUF, mmproj.gguf F32 and
                        mmproj_q8_0.gguf (Q8_0, references computed from its dequantized
                        weights); extreme aspect ratio images (28x140, 140x28).
  tiny_llama_spm        LlamaForCausalLM, SentencePiece BPE tokenizer with byte_fallback
                        (vocab 800), rope theta 1e4, F32 GGUF.

Random weights are rounded through the GGUF storage dtype before saving, so the float32
reference logits computed by transformers are exact for the stored weights. The GGUF files
are written by llama.cpp's own convert_hf_to_gguf.py (llama-cpp-python 0.3.36 sdist).

Image references: the images are generated deterministically (smooth gradients + noise,
sides multiples of 28, so preprocessing needs no resize); token ids come from transformers'
PixtralProcessor (PIL image processor, patch 14, spatial merge 2, longest_edge 1540) and are
asserted to follow the layout ([IMG] x cols + [IMG_BREAK]) x rows with the last token
[IMG_END]. PixtralProcessor is declared to need torchvision although only the PIL image
processor is used; the venv has no torchvision, so this script appends
WEBVLM_TORCHVISION_SITE (default /work/pyref/work/torchvision_site, a
`pip install --no-deps --target` of torchvision 0.29.2) to sys.path when present.

Run (see scripts/README.md for the venv):
    /work/pyref/bin/python scripts/make_tiny_models.py [name ...]
"""

from __future__ import annotations

import json
import os
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

# PixtralProcessor declares a torchvision requirement (it only needs it for the torchvision
# image processor, which is not used here); see the module docstring.
TORCHVISION_SITE = Path(os.environ.get("WEBVLM_TORCHVISION_SITE", "/work/pyref/work/torchvision_site"))
if TORCHVISION_SITE.is_dir():
    sys.path.append(str(TORCHVISION_SITE))
torch.set_num_threads(1)

SEED = 1234
IMAGE_TOKENS = ("[IMG]", "[IMG_BREAK]", "[IMG_END]")
PATCH = 14
MERGE = 2
MAX_EDGE = 1540
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


def spm_tokenizer(work: Path, vocab_size: int, image_tokens: bool = False):
    """A freshly trained SentencePiece BPE (byte_fallback) loaded as a transformers LlamaTokenizer.

    With image_tokens, [IMG], [IMG_BREAK], [IMG_END] are appended as added special tokens
    (ids vocab_size, +1, +2); llama.cpp's converter takes them from tokenizer_config.json's
    added_tokens_decoder (token type CONTROL).
    """
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    model_file = train_spm_bpe(work / "spm", vocab_size)
    tok_dir = work / "spm_tok"
    tok_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_file, tok_dir / "tokenizer.model")
    write_json(tok_dir / "tokenizer_config.json", {
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False, "legacy": False,
    })
    tok = AutoTokenizer.from_pretrained(tok_dir)
    if image_tokens:
        tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in IMAGE_TOKENS],
                       special_tokens=True)
        ids = tok.convert_tokens_to_ids(list(IMAGE_TOKENS))
        assert ids == [vocab_size, vocab_size + 1, vocab_size + 2], ids
    return tok, model_file


# ----------------------------------------------------------------------------- models

def build_mistral3(text: dict, vision: dict, image_token_id: int, tied: bool):
    """A random Mistral3ForConditionalGeneration: Ministral 3 text (YaRN as the 3B model) +
    Pixtral vision tower (SiLU, patch 14, image_size 1540) + projector (merge 2, GELU, no bias)."""
    from transformers import (Ministral3Config, Mistral3Config, Mistral3ForConditionalGeneration,
                              PixtralVisionConfig)

    text_config = Ministral3Config(
        rms_norm_eps=1e-5, max_position_embeddings=262144,
        rope_parameters=dict(MINISTRAL3_ROPE), tie_word_embeddings=tied, bos_token_id=1,
        eos_token_id=2, **text,
    )
    # image_size only bounds llama.cpp's 2D RoPE table (clip.vision.image_size / patch_size
    # patches per side); transformers 5.x uses the patch coordinates directly.
    vision_config = PixtralVisionConfig(image_size=MAX_EDGE, patch_size=PATCH, hidden_act="silu",
                                        **vision)
    config = Mistral3Config(
        vision_config=vision_config, text_config=text_config, image_token_index=image_token_id,
        spatial_merge_size=MERGE, projector_hidden_act="gelu", multimodal_projector_bias=False,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(SEED)
    return Mistral3ForConditionalGeneration(config)


def build_mistral3_tekken():
    return build_mistral3(
        dict(vocab_size=131072, hidden_size=16, intermediate_size=72, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16, pad_token_id=11),
        dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2),
        image_token_id=10, tied=True)


def build_mistral3_b(vocab_size: int, image_token_id: int):
    return build_mistral3(
        dict(vocab_size=vocab_size, hidden_size=96, intermediate_size=200, num_hidden_layers=3,
             num_attention_heads=6, num_key_value_heads=2, head_dim=32, pad_token_id=None),
        dict(hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=2),
        image_token_id=image_token_id, tied=False)


def build_mistral3_c(vocab_size: int, image_token_id: int):
    return build_mistral3(
        dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16, pad_token_id=None),
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4),
        image_token_id=image_token_id, tied=True)


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


# ----------------------------------------------------------------------------- vision

def make_image(path: Path, width: int, height: int, seed: int) -> None:
    """A deterministic RGB PNG: smooth gradients + stripes + mild noise (compresses well)."""
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


def pixtral_processor(tokenizer):
    """transformers' PixtralProcessor as Mistral 3 uses it (PIL image processor backend)."""
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil
    from transformers.models.pixtral.processing_pixtral import PixtralProcessor

    image_processor = PixtralImageProcessorPil(patch_size=PATCH, size={"longest_edge": MAX_EDGE})
    return PixtralProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH,
                            spatial_merge_size=MERGE, chat_template=tokenizer.chat_template)


def image_layout(height: int, width: int, ids: dict) -> list[int]:
    """([IMG] x cols + [IMG_BREAK]) x rows, last token replaced by [IMG_END]."""
    cols, rows = width // (PATCH * MERGE), height // (PATCH * MERGE)
    toks = ([ids["[IMG]"]] * cols + [ids["[IMG_BREAK]"]]) * rows
    toks[-1] = ids["[IMG_END]"]
    return toks


def check_layout(tokens: list[int], sizes: list[list[int]], ids: dict) -> None:
    """Each image's tokens appear, in order, exactly as image_layout; no other image tokens."""
    special = set(ids.values())
    pos = 0
    for h, w in sizes:
        lay = image_layout(h, w, ids)
        start = next(k for k in range(pos, len(tokens)) if tokens[k] in special)
        assert tokens[start:start + len(lay)] == lay, (tokens, h, w)
        pos = start + len(lay)
    assert not special & set(tokens[pos:]), tokens


def load_images(out: Path, files: list[str]):
    from PIL import Image

    return [Image.open(out / f).convert("RGB") for f in files]


def image_case_refs(ref, proc, out: Path, spec: dict, ids: dict, bos_id: int,
                    mmproj: str, suffix: str = "") -> dict:
    """Tokens (processor), pixel values, logits and projector features for one image case."""
    images = load_images(out, spec["images"])
    enc = proc(text=spec["text"], images=images, return_tensors="pt", add_special_tokens=False)
    tokens = enc["input_ids"][0].tolist()
    sizes = enc["image_sizes"].tolist()
    assert tokens[0] == bos_id and tokens[1] != bos_id, tokens[:3]
    assert [list(im.size[::-1]) for im in images] == sizes, sizes  # no resize happened
    check_layout(tokens, sizes, ids)
    pixel_values = enc["pixel_values"].float()
    pv_files = []
    for i, (file, (h, w)) in enumerate(zip(spec["images"], sizes)):
        pv = pixel_values[i, :, :h, :w].numpy()
        alone = proc.image_processor(images[i], patch_size=PATCH * MERGE,
                                     return_tensors="np")["pixel_values"][0]
        assert np.array_equal(pv, alone.astype(np.float32)), file
        pv_files.append(Path(file).stem + "_pixels.npy")
        save_npy(out / pv_files[-1], pv.astype(np.float32))
    with torch.no_grad():
        logits = ref(input_ids=enc["input_ids"], pixel_values=pixel_values,
                     image_sizes=enc["image_sizes"], use_cache=False).logits[0].float().numpy()
        feats = ref.get_image_features(pixel_values=pixel_values,
                                       image_sizes=enc["image_sizes"]).pooler_output
    name = spec["name"] + suffix
    case = {"name": name, "images": spec["images"], "image_shapes": sizes,
            "pixel_values": pv_files, "text": spec["text"], "tokens": tokens, "pos_offset": 0,
            "logits": f"{name}.npy", "argmax": logits.argmax(-1).tolist(), "features": [],
            "mmproj": mmproj}
    save_npy(out / case["logits"], logits.astype(np.float32))
    n_img = sum(t == ids["[IMG]"] for t in tokens)
    assert sum(f.shape[0] for f in feats) == n_img
    for i, f in enumerate(feats):
        (h, w) = sizes[i]
        assert f.shape[0] == (h // (PATCH * MERGE)) * (w // (PATCH * MERGE))
        case["features"].append(f"{name}_img{i}.npy")
        save_npy(out / case["features"][-1], f.float().numpy().astype(np.float32))
    return case


def chat_case_refs(proc, tok, out: Path, spec: dict, ids: dict) -> dict:
    """Rendered prompt (image placeholders as one [IMG] each) and processor token ids."""
    from PIL import Image

    hf_messages = []
    files = []
    for m in spec["messages"]:
        if isinstance(m["content"], str):
            hf_messages.append(dict(m))
            continue
        parts = []
        for part in m["content"]:
            if part["type"] == "image_url":
                files.append(part["image_url"]["url"])
                parts.append({"type": "image", "image": Image.open(out / files[-1]).convert("RGB")})
            else:
                parts.append(dict(part))
        hf_messages.append({"role": m["role"], "content": parts})
    text = proc.apply_chat_template(hf_messages, tokenize=False)
    # The same template rendered from the OpenAI-shaped messages (image_url parts) by the
    # tokenizer alone must give the same text.
    assert tok.apply_chat_template(spec["messages"], tokenize=False) == text
    enc = proc.apply_chat_template(hf_messages, tokenize=True, return_dict=True)
    tokens = [int(t) for t in enc["input_ids"][0]]
    images = load_images(out, files)
    sizes = [[im.size[1], im.size[0]] for im in images]
    check_layout(tokens, sizes, ids)
    again = proc(text=text, images=images, add_special_tokens=False)["input_ids"][0]
    assert [int(t) for t in again] == tokens
    assert tokens[0] == tok.bos_token_id and tokens[1] != tok.bos_token_id
    return {"name": spec["name"], "messages": spec["messages"], "images": files,
            "image_shapes": sizes, "text": text, "tokens": tokens}


def mmproj_hf_names(n_layers: int) -> dict:
    """GGUF mmproj tensor name -> transformers parameter name (Mistral3ForConditionalGeneration)."""
    names = {
        "v.patch_embd.weight": "model.vision_tower.patch_conv.weight",
        "v.pre_ln.weight": "model.vision_tower.ln_pre.weight",
        "mm.input_norm.weight": "model.multi_modal_projector.norm.weight",
        "mm.patch_merger.weight": "model.multi_modal_projector.patch_merger.merging_layer.weight",
        "mm.1.weight": "model.multi_modal_projector.linear_1.weight",
        "mm.2.weight": "model.multi_modal_projector.linear_2.weight",
    }
    per_layer = {"attn_q": "attention.q_proj", "attn_k": "attention.k_proj",
                 "attn_v": "attention.v_proj", "attn_out": "attention.o_proj",
                 "ln1": "attention_norm", "ln2": "ffn_norm", "ffn_gate": "feed_forward.gate_proj",
                 "ffn_up": "feed_forward.up_proj", "ffn_down": "feed_forward.down_proj"}
    for i in range(n_layers):
        for g, h in per_layer.items():
            names[f"v.blk.{i}.{g}.weight"] = f"model.vision_tower.transformer.layers.{i}.{h}.weight"
    return names


def mmproj_weights_as_hf(gguf_path: Path, model) -> dict:
    """Every mmproj tensor dequantized by gguf-py, q/k rows un-permuted, keyed by HF name."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    vcfg = model.config.vision_config
    names = mmproj_hf_names(vcfg.num_hidden_layers)
    params = dict(model.named_parameters())
    reader = GGUFReader(str(gguf_path))
    got = {}
    for t in reader.tensors:
        hf_name = names[t.name]
        w = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(params[hf_name].shape)
        if t.name.endswith(("attn_q.weight", "attn_k.weight")):
            n_head, rows, cols = vcfg.num_attention_heads, w.shape[0], w.shape[1]
            w = w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)
        got[hf_name] = w
    assert set(got) == set(names.values()), set(names.values()) ^ set(got)
    return got


def model_with_mmproj(ref, gguf_path: Path):
    """A copy of the reference model whose vision tower + projector weights are the mmproj's."""
    import copy

    model = copy.deepcopy(ref)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for hf_name, w in mmproj_weights_as_hf(gguf_path, model).items():
            params[hf_name].copy_(torch.from_numpy(w))
    return model.eval()


def vision_fixture(ref, tok, out: Path, vision: dict) -> dict:
    """Images, image cases (per mmproj), chat cases; returns the cases.json additions."""
    for file, (w, h, seed) in vision["images"].items():
        make_image(out / file, w, h, seed)
    ids = {t: tok.convert_tokens_to_ids(t) for t in IMAGE_TOKENS}
    assert ref.config.image_token_id == ids["[IMG]"], (ref.config.image_token_id, ids)
    # The converted GGUF vocabulary must hold the image tokens at the same ids.
    from gguf import GGUFReader

    reader = GGUFReader(str(out / "model.gguf"))
    field = reader.fields["tokenizer.ggml.tokens"]
    for t, i in ids.items():
        assert bytes(field.parts[field.data[i]]).decode() == t, (t, i)
    proc = pixtral_processor(tok)

    # The F32 mmproj written for the same weights must round-trip to the HF weights exactly
    # through the loader used for quantized mmproj files (checks names and un-permutation).
    params = dict(ref.named_parameters())
    for hf_name, w in mmproj_weights_as_hf(out / "mmproj.gguf", ref).items():
        assert np.array_equal(w, params[hf_name].detach().numpy()), hf_name

    cases = [image_case_refs(ref, proc, out, spec, ids, tok.bos_token_id, "mmproj.gguf")
             for spec in vision["image_cases"]]
    extra = {}
    for outtype in vision.get("extra_mmproj", []):
        file = f"mmproj_{outtype}.gguf"
        convert_hf_to_gguf(WORK / out.name / "hf", out / file, outtype, mmproj=True)
        qref = model_with_mmproj(ref, out / file)
        cases += [image_case_refs(qref, proc, out, spec, ids, tok.bos_token_id, file,
                                  suffix=f"_{outtype}") for spec in vision["image_cases"]]
        extra[file] = {"outtype": outtype,
                       "metadata": interesting_keys(gguf_metadata(out / file)),
                       "tensors": gguf_tensors(out / file)}
    doc = {"image_token_ids": ids, "image_cases": cases}
    if extra:
        doc["extra_mmproj"] = extra
    if vision.get("chat_cases"):
        doc["chat_cases"] = [chat_case_refs(proc, tok, out, spec, ids)
                             for spec in vision["chat_cases"]]
    return doc


# ----------------------------------------------------------------------------- driver

def save_hf(model, tokenizer, hf_dir: Path, spm_model: Path | None = None, vision: bool = False):
    if hf_dir.exists():
        shutil.rmtree(hf_dir)
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    if spm_model is not None:
        shutil.copy(spm_model, hf_dir / "tokenizer.model")
        # transformers 5 no longer writes added_tokens_decoder into tokenizer_config.json, but
        # llama.cpp's SentencePiece vocabulary reads added tokens only from there (or from
        # added_tokens.json); without it the image tokens become [PAD<id>] in the GGUF.
        added = {str(i): {"content": t.content, "lstrip": False, "normalized": False,
                          "rstrip": False, "single_word": False, "special": True}
                 for i, t in tokenizer.added_tokens_decoder.items() if t.content in IMAGE_TOKENS}
        if added:
            cfg_path = hf_dir / "tokenizer_config.json"
            cfg = json.loads(cfg_path.read_text())
            cfg["added_tokens_decoder"] = added
            write_json(cfg_path, cfg)
    if vision:
        from transformers import PixtralImageProcessor

        PixtralImageProcessor(patch_size=14, size={"longest_edge": 1540}).save_pretrained(hf_dir)


def interesting_keys(meta: dict) -> dict:
    """Metadata worth recording in cases.json (everything but the big tokenizer arrays)."""
    skip = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
            "tokenizer.ggml.merges", "tokenizer.chat_template")
    return {k: v for k, v in meta.items() if k not in skip}


def make_fixture(name: str, arch: str, model, tokenizer, outtype: str, cases: list[dict],
                 notes: str, spm_model: Path | None = None, vision: dict | None = None) -> None:
    """Save, convert, compute references, write cases.json for one tiny model.

    vision (Mistral3ForConditionalGeneration only): {"mmproj_outtype", "images": {file: (W, H,
    seed)}, "image_cases": [{"name", "text", "images"}], "chat_cases": [{"name", "messages"}],
    "extra_mmproj": [outtype, ...]}.
    """
    from transformers import AutoModelForImageTextToText, AutoModelForCausalLM

    work = WORK / name
    hf_dir = work / "hf"
    out = FIXTURES / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    randomize_(model, outtype)
    save_hf(model, tokenizer, hf_dir, spm_model=spm_model, vision=vision is not None)

    convert_hf_to_gguf(hf_dir, out / "model.gguf", outtype)
    if vision:
        convert_hf_to_gguf(hf_dir, out / "mmproj.gguf", vision["mmproj_outtype"], mmproj=True)

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
        doc["mmproj_outtype"] = vision["mmproj_outtype"]
        doc["mmproj_metadata"] = interesting_keys(gguf_metadata(out / "mmproj.gguf"))
        doc["mmproj_tensors"] = gguf_tensors(out / "mmproj.gguf")
        doc.update(vision_fixture(ref, tokenizer, out, vision))
        doc["notes"] += VISION_NOTE
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


VISION_NOTE = (
    " Vision: image_cases give float32 logits of model(input_ids, pixel_values, image_sizes) "
    "(transformers float32 eager, positions 0..n-1) for prompts with images; tokens come from "
    "PixtralProcessor (expanded image layout ([IMG] x W/28 + [IMG_BREAK]) x H/28, last token "
    "[IMG_END]); pixel_values[i] is the float32 [3, H, W] processor output of images[i] (no "
    "resize: sides are multiples of 28); features[i] is the projector output "
    "(get_image_features pooler_output) of image i, float32 [(H/28)*(W/28), text hidden], rows "
    "in row-major merged-patch order, which replace the [IMG] positions in order. Several "
    "images in one case are encoded as one vision sequence with a block-diagonal mask. "
    "The projector RMSNorm (mm.input_norm) uses the text rms_norm_eps (1e-5 here); the "
    "vision RMSNorms use a hard-coded 1e-5 (clip.vision.attention.layer_norm_epsilon). "
    "Vision 2D RoPE theta 1e4 (transformers' default, not written to the GGUF)."
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
        "and projector of the same random model, F16 (patch_embd and patch_merger too: "
        "the converter forces them to F16 for --outtype f16, else F32)."
    )
    vision = {
        "mmproj_outtype": "f16",
        "images": {"img_84x56.png": (84, 56, 1), "img_56x112.png": (56, 112, 2)},
        # 10 positions at most: each costs 0.5 MiB of float32 logits.
        "image_cases": [{"name": "img_84x56", "text": "<s>[IMG] cat",
                         "images": ["img_84x56.png"]}],
        "chat_cases": [
            {"name": "chat_system_two_images", "messages": [
                {"role": "system", "content": "You are a careful assistant."},
                {"role": "user", "content": [
                    {"type": "text", "text": "Compare "},
                    {"type": "image_url", "image_url": {"url": "img_84x56.png"}},
                    {"type": "text", "text": " with "},
                    {"type": "image_url", "image_url": {"url": "img_56x112.png"}},
                    {"type": "text", "text": ". What differs?"}]}]},
            # A user message with exactly two parts is sorted by part type by the template
            # ('image'/'image_url' < 'text'): the image comes first although written second.
            {"name": "chat_multi_turn", "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": "img_56x112.png"}}]},
                {"role": "assistant", "content": "Colourful stripes."},
                {"role": "user", "content": "Which colour dominates?"}]},
        ],
    }
    make_fixture("tiny_mistral3_tekken", "mistral3", build_mistral3_tekken(), tok, "f16",
                 cases, notes, vision=vision)


def tiny_mistral3_b() -> None:
    tok, spm_model = spm_tokenizer(WORK / "tiny_mistral3_b", 1000, image_tokens=True)
    ids = tok.encode("The quick brown fox jumps over the lazy dog. Paris is the capital of France.",
                     add_special_tokens=True)
    far = tok.encode("def main():\n\treturn 0", add_special_tokens=False)
    cases = [
        {"name": "pos0", "tokens": ids[:24], "pos_offset": 0},
        {"name": "pos30000", "tokens": far[:6], "pos_offset": 30000},
    ]
    notes = COMMON_NOTES + (
        " Mistral3ForConditionalGeneration (arch mistral3), text hidden 96, 6 heads x head_dim "
        "32 (q dim 192 != hidden), 2 KV heads, 3 layers, FFN 200, untied output.weight, same "
        "YaRN + query scaling as Ministral 3 3B. Tokenizer: SentencePiece BPE with "
        "byte_fallback, vocab 1000, trained by scripts/spm_corpus.py (a byte-level BPE trained "
        "with `tokenizers` cannot be converted: llama.cpp's converter only accepts BPE "
        "pre-tokenizers whose hash it knows), plus [IMG] [IMG_BREAK] [IMG_END] as added "
        "special tokens 1000..1002 (GGUF token type CONTROL, score -1000). mmproj.gguf: vision "
        "hidden 48, 2 heads x head_dim 24, 3 layers, FFN 80, BF16 (patch_embd and "
        "patch_merger F32, norms F32: the converter forces them)."
    )
    ids = tok.convert_tokens_to_ids(list(IMAGE_TOKENS))
    vision = {
        "mmproj_outtype": "bf16",
        "images": {"img_112x84.png": (112, 84, 3), "img_84x56.png": (84, 56, 4),
                   "img_56x112.png": (56, 112, 5)},
        "image_cases": [
            {"name": "img_112x84", "text": "<s>Describe the image:[IMG] It shows",
             "images": ["img_112x84.png"]},
            {"name": "two_images", "text": "<s>First[IMG] and second[IMG] compared.",
             "images": ["img_84x56.png", "img_56x112.png"]},
        ],
    }
    make_fixture("tiny_mistral3_b", "mistral3", build_mistral3_b(len(tok), ids[0]), tok, "bf16",
                 cases, notes, spm_model=spm_model, vision=vision)


def tiny_mistral3_c() -> None:
    tok, spm_model = spm_tokenizer(WORK / "tiny_mistral3_c", 800, image_tokens=True)
    ids = tok.encode("The quick brown fox jumps over the lazy dog.", add_special_tokens=True)
    cases = [{"name": "pos0", "tokens": ids[:12], "pos_offset": 0}]
    notes = COMMON_NOTES + (
        " Mistral3ForConditionalGeneration (arch mistral3), text hidden 64, 4 heads x 16, 2 KV "
        "heads, 2 layers, FFN 128, tied embeddings, same YaRN + query scaling as Ministral 3 "
        "3B, F32. Tokenizer: SentencePiece BPE vocab 800 (scripts/spm_corpus.py, the same "
        "model as tiny_llama_spm) plus [IMG] [IMG_BREAK] [IMG_END] as added special tokens "
        "800..802. mmproj.gguf: vision hidden 64, 4 heads x 16, 4 layers, FFN 128, F32. "
        "mmproj_q8_0.gguf: the same weights converted with --outtype q8_0 (patch_embd and "
        "patch_merger stay F32, norms F32); the image cases with suffix _q8_0 (\"mmproj\": "
        "\"mmproj_q8_0.gguf\") are computed by transformers with the vision tower + projector "
        "weights replaced by gguf-py's dequantization of that file (q/k rows un-permuted), "
        "so they are exact for the Q8_0 weights."
    )
    image_ids = tok.convert_tokens_to_ids(list(IMAGE_TOKENS))
    vision = {
        "mmproj_outtype": "f32",
        "extra_mmproj": ["q8_0"],
        "images": {"img_28x140.png": (28, 140, 6), "img_140x28.png": (140, 28, 7),
                   "img_56x56.png": (56, 56, 8)},
        "image_cases": [
            {"name": "img_28x140", "text": "<s>[IMG]A tall picture.",
             "images": ["img_28x140.png"]},
            {"name": "wide_and_square", "text": "<s>Wide[IMG] then square[IMG] done",
             "images": ["img_140x28.png", "img_56x56.png"]},
        ],
    }
    make_fixture("tiny_mistral3_c", "mistral3", build_mistral3_c(len(tok), image_ids[0]), tok,
                 "f32", cases, notes, spm_model=spm_model, vision=vision)


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
    "tiny_mistral3_c": tiny_mistral3_c,
    "tiny_llama_spm": tiny_llama_spm,
}

if __name__ == "__main__":
    for model_name in sys.argv[1:] or list(MODELS):
        MODELS[model_name]()
