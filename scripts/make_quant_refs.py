"""Make ground truth for GGUF block formats: raw block bytes and gguf-py's dequantization.

For each type in TYPES writes tests/fixtures/quant/<type>.bin (raw bytes, a whole number of
blocks) and <type>.npy (float32, one value per element, in file order) computed by
`gguf.quants.dequantize` (the pip `gguf` package, the same code as llama.cpp's gguf-py).
Block bytes are random except that every f16 scale field is overwritten with a finite,
moderate value (so no NaN/Inf and no overflow). F16/BF16 data are random moderate values
plus a few edge values (+0, -0, f16 subnormals, min normal). Also writes README.md.

Run: /work/pyref/bin/python scripts/make_quant_refs.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FIXTURES, write_json  # noqa: E402

OUT = FIXTURES / "quant"
SEED = 20240611
N_VALUES = 2048  # 64 blocks of 32 or 8 super-blocks of 256

# Byte offsets of the f16 scale fields inside one block, per type (GGML block structs).
F16_FIELDS = {
    "Q8_0": [0],          # d, then 32 x int8
    "Q4_0": [0],          # d, then 16 bytes of nibbles
    "Q4_1": [0, 2],       # d, m, then 16 bytes of nibbles
    "Q4_K": [0, 2],       # d, dmin, scales[12], qs[128]
    "Q5_K": [0, 2],       # d, dmin, scales[12], qh[32], qs[128]
    "Q6_K": [208],        # ql[128], qh[64], scales[16] (int8), d
}
TYPES = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K"]


def f16_scales(rng: np.random.Generator, n: int) -> np.ndarray:
    """Finite moderate f16 scales of both signs, magnitudes 1e-3 .. 1e-1."""
    mag = 10.0 ** rng.uniform(-3, -1, n)
    sign = np.where(rng.random(n) < 0.25, -1.0, 1.0)
    return (mag * sign).astype(np.float16)


def quant_blocks(rng: np.random.Generator, name: str) -> bytes:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[name]]
    n_blocks = N_VALUES // block_size
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for offset in F16_FIELDS[name]:
        raw[:, offset:offset + 2] = f16_scales(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return raw.tobytes()


def float_values(rng: np.random.Generator, name: str) -> bytes:
    vals = rng.normal(0.0, 1.0, N_VALUES).astype(np.float32)
    edge = np.array([0.0, -0.0, 6.0e-8, -6.0e-8, 6.1035156e-05, 1.0, -2.0, 65504.0], np.float32)
    vals[: len(edge)] = edge
    if name == "F16":
        return vals.astype(np.float16).tobytes()
    # BF16 = the high 16 bits of f32 (truncation is fine for making test bytes).
    return (vals.view(np.uint32) >> 16).astype(np.uint16).tobytes()


def dequantize(name: str, data: bytes) -> np.ndarray:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize

    raw = np.frombuffer(data, dtype=np.uint8)
    return np.asarray(gguf_dequantize(raw, GGMLQuantizationType[name]), dtype=np.float32).reshape(-1)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    index = {}
    for name in TYPES:
        data = float_values(rng, name) if name in ("F16", "BF16") else quant_blocks(rng, name)
        values = dequantize(name, data)
        assert values.shape == (N_VALUES,) and np.isfinite(values).all(), name
        (OUT / f"{name}.bin").write_bytes(data)
        np.save(OUT / f"{name}.npy", values)
        index[name] = {"bin": f"{name}.bin", "npy": f"{name}.npy", "n_bytes": len(data),
                       "n_values": N_VALUES}
    write_json(OUT / "index.json", index)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
