"""Make tests/fixtures/tiny_llama_hf/: a tiny random Llama 3 as a Hugging Face model folder.

The folder is what transformers' save_pretrained writes (config.json, generation_config.json,
tokenizer.json, tokenizer_config.json, chat_template.jinja when transformers writes the
template there, model-0000N-of-0000M.safetensors + model.safetensors.index.json), plus the
references the tests compare against:

  model.gguf   what llama.cpp's convert_hf_to_gguf.py makes of the same folder (--outtype
               bf16: weights byte-identical to the safetensors after the q/k permutation,
               norms and rope_freqs.weight in F32)
  model_q8_0.gguf  the same with --outtype q8_0 (every matrix Q8_0, gguf-py's quantizer)
  cases.json   token ids of a few strings and of a rendered chat (transformers' tokenizer and
               apply_chat_template), and the logits cases
  <case>.npy   float32 logits [n_tokens, vocab] from transformers, weights as stored (BF16
               widened exactly to float32), every position

Model: LlamaForCausalLM, hidden 64, 2 layers, 4 heads / 2 KV heads of 16, FFN 128, tied
embeddings, Llama 3 RoPE scaling (rope_type llama3, theta 1e4, original context 64 so that two
of the 8 frequencies fall in the smoothed band), BF16 weights in 3 shards.

Tokenizer: a byte-level BPE trained here with the `tokenizers` package (vocab 384 incl. the
256 byte symbols) with Llama 3's pre-tokenizer regex, BOS added by the post-processor, and
Llama 3's special tokens added after training. llama.cpp's converter names a BPE pre-tokenizer
by hashing the ids the tokenizer gives for a fixed text, which depends on the vocabulary, so a
freshly trained vocabulary is never recognized; this script runs the converter with that one
lookup answered "llama-bpe" (the regex is Llama 3's), and nothing else changed.

Run (see scripts/README.md for the venv):
    /work/scratch/qwen/venv/bin/python scripts/make_hf_models.py
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
from common import FIXTURES, LLAMA_CPP, WORK, save_npy, write_json  # noqa: E402
from spm_corpus import training_text  # noqa: E402

torch.set_num_threads(1)

SEED = 4321
NAME = "tiny_llama_hf"
VOCAB = 384
SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# Llama 3's pre-tokenizer split (tokenizer.json of meta-llama/Meta-Llama-3-8B).
LLAMA3_PAT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# A shortened Llama 3 chat template (same markers, no tools or dates).
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
STRINGS = [
    "Hello world",
    "def main():\n\treturn 0",
    "  two  spaces, digits 12345 and I'LL",
    "héllo wörld 🦙",
]
CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3 + 3?"},
]


def train_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PAT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - len(SPECIAL), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([training_text()], trainer)
    tok.add_special_tokens(SPECIAL)
    bos = tok.token_to_id(SPECIAL[0])
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single=f"{SPECIAL[0]}:0 $A:0", pair=f"{SPECIAL[0]}:0 $A:0 {SPECIAL[0]}:1 $B:1",
            special_tokens=[(SPECIAL[0], bos)],
        ),
    ])
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=SPECIAL[0], eos_token=SPECIAL[4], chat_template=CHAT_TEMPLATE,
    )


def build_model():
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
        rms_norm_eps=1e-5, rope_parameters=dict(ROPE), tie_word_embeddings=True,
        bos_token_id=VOCAB - 5, eos_token_id=[VOCAB - 4, VOCAB - 1],
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(cfg)
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            value = 1.0 + 0.1 * noise if p.dim() == 1 else 0.08 * noise
            p.copy_(value)
    model = model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=VOCAB - 5, eos_token_id=[VOCAB - 4, VOCAB - 1], do_sample=True,
        temperature=0.6, top_p=0.9, top_k=40, repetition_penalty=1.1, max_new_tokens=48,
    )
    return model


def convert(hf_dir: Path, outfile: Path, outtype: str) -> None:
    """llama.cpp's converter with the BPE pre-tokenizer lookup answered (module docstring)."""
    code = (
        "import sys; sys.argv = sys.argv[1:]; sys.path.insert(0, sys.argv[0].rsplit('/', 1)[0]);"
        "import conversion.base as b; b.TextModel.get_vocab_base_pre = lambda self, tok: 'llama-bpe';"
        "import runpy; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    cmd = [sys.executable, "-c", code, str(LLAMA_CPP / "convert_hf_to_gguf.py"), str(hf_dir),
           "--outtype", outtype, "--outfile", str(outfile)]
    env = dict(os.environ, PYTHONPATH=str(LLAMA_CPP / "gguf-py"))
    subprocess.run(cmd, check=True, env=env)


def logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), use_cache=False)
    return out.logits[0].float().numpy()


def main() -> None:
    from transformers import AutoTokenizer, LlamaForCausalLM

    hf_dir = WORK / NAME
    if hf_dir.exists():
        shutil.rmtree(hf_dir)
    tok = train_tokenizer()
    model = build_model()
    model.save_pretrained(hf_dir, max_shard_size="90KB")
    tok.save_pretrained(hf_dir)
    shards = sorted(p.name for p in hf_dir.glob("model-*.safetensors"))
    assert 2 <= len(shards) <= 3, shards

    out = FIXTURES / NAME
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(hf_dir, out)
    convert(hf_dir, out / "model.gguf", "bf16")
    convert(hf_dir, out / "model_q8_0.gguf", "q8_0")

    # References from the folder as written: the weights as stored, widened to float32.
    tok = AutoTokenizer.from_pretrained(out)
    ref = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    rendered = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    chat_ids = tok(rendered, add_special_tokens=False).input_ids
    strings = [
        {"text": s, "ids": tok(s).input_ids, "ids_no_special": tok(s, add_special_tokens=False).input_ids,
         "decoded": tok.decode(tok(s).input_ids, skip_special_tokens=True)}
        for s in STRINGS
    ]
    cases = [
        {"name": "hello", "tokens": tok("Hello world, hello llama").input_ids},
        {"name": "code", "tokens": tok("def main():\n\treturn 12345").input_ids},
        {"name": "chat", "tokens": chat_ids},
    ]
    for case in cases:
        save_npy(out / f"{case['name']}.npy", logits(ref, case["tokens"]))
        case["file"] = f"{case['name']}.npy"
    write_json(out / "cases.json", {
        "strings": strings,
        "chat": {"messages": CHAT, "rendered": rendered, "ids": chat_ids},
        "bos_id": tok.bos_token_id,
        "eos_ids": model_eos(out),
        "cases": cases,
        "shards": shards,
    })
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"{out}: {total} bytes, shards {shards}")


def model_eos(folder: Path) -> list[int]:
    return json.loads((folder / "generation_config.json").read_text())["eos_token_id"]


if __name__ == "__main__":
    main()
