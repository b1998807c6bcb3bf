#!/usr/bin/env python3
"""The error of 8-bit activations against the f32 reference, webvlm's CPU backend beside
llama.cpp's, in one run: SmolLM2-135M Q4_1 teacher-forced on `tests/fixtures/smollm2`'s
prompts and greedy replies, relative L2 of the logits at the fixture's positions against
transformers on the same GGUF dequantized to f32 (`scripts/make_smollm2_refs.py`).

webvlm runs `webvlm logits --backend cpu` in fast mode (activations quantized per block of
32, as llama.cpp's CPU backend does) and in exact mode; llama.cpp runs through
llama-cpp-python (`LLAMA_CPP_LIB_PATH` picks another build of its library, e.g. one made
with GGML_NATIVE=ON). Prints one line per engine: median, 90th percentile and worst rel L2,
and the argmax agreement with the reference.

Usage: fast_mode_error.py WEBVLM-BINARY MODEL.gguf [THREADS]   (python with numpy and llama_cpp)
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "smollm2"


def rel_l2(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def webvlm_logits(binary: str, model: str, tokens: list[int], threads: int, mode: str) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "logits.npy"
        subprocess.run([binary, "logits", "--model", model, "--backend", "cpu", "--cpu-mode", mode,
                        "--threads", str(threads), "--kv-f32", "--ctx", "256",
                        "--tokens", ",".join(map(str, tokens)), "--out", str(out)],
                       check=True, stderr=subprocess.DEVNULL)
        return np.load(out)


def main() -> None:
    binary, model = sys.argv[1], sys.argv[2]
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    ref = json.loads((FIXTURE / "reference.json").read_text())
    from llama_cpp import Llama  # imported late: its library path comes from the environment

    llm = Llama(model_path=model, n_ctx=256, n_batch=256, n_threads=threads, logits_all=True, verbose=False)
    engines = {
        "webvlm CPU backend, fast mode": lambda t: webvlm_logits(binary, model, t, threads, "fast"),
        "webvlm CPU backend, exact mode": lambda t: webvlm_logits(binary, model, t, threads, "exact"),
        "llama.cpp CPU backend": lambda t: (llm.reset(), llm.eval(t), np.array(llm.scores[: len(t)]))[2],
    }
    for name, logits_of in engines.items():
        errors, agree, total = [], 0, 0
        for p in ref["prompts"]:
            tokens = p["prompt_ids"] + p["greedy_ids"]
            logits = logits_of(tokens).astype(np.float32)
            want = np.load(FIXTURE / p["logits_file"]).astype(np.float32)
            for pos, w in zip(p["logits_positions"], want):
                errors.append(rel_l2(logits[pos], w))
            for pos, a in enumerate(p["teacher_forced"]["argmax"]):
                total += 1
                agree += int(np.argmax(logits[pos]) == a)
        e = np.array(errors)
        print(f"{name:<32} rel L2 median {np.median(e):.4f}  p90 {np.quantile(e, 0.9):.4f}  worst {e.max():.4f}"
              f"  ({len(e)} positions); argmax agreement {agree}/{total}")


if __name__ == "__main__":
    main()
