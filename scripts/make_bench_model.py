#!/usr/bin/env python3
"""A ≥ 1B-parameter GGUF of random weights that webvlm and llama.cpp both load, for
`scripts/bench_cpu_vs_llama_cpp.sh`: SmolLM2-1.7B's shapes (Llama architecture, 24 blocks,
hidden 2048, FFN 8192, 32 heads, tied embeddings) with SmolLM2-135M's tokenizer copied from
its GGUF, written as F16. llama.cpp's own `llama-quantize` then makes the Q4_K_M mix.

Weights are N(0, 0.02) (norms 1): the figures are of speed, the text is noise.

Usage: make_bench_model.py SMOLLM2-135M.gguf OUT-F16.gguf   (needs numpy and llama.cpp's gguf-py)
"""

import sys

import numpy as np
from gguf import GGUFReader, GGUFWriter  # llama.cpp's gguf-py

# SmolLM2-1.7B (HuggingFaceTB/SmolLM2-1.7B-Instruct config.json).
N_LAYER, N_EMBD, N_FF, N_HEAD, N_HEAD_KV, VOCAB = 24, 2048, 8192, 32, 32, 49152
HEAD_DIM = N_EMBD // N_HEAD
ROPE_BASE, EPS, CTX = 130000.0, 1e-5, 8192


def strings(field) -> list[str]:
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


def scalar(field):
    return field.parts[field.data[0]][0]


def main() -> None:
    src, out = sys.argv[1], sys.argv[2]
    r = GGUFReader(src)
    f = r.fields
    w = GGUFWriter(out, "llama")
    w.add_name("SmolLM2-1.7B shape, random weights (webvlm bench)")
    w.add_block_count(N_LAYER)
    w.add_context_length(CTX)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_freq_base(ROPE_BASE)
    w.add_layer_norm_rms_eps(EPS)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_vocab_size(VOCAB)
    w.add_file_type(1)  # mostly F16
    w.add_tokenizer_model(bytes(f["tokenizer.ggml.model"].parts[-1]).decode())
    w.add_tokenizer_pre(bytes(f["tokenizer.ggml.pre"].parts[-1]).decode())
    w.add_token_list(strings(f["tokenizer.ggml.tokens"]))
    w.add_token_types([int(f["tokenizer.ggml.token_type"].parts[i][0]) for i in f["tokenizer.ggml.token_type"].data])
    w.add_token_merges(strings(f["tokenizer.ggml.merges"]))
    w.add_bos_token_id(int(scalar(f["tokenizer.ggml.bos_token_id"])))
    w.add_eos_token_id(int(scalar(f["tokenizer.ggml.eos_token_id"])))
    w.add_unk_token_id(int(scalar(f["tokenizer.ggml.unknown_token_id"])))
    w.add_pad_token_id(int(scalar(f["tokenizer.ggml.padding_token_id"])))
    w.add_add_bos_token(bool(scalar(f["tokenizer.ggml.add_bos_token"])))
    w.add_add_space_prefix(bool(scalar(f["tokenizer.ggml.add_space_prefix"])))
    w.add_chat_template(bytes(f["tokenizer.chat_template"].parts[-1]).decode())

    rng = np.random.default_rng(1)

    def matrix(rows: int, cols: int) -> np.ndarray:
        # numpy shape [rows][cols]: a GGUF tensor of ne = [cols, rows].
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    w.add_tensor("token_embd.weight", matrix(VOCAB, N_EMBD))
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    kv = N_HEAD_KV * HEAD_DIM
    for i in range(N_LAYER):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(p + "attn_q.weight", matrix(N_EMBD, N_EMBD))
        w.add_tensor(p + "attn_k.weight", matrix(kv, N_EMBD))
        w.add_tensor(p + "attn_v.weight", matrix(kv, N_EMBD))
        w.add_tensor(p + "attn_output.weight", matrix(N_EMBD, N_EMBD))
        w.add_tensor(p + "ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(p + "ffn_gate.weight", matrix(N_FF, N_EMBD))
        w.add_tensor(p + "ffn_up.weight", matrix(N_FF, N_EMBD))
        w.add_tensor(p + "ffn_down.weight", matrix(N_EMBD, N_FF))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
