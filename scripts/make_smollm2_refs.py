"""Make reference outputs for the real SmolLM2-135M-Instruct Q4_1 GGUF.

The reference is transformers loading THAT SAME GGUF (gguf_file=..., dequantized to float32,
computed in float32 on CPU), not llama.cpp. Writes tests/fixtures/smollm2/:

  reference.json     prompts, chat-rendered text and ids, 64-token greedy continuation (ids,
                     text, per-step top-1/top-2 margin, first EOS), per-position argmax,
                     top-5 and margin of the teacher-forced pass, and which full logits are stored
  logits_<i>.npy     float16 [n_window, 49152] full teacher-forced logits of prompt i for the
                     positions listed in reference.json (a window around the prompt end)

Run (after scripts/fetch_smollm2.sh; see scripts/README.md):
    /work/pyref/bin/python scripts/make_smollm2_refs.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, FIXTURES, save_npy, write_json  # noqa: E402

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_DIR = CACHE / "models"
OUT = FIXTURES / "smollm2"
N_NEW = 64
# Full logits are stored for positions [P - WINDOW_BEFORE, P + WINDOW_AFTER) of each prompt,
# P = prompt length: the end of prefill and the first decode steps. Size budget: 96 KiB each.
WINDOW_BEFORE = 2
WINDOW_AFTER = 4
TOP_K = 5

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the ocean."}],
    [{"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
     {"role": "user", "content": "Explain what a neural network is."}],
    [{"role": "user", "content": "List three primary colors."}],
    [{"role": "user", "content": "Translate 'good morning' into Spanish and French."}],
    [{"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello! How can I help you today?"},
     {"role": "user", "content": "What is 2 + 3?"}],
]


def load():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(
        MODEL_DIR, gguf_file=GGUF_NAME, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    return tok, model


def forward_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()


def greedy(model, prompt_ids: list[int]) -> tuple[list[int], list[float]]:
    """64 greedy steps with a KV cache (no EOS stop); returns ids and top-1/top-2 margins."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([prompt_ids]), use_cache=True)
        new, margins = [], []
        for _ in range(N_NEW):
            top2 = torch.topk(out.logits[0, -1].float(), 2)
            new.append(int(top2.indices[0]))
            margins.append(float(top2.values[0] - top2.values[1]))
            out = model(input_ids=torch.tensor([[new[-1]]]), past_key_values=out.past_key_values,
                        use_cache=True)
    return new, margins


def position_stats(logits: torch.Tensor) -> dict:
    top = torch.topk(logits, TOP_K, dim=-1)
    return {
        "argmax": top.indices[:, 0].tolist(),
        "margin": (top.values[:, 0] - top.values[:, 1]).tolist(),
        "top5_ids": top.indices.tolist(),
        "top5_logits": [[round(v, 5) for v in row] for row in top.values.tolist()],
    }


def one_prompt(tok, model, index: int, messages: list[dict]) -> dict:
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tok.encode(text, add_special_tokens=False)
    new_ids, margins = greedy(model, prompt_ids)
    full = prompt_ids + new_ids
    logits = forward_logits(model, full)
    p = len(prompt_ids)
    window = list(range(p - WINDOW_BEFORE, p + WINDOW_AFTER))
    save_npy(OUT / f"logits_{index}.npy", logits[window].numpy().astype(np.float16))
    eos = tok.eos_token_id
    tf = position_stats(logits)
    # Teacher-forced argmax at position p-1+k should be the k-th greedy token.
    agree = sum(int(tf["argmax"][p - 1 + k] == new_ids[k]) for k in range(N_NEW))
    return {
        "messages": messages,
        "prompt_text": text,
        "prompt_ids": prompt_ids,
        "greedy_ids": new_ids,
        "greedy_text": tok.decode(new_ids, skip_special_tokens=False),
        "greedy_margins": margins,
        "first_eos_index": new_ids.index(eos) if eos in new_ids else None,
        "teacher_forced": tf,
        "teacher_forced_agrees_with_greedy": agree,
        "logits_file": f"logits_{index}.npy",
        "logits_positions": window,
    }


def main() -> None:
    if not (MODEL_DIR / GGUF_NAME).is_file():
        sys.exit(f"missing {MODEL_DIR / GGUF_NAME}: run scripts/fetch_smollm2.sh first")
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("logits_*.npy"):
        old.unlink()
    tok, model = load()
    prompts = [one_prompt(tok, model, i, m) for i, m in enumerate(PROMPTS)]
    write_json(OUT / "reference.json", {
        "model": GGUF_NAME,
        "fetch": "scripts/fetch_smollm2.sh",
        "reference": "transformers AutoModelForCausalLM.from_pretrained(dir, gguf_file=...) "
                     "dequantized to float32, float32 CPU math, eager attention",
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "chat_template": tok.chat_template,
        "n_new_tokens": N_NEW,
        "layout": (
            "Positions index prompt_ids + greedy_ids; the logits at position i predict token "
            "i + 1, so position len(prompt_ids) - 1 + k predicts greedy_ids[k]. greedy_ids: "
            "argmax decoding for 64 steps without stopping at EOS (first_eos_index says where "
            "EOS first appears, null if never), prefill then one token per step with a KV cache; "
            "greedy_margins[k] = top-1 minus top-2 logit at that step. teacher_forced: one "
            "forward over prompt_ids + greedy_ids, per position argmax, margin (top-1 minus "
            "top-2), top-5 ids and logits. logits_file: float16 full logits (vocab 49152) for "
            "the positions in logits_positions (the last 2 prompt positions and the first 4 "
            "decode positions) -- only a window is stored to keep the fixtures small."
        ),
        "prompts": prompts,
    })
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
