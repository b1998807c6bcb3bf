"""Make the tiny random-weight Llama 3.2 Vision (Mllama) models as Hugging Face folders, their
reference logits, and the Mllama image-preprocessing references (issue 13).

Writes tests/fixtures/<name>/ for each model: what transformers' `save_pretrained` writes
(`config.json`, `generation_config.json`, safetensors), a tiny `tokenizer.json` +
`tokenizer_config.json` (with the real Llama 3.2 Vision chat template), the processor's
`preprocessor_config.json`, the test images, `cases.json` and the `.npy` references:

  tiny_mllama_a   BF16, one `model.safetensors`. Vision: tile 28, patch 14 (2x2 patches + class
                  token = 5 tokens per tile, padded to 8), hidden 32, 4 heads, 3 local layers
                  (intermediate_layers_indices [0, 2]), 1 global layer, output dim 96. Text:
                  hidden 64, 4 heads x 16 / 2 KV heads, 4 layers, cross-attention layers [1, 3].
  tiny_mllama_b   F16, sharded (`model.safetensors.index.json`). Vision: tile 28, hidden 24,
                  2 heads, 2 local layers (indices [1]), 2 global layers, output dim 48. Text:
                  hidden 48, 3 heads x 16 / 1 KV head, 5 layers, cross-attention layers [0, 3].
  tiny_mllama_c   BF16, saved with a processor unlike Llama 3.2 Vision's (issue 29): tile 42
                  (3x3 patches), image_mean / image_std not CLIP's, bicubic resample, rescale
                  factor 1/250, written by `MllamaProcessor.save_pretrained` as transformers 5
                  does (`processor_config.json` with an `image_processor` object; no
                  `preprocessor_config.json`). Vision: hidden 32, 2 heads, 2 local layers
                  (indices [0]), 1 global layer, output dim 64. Text: hidden 32, 2 heads x 16 /
                  1 KV head, 3 layers, cross-attention layer [1].

and tests/fixtures/mllama_preprocess/: PNGs of many sizes and `MllamaImageProcessorPil`'s
pixel values for them (every supported aspect ratio of max_image_tiles 4, tiles of 14 and 28
px), plus the canvas / resize arithmetic for 560-px tiles (`canvas.json`, no pixels).

Tokenizer: a byte-level BPE (Llama 3's pre-tokenizer regex, ByteLevel without its own regex)
trained with the `tokenizers` package on CORPUS to N_BPE tokens, then the first eleven Llama
3 special tokens in Llama 3's order (`<|begin_of_text|>` = N_BPE ... `<|python_tag|>` =
N_BPE + 10) and `<|image|>` = N_BPE + 11 = text `vocab_size` (as the real `<|image|>` 128256
is one past the real 128256-entry vocabulary; the embedding has vocab_size + 8 rows). Like the
real Llama 3.2 Vision tokenizer, it adds no BOS itself: `MllamaProcessor` prepends the
`<|begin_of_text|>` text when a prompt lacks it, and the chat template starts with it.

Chat template: Llama-3.2-11B-Vision-Instruct's, as the `llama3_2visionChatTemplate` test
string of the swift Jinja package (github.com/johnmai-dev/Jinja,
Tests/Templates/VisionTests.swift); SHA-256 of the text in CHAT_TEMPLATE_SHA256. Read from
WEBVLM_MLLAMA_TEMPLATE (default <work>/llama32_vision.jinja) when the fixture folders are
rebuilt; committed copies live in the tokenizer_config.json files. Renders pass
`date_string="26 Jul 2024"` (the template's own fallback) so text-only chats do not depend
on today's date.

Image processor: transformers' `MllamaImageProcessorPil` (the PIL backend; the venv has no
torchvision, and the torchvision backend resizes tensors instead): Llama 3.2 Vision's
settings (bilinear, CLIP mean/std, max_image_tiles 4, do_resize / do_pad / do_rescale /
do_normalize true) with `size` = the model's tile. Random weights are rounded through the
storage dtype before the float32 references are computed.

Run (see scripts/README.md for the venv):
    /work/scratch/qwen/venv/bin/python scripts/make_mllama_models.py [name ...]
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mllama_numpy  # noqa: E402
from common import FIXTURES, WORK, save_npy, write_json  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SEED = 1313
N_BPE = 300
LLAMA3_SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
]
IMAGE_TOKEN = "<|image|>"
VOCAB = N_BPE + len(LLAMA3_SPECIALS)  # text vocab_size; <|image|> is this id
LLAMA3_PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
              r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
CORPUS = [
    "What is in this image? Describe the picture.",
    "The image shows a red square. What colour is the sky?",
    "Look at the photo. What colour is the circle?",
    "Hello! How are you today?",
    "user\n\nassistant\n\nuser\n\nassistant\n\nsystem\n\n",
]
CHAT_TEMPLATE_SHA256 = "e407323269d15bba92fc431b5b7d757e66d920d01b45cae58149a692d7697d3c"
TEMPLATE_PATH = Path(os.environ.get("WEBVLM_MLLAMA_TEMPLATE", str(WORK / "llama32_vision.jinja")))
DATE_STRING = "26 Jul 2024"
# Llama 3.2 Vision's preprocessor_config.json, but for the tile size (560 there).
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]
MAX_IMAGE_TILES = 4
ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


def versions() -> dict:
    import PIL
    import tokenizers
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "numpy": np.__version__,
            "pillow": PIL.__version__, "python": sys.version.split()[0]}


# ----------------------------------------------------------------------------- tokenizer

def chat_template() -> str:
    text = TEMPLATE_PATH.read_text(encoding="utf-8")
    digest = hashlib.sha256(text.encode()).hexdigest()
    if digest != CHAT_TEMPLATE_SHA256:
        raise SystemExit(f"{TEMPLATE_PATH}: sha256 {digest} is not the Llama 3.2 Vision template")
    return text


def build_tokenizer(out: Path) -> None:
    """tokenizer.json + tokenizer_config.json (see the module docstring)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PAT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=N_BPE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    assert tok.get_vocab_size() == N_BPE, tok.get_vocab_size()
    tok.add_special_tokens(LLAMA3_SPECIALS + [IMAGE_TOKEN])
    assert tok.token_to_id(IMAGE_TOKEN) == VOCAB
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    added = {str(N_BPE + i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                              "single_word": False, "special": True}
             for i, t in enumerate(LLAMA3_SPECIALS + [IMAGE_TOKEN])}
    write_json(out / "tokenizer_config.json", {
        "added_tokens_decoder": added,
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "pad_token": "<|finetune_right_pad_id|>",
        "clean_up_tokenization_spaces": True,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 131072,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": chat_template(),
    })


def processor(folder: Path, tile: int, settings: dict | None = None):
    from transformers import MllamaProcessor, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(folder))
    return MllamaProcessor(image_processor=image_processor(tile, settings), tokenizer=tok,
                           chat_template=tok.chat_template)


def image_processor(tile: int, settings: dict | None = None):
    """Llama 3.2 Vision's settings with `size` = tile, and `settings` over them."""
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

    kwargs = dict(do_resize=True, size={"height": tile, "width": tile}, resample=2, do_rescale=True,
                  rescale_factor=1 / 255, do_normalize=True, image_mean=IMAGE_MEAN, image_std=IMAGE_STD,
                  do_pad=True, do_convert_rgb=True, max_image_tiles=MAX_IMAGE_TILES)
    kwargs.update(settings or {})
    return MllamaImageProcessorPil(**kwargs)


def write_preprocessor_config(folder: Path, tile: int) -> dict:
    cfg = {"image_processor_type": "MllamaImageProcessor", "processor_class": "MllamaProcessor",
           "do_convert_rgb": True, "do_normalize": True, "do_pad": True, "do_rescale": True,
           "do_resize": True, "image_mean": IMAGE_MEAN, "image_std": IMAGE_STD,
           "max_image_tiles": MAX_IMAGE_TILES, "resample": 2, "rescale_factor": 1 / 255,
           "size": {"height": tile, "width": tile}}
    write_json(folder / "preprocessor_config.json", cfg)
    return cfg


# ----------------------------------------------------------------------------- images

def make_image(path: Path, width: int, height: int, seed: int) -> None:
    """A deterministic RGB PNG: smooth gradients + stripes + mild noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    planes = []
    for c in range(3):
        p = 127.5 + 90 * np.sin(x / (4.0 + 3 * c) + c + seed) * np.cos(y / (6.0 + 2 * c) - seed)
        p += 60 * (x / max(width - 1, 1) - 0.5) * (1 - 2 * (c == 1))
        p += 30 * ((x + 2 * y + 11 * c + seed) % 17 < 3)
        p += rng.normal(0, 4, size=(height, width))
        planes.append(p)
    arr = np.clip(np.stack(planes, -1), 0, 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "RGB").save(path)


def load_png(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


# ----------------------------------------------------------------------------- models

def build_model(vision: dict, text: dict, outtype: str):
    from transformers import MllamaConfig, MllamaForConditionalGeneration

    specials = {t: N_BPE + i for i, t in enumerate(LLAMA3_SPECIALS)}
    text = dict(text, vocab_size=VOCAB, rope_parameters=ROPE, rms_norm_eps=1e-5,
                max_position_embeddings=131072, tie_word_embeddings=False,
                bos_token_id=specials["<|begin_of_text|>"],
                eos_token_id=specials["<|end_of_text|>"],
                pad_token_id=specials["<|finetune_right_pad_id|>"])
    vision = dict(vision, patch_size=14, max_num_tiles=MAX_IMAGE_TILES, norm_eps=1e-5,
                  vision_output_dim=vision["hidden_size"] * (1 + len(vision["intermediate_layers_indices"])))
    cfg = MllamaConfig(vision_config=vision, text_config=text, image_token_index=VOCAB,
                       tie_word_embeddings=False)
    torch.manual_seed(SEED)
    model = MllamaForConditionalGeneration(cfg).eval()
    randomize_(model, outtype)
    return model


def randomize_(model: torch.nn.Module, outtype: str) -> None:
    """Seeded random weights, rounded through the storage dtype.

    Matrices and embeddings N(0, 0.08) (the vision patch kernel 0.03, the class and position
    embeddings 0.3); biases N(0, 0.05); LayerNorm / RMSNorm weights 1 + N(0, 0.1); every gate
    (scalar tanh gates of the vision embeddings, global layers and cross-attention layers)
    uniform in +-[0.4, 1.2] so that no path is switched off as transformers' init does.
    """
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("gate") or name.endswith("gate_attn") or name.endswith("gate_ffn"):
                u = torch.rand(p.shape, generator=gen)
                sign = torch.where(torch.rand(p.shape, generator=gen) < 0.5, -1.0, 1.0)
                value = sign * (0.4 + 0.8 * u)
            elif name.endswith(".bias"):
                value = 0.05 * noise
            elif p.dim() == 1 and "norm" in name:
                value = 1.0 + 0.1 * noise
            elif "patch_embedding" in name:
                value = 0.03 * noise
            elif name.endswith("class_embedding") or name.endswith("gated_positional_embedding.embedding"):
                value = 0.3 * noise
            else:
                value = 0.08 * noise
            p.copy_(value.to(DTYPES[outtype]).float())


def save_hf(model, folder: Path, outtype: str, shard: str | None) -> list[str]:
    """save_pretrained in the storage dtype; returns the safetensors file names."""
    import copy

    stored = copy.deepcopy(model).to(DTYPES[outtype])
    # Llama-3.2-11B-Vision-Instruct's generation_config.json, with the tiny ids.
    specials = {t: N_BPE + i for i, t in enumerate(LLAMA3_SPECIALS)}
    gen = stored.generation_config
    gen.bos_token_id = specials["<|begin_of_text|>"]
    gen.eos_token_id = [specials[t] for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")]
    gen.pad_token_id = specials["<|finetune_right_pad_id|>"]
    gen.do_sample, gen.temperature, gen.top_p = True, 0.6, 0.9
    kwargs = {"max_shard_size": shard} if shard else {}
    stored.save_pretrained(str(folder), safe_serialization=True, **kwargs)
    return sorted(p.name for p in folder.glob("*.safetensors"))


def safetensors_listing(folder: Path) -> list[dict]:
    """Every stored tensor: name, dtype, shape, file (header order)."""
    rows = []
    for f in sorted(folder.glob("*.safetensors")):
        raw = f.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
        for name, info in header.items():
            if name == "__metadata__":
                continue
            rows.append({"name": name, "dtype": info["dtype"], "shape": info["shape"], "file": f.name})
    return sorted(rows, key=lambda r: r["name"])


# ----------------------------------------------------------------------------- cases

def run_case(model, proc, out: Path, name: str, text: str, images: list[str]) -> dict:
    """One prompt through MllamaProcessor and the model; writes the .npy files."""
    pil = [load_png(out / p) for p in images]
    # A case with a rendered chat keeps the render's own <|begin_of_text|>.
    if pil:
        inputs = proc(images=[pil], text=[text], return_tensors="pt")
    else:
        inputs = proc(text=[text], return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    case = {"name": name, "text": text, "images": images, "tokens": ids}
    kwargs = {"input_ids": inputs["input_ids"]}
    if pil:
        pv = inputs["pixel_values"][0].float().numpy()  # [images, max_tiles, 3, T, T]
        ar_ids = inputs["aspect_ratio_ids"][0].tolist()
        ar_mask = inputs["aspect_ratio_mask"][0].tolist()
        cam = inputs["cross_attention_mask"][0].numpy().astype(np.int32)  # [n, images, max_tiles]
        num_tiles = [int(sum(m)) for m in ar_mask]
        # Stored without the processor's all-zero padding tiles (one image per case).
        assert len(pil) == 1 and not pv[0, num_tiles[0]:].any()
        pv = pv[:, :num_tiles[0]]
        save_npy(out / f"{name}_pixel_values.npy", pv.astype(np.float32))
        save_npy(out / f"{name}_cross_attention_mask.npy", cam)
        case.update({
            "image_sizes_wh": [list(im.size) for im in pil],
            "pixel_values": f"{name}_pixel_values.npy",
            "pixel_values_shape": list(pv.shape),
            "aspect_ratio_ids": ar_ids,
            "aspect_ratio_mask": ar_mask,
            "num_tiles": num_tiles,
            "cross_attention_mask": f"{name}_cross_attention_mask.npy",
        })
        kwargs.update({k: inputs[k] for k in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask",
                                              "cross_attention_mask")})
        with torch.no_grad():
            vm = model.model.vision_model(pixel_values=inputs["pixel_values"],
                                          aspect_ratio_ids=inputs["aspect_ratio_ids"],
                                          aspect_ratio_mask=inputs["aspect_ratio_mask"])
            vis = vm.last_hidden_state[0]  # [images, max_tiles, patches, vision_output_dim]
            proj = model.model.multi_modal_projector(vis)
        save_npy(out / f"{name}_cross_attention_states.npy",
                 proj.reshape(-1, proj.shape[-1]).float().numpy())
        case.update({"vision_out_shape": list(vis.shape),
                     "cross_attention_states": f"{name}_cross_attention_states.npy",
                     "cross_attention_states_shape": [int(np.prod(proj.shape[:-1])), proj.shape[-1]]})
    with torch.no_grad():
        logits = model(**kwargs).logits[0].float().numpy()
    save_npy(out / f"{name}_logits.npy", logits)
    case.update({"logits": f"{name}_logits.npy", "argmax": logits.argmax(-1).tolist()})
    return case


def cross_attn_rows_before_image(model, proc, out: Path, text: str, image: str) -> dict:
    """What transformers does at tokens whose cross-attention mask row is empty (text before
    the first <|image|>): the cross-attention output (o_proj) there, and the MLP output."""
    first = next(i for i, m in enumerate(model.model.language_model.layers) if hasattr(m, "cross_attn"))
    layer = model.model.language_model.layers[first]
    seen = {}
    hooks = [layer.cross_attn.register_forward_hook(lambda m, a, o: seen.__setitem__("attn", o[0][0])),
             layer.register_forward_hook(lambda m, a, o: seen.update(x=a[0][0], y=o[0]))]
    inputs = proc(images=[[load_png(out / image)]], text=[text], return_tensors="pt")
    with torch.no_grad():
        model(**inputs)
    for h in hooks:
        h.remove()
    n_before = inputs["input_ids"][0].tolist().index(VOCAB)
    # Layer output = x + tanh(attn gate) * attn + tanh(mlp gate) * row_mask * mlp.
    mlp_part = seen["y"] - seen["x"] - layer.cross_attn_attn_gate.tanh() * seen["attn"]
    return {"layer": first, "tokens_before_image": n_before,
            "attn_out_max_abs_before_image": float(seen["attn"][:n_before].abs().max()),
            "mlp_contribution_max_abs_before_image": float(mlp_part[:n_before].abs().max().detach()),
            "mlp_contribution_max_abs_after_image": float(mlp_part[n_before:].abs().max().detach())}


def reload_check(out: Path, proc, case: dict) -> float:
    """Max abs difference between a case's logits and those of the saved folder loaded back
    in float32 (0 when the stored weights are exactly the ones the references used)."""
    from transformers import MllamaForConditionalGeneration

    model = MllamaForConditionalGeneration.from_pretrained(str(out), dtype=torch.float32).eval()
    pil = [[load_png(out / p) for p in case["images"]]] if case["images"] else None
    inputs = proc(images=pil, text=[case["text"]], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0].float().numpy()
    return float(np.abs(logits - np.load(out / case["logits"])).max())


def saved_processor_check(out: Path, cases: list[dict]) -> None:
    """The image processor transformers reads back from the folder gives the cases' pixels."""
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

    saved = MllamaImageProcessorPil.from_pretrained(str(out))
    for case in cases:
        if case["images"]:
            res = saved([[load_png(out / p) for p in case["images"]]], return_tensors="np")
            pv = res["pixel_values"][0, :, :case["num_tiles"][0]]
            assert np.array_equal(pv, np.load(out / case["pixel_values"])), case["name"]


def make_fixture(name: str, vision: dict, text: dict, outtype: str, shard: str | None,
                 images: dict, prompts: list[dict], notes: str,
                 proc_settings: dict | None = None) -> None:
    """`proc_settings`: image-processor settings over Llama 3.2 Vision's, and the processor
    saved by `MllamaProcessor.save_pretrained` (transformers 5's `processor_config.json`);
    without them, the published `preprocessor_config.json` with the tile size."""
    out = FIXTURES / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    tile = vision["image_size"]
    build_tokenizer(out)
    for file, (w, h, seed) in images.items():
        make_image(out / file, w, h, seed)
    model = build_model(vision, text, outtype)
    files = save_hf(model, out, outtype, shard)
    proc = processor(out, tile, proc_settings)
    if proc_settings is None:
        pre_cfg = write_preprocessor_config(out, tile)
    else:
        proc.save_pretrained(str(out))
        # The tokenizer files as build_tokenizer wrote them (save_pretrained rewrites them).
        build_tokenizer(out)
        pre_cfg = json.loads((out / "processor_config.json").read_text())["image_processor"]
        assert not (out / "preprocessor_config.json").exists()
    cases, chat_cases = [], []
    for spec in prompts:
        text_in = spec.get("text")
        if "messages" in spec:
            text_in = proc.apply_chat_template(spec["messages"], add_generation_prompt=True,
                                               tokenize=False, date_string=DATE_STRING)
        case = run_case(model, proc, out, spec["name"], text_in, spec.get("images", []))
        if "messages" in spec:
            # The render starts with <|begin_of_text|>, so the processor adds nothing to it.
            assert proc.tokenizer(text_in, add_special_tokens=False)["input_ids"] == case["tokens"]
            chat_cases.append({"name": spec["name"], "messages": spec["messages"],
                               "date_string": DATE_STRING, "text": text_in, "tokens": case["tokens"]})
        cases.append(case)
    reload_diff = reload_check(out, proc, cases[0])
    if proc_settings is not None:
        saved_processor_check(out, cases)
    for case in cases:
        case["numpy_vs_transformers"] = mllama_numpy.check_case(out, case)
        assert case["numpy_vs_transformers"]["logits_rel_l2"] < 1e-5, case["numpy_vs_transformers"]
    with_image = next(p for p in prompts if p.get("images") and "text" in p
                      and not p["text"].startswith(IMAGE_TOKEN))
    row_check = cross_attn_rows_before_image(model, proc, out, with_image["text"], with_image["images"][0])
    cfg = model.config
    tok_ids = {t: N_BPE + i for i, t in enumerate(LLAMA3_SPECIALS)}
    tok_ids[IMAGE_TOKEN] = VOCAB
    write_json(out / "cases.json", {
        "model": name, "hf_class": "MllamaForConditionalGeneration", "outtype": outtype,
        "safetensors_files": files, "versions": versions(),
        "image_token_index": cfg.image_token_index, "special_tokens": tok_ids,
        "image_processor": dict(pre_cfg, backend="MllamaImageProcessorPil"),
        "chat_template_sha256": CHAT_TEMPLATE_SHA256,
        "cases": cases, "chat_cases": chat_cases,
        "cross_attention_rows_before_image": row_check,
        "reload_max_abs_diff": reload_diff,
        "tensors": safetensors_listing(out), "notes": notes,
    })
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"{name}: {len(cases)} cases, {size / 1024:.0f} KiB")


# One image's content parts in the OpenAI-like chat format transformers' templates take.
def user(parts: list) -> dict:
    return {"role": "user", "content": [{"type": "image"} if p is None else {"type": "text", "text": p}
                                        for p in parts]}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def tiny_mllama_a() -> None:
    vision = {"image_size": 28, "hidden_size": 32, "attention_heads": 4, "intermediate_size": 32,
              "num_hidden_layers": 2, "num_global_layers": 1, "intermediate_layers_indices": [0, 1]}
    text = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 1,
            "intermediate_size": 24, "num_hidden_layers": 4, "cross_attention_layers": [1, 3]}
    images = {"img_24x20.png": (24, 20, 1), "img_26x100.png": (26, 100, 3)}
    prompts = [
        {"name": "before_after_one_tile", "images": ["img_24x20.png"],
         "text": "Look at the photo. <|image|>Why?"},
        {"name": "chat_tall_four_tiles", "images": ["img_26x100.png"],
         "messages": [user([None, "Describe it."]), assistant("Red."),
                      user(["Why?"])]},
    ]
    make_fixture("tiny_mllama_a", vision, text, "bf16", None, images, prompts,
                 "BF16 weights, one safetensors file.")


def tiny_mllama_b() -> None:
    vision = {"image_size": 28, "hidden_size": 24, "attention_heads": 2, "intermediate_size": 48,
              "num_hidden_layers": 2, "num_global_layers": 2, "intermediate_layers_indices": [1]}
    text = {"hidden_size": 48, "num_attention_heads": 3, "num_key_value_heads": 1,
            "intermediate_size": 64, "num_hidden_layers": 5, "cross_attention_layers": [0, 3]}
    images = {"img_50x24.png": (50, 24, 2)}
    prompts = [
        {"name": "before_after_wide_two_tiles", "images": ["img_50x24.png"],
         "text": "The image shows <|image|> a red square. What colour is the sky?"},
        {"name": "text_only", "text": "Hello! How are you today?"},
    ]
    make_fixture("tiny_mllama_b", vision, text, "f16", "60KB", images, prompts,
                 "F16 weights, sharded by save_pretrained(max_shard_size='60KB').")


# tiny_mllama_c's image processor: none of Llama 3.2 Vision's mean / std / resample / rescale.
PROC_C = {"image_mean": [0.52, 0.38, 0.61], "image_std": [0.21, 0.33, 0.18], "resample": 3,
          "rescale_factor": 1 / 250}


def tiny_mllama_c() -> None:
    vision = {"image_size": 42, "hidden_size": 32, "attention_heads": 2, "intermediate_size": 32,
              "num_hidden_layers": 2, "num_global_layers": 1, "intermediate_layers_indices": [0]}
    text = {"hidden_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1,
            "intermediate_size": 48, "num_hidden_layers": 3, "cross_attention_layers": [1]}
    images = {"img_70x40.png": (70, 40, 5), "img_30x90.png": (30, 90, 6)}
    prompts = [
        {"name": "wide_two_tiles", "images": ["img_70x40.png"],
         "text": "Look at the photo. <|image|>What colour is the circle?"},
        {"name": "tall_three_tiles", "images": ["img_30x90.png"],
         "text": "<|image|>Describe the picture."},
    ]
    make_fixture("tiny_mllama_c", vision, text, "bf16", None, images, prompts,
                 "BF16 weights; the processor saved by MllamaProcessor.save_pretrained with "
                 f"settings {PROC_C} over Llama 3.2 Vision's (processor_config.json).", PROC_C)


# ----------------------------------------------------------------------------- preprocessing

# (width, height, tile): every aspect ratio of max_image_tiles 4 (ids 1..8), up- and
# downscaling, ties between canvases, 1-px sides.
PREPROCESS_IMAGES = [
    (20, 20, 28), (9, 30, 14), (40, 60, 14), (14, 50, 14), (20, 55, 14), (31, 9, 28), (60, 61, 14),
    (50, 10, 14), (45, 17, 14), (1, 40, 14), (120, 3, 14), (33, 29, 14), (70, 50, 14), (10, 25, 14),
]
# (height, width) for 560-px tiles: the canvas and fitted size only.
CANVAS_SIZES = [(560, 560), (480, 640), (640, 480), (1080, 1920), (1920, 1080), (100, 100), (300, 2000),
                (2000, 300), (559, 1121), (1121, 559), (1, 1), (3000, 4000), (561, 560), (700, 1400),
                (1400, 700), (1600, 800), (500, 1700), (1680, 560), (560, 1680), (2240, 100)]


def mllama_preprocess() -> None:
    from transformers.models.mllama.image_processing_pil_mllama import (
        get_all_supported_aspect_ratios, get_image_size_fit_to_canvas, get_optimal_tiled_canvas,
    )

    out = FIXTURES / "mllama_preprocess"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cases = []
    for i, (w, h, tile) in enumerate(PREPROCESS_IMAGES):
        name = f"img_{w}x{h}_t{tile}"
        make_image(out / f"{name}.png", w, h, 100 + i)
        res = image_processor(tile)([[load_png(out / f"{name}.png")]], return_tensors="np")
        n = int(res["aspect_ratio_mask"][0, 0].sum())
        pv = res["pixel_values"][0, 0, :n].astype(np.float32)
        save_npy(out / f"{name}.npy", pv)
        canvas = get_optimal_tiled_canvas(h, w, MAX_IMAGE_TILES, tile)
        fit = get_image_size_fit_to_canvas(h, w, canvas[0], canvas[1], tile)
        cases.append({"file": f"{name}.png", "tile": tile, "width": w, "height": h,
                      "pixel_values": f"{name}.npy", "shape": list(pv.shape),
                      "aspect_ratio_id": int(res["aspect_ratio_ids"][0, 0]),
                      "aspect_ratio_mask": res["aspect_ratio_mask"][0, 0].tolist(), "num_tiles": n,
                      "canvas_hw": [int(canvas[0]), int(canvas[1])], "resized_hw": [int(fit[0]), int(fit[1])]})
    ids = sorted({c["aspect_ratio_id"] for c in cases})
    assert ids == list(range(1, 9)), ids
    canvas = []
    for h, w in CANVAS_SIZES:
        c = get_optimal_tiled_canvas(h, w, MAX_IMAGE_TILES, 560)
        fit = get_image_size_fit_to_canvas(h, w, c[0], c[1], 560)
        canvas.append({"height": h, "width": w, "canvas_hw": [int(c[0]), int(c[1])],
                       "resized_hw": [int(fit[0]), int(fit[1])]})
    write_json(out / "cases.json", {
        "versions": versions(), "max_image_tiles": MAX_IMAGE_TILES,
        "supported_aspect_ratios": [list(a) for a in get_all_supported_aspect_ratios(MAX_IMAGE_TILES)],
        "image_mean": IMAGE_MEAN, "image_std": IMAGE_STD, "resample": "bilinear (PIL 2)",
        "backend": "MllamaImageProcessorPil", "cases": cases, "canvas_560": canvas,
        "notes": "pixel_values: float32 [num_tiles, 3, tile, tile], the processor's tiles of the "
                 "image (its zero padding tiles up to max_image_tiles dropped).",
    })
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"mllama_preprocess: {len(cases)} images, {size / 1024:.0f} KiB")


TARGETS = {"tiny_mllama_a": tiny_mllama_a, "tiny_mllama_b": tiny_mllama_b, "tiny_mllama_c": tiny_mllama_c,
           "mllama_preprocess": mllama_preprocess}

if __name__ == "__main__":
    for target in sys.argv[1:] or list(TARGETS):
        TARGETS[target]()
