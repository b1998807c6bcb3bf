"""Make ground truth for the load-time quantizers: llama.cpp's own Q8_0/Q4_0/Q4_1/Q4_K bytes.

Builds llama.cpp's `ggml-base` library (which holds `ggml-quants.c`) from the local tree with
its own CMake files (release flags, no -march: the flags llama.cpp's release builds give that
library), compiles `scripts/quantizer_ref.c` against it, feeds it deterministic float32 input
and writes tests/fixtures/quantizers/:
  input.npy            float32 [N_SUPER * 256], super-blocks of 256 values (see CASES)
  q8_0.bin q4_0.bin q4_1.bin q4_k.bin
                       the bytes `ggml_quantize_chunk` (no importance matrix, the call
                       llama-quantize makes) writes for the whole input as one row
  index.json           the case name of each 256-value super-block, sizes, versions
  README.md

Every value is exactly representable in BF16 (the "bf16_*" and edge cases) or in F16
("f16_*"), the values a BF16/F16 safetensors file holds. Build intermediates go to
$WEBVLM_PYREF_WORK/quantizer_ref (never committed).

Run: /work/scratch/qwen/venv/bin/python scripts/make_quantizer_refs.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FIXTURES, LLAMA_CPP, WORK, save_npy, write_json  # noqa: E402

OUT = FIXTURES / "quantizers"
BUILD = WORK / "quantizer_ref"
SEED = 20260113
QK_K = 256
TYPES = ["q8_0", "q4_0", "q4_1", "q4_k"]


README = """# quantizers/

llama.cpp's own quantizer output for one float32 input, made by
`scripts/make_quantizer_refs.py` (do not edit by hand).

- `input.npy`: float32 [{values}], {n} super-blocks of 256 values; `index.json` names the
  case of each (`bf16_*`: random weight-like values rounded to BF16, `f16_*`: rounded to F16,
  the others edge cases built from 32-value blocks, all BF16-exact: zeros, constants, single
  outliers, negative-/positive-only, exact .5 ties, BF16 subnormals and tiny normals, the F16
  subnormal range, sub-blocks of very different scales, large values, ramps, alternating
  signs, sparse, integers).
- {sizes}: `ggml_quantize_chunk(type, input, dst, 0, 1, {values}, NULL)`, the call
  llama-quantize makes without an importance matrix (it runs ggml's `quantize_row_*_ref`),
  from llama.cpp's `ggml-base` built with its own CMake files in release mode.
"""


def bf16(a) -> np.ndarray:
    """Float32 rounded to the nearest BF16 (ties to even), as float32."""
    bits = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


def f16(a) -> np.ndarray:
    return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)


def random_cases(rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    """Weight-like super-blocks: several distributions and scales, BF16- then F16-exact."""
    cases = []
    scales = [0.02, 0.05, 1.0, 1e-3, 30.0, 0.01]
    for i in range(64):
        kind = ["normal", "uniform", "laplace", "shifted", "subscaled", "heavy"][i % 6]
        s = scales[(i // 6) % len(scales)]
        if kind == "normal":
            x = rng.normal(0, s, QK_K)
        elif kind == "uniform":
            x = rng.uniform(-s, s, QK_K)
        elif kind == "laplace":
            x = rng.laplace(0, s, QK_K)
        elif kind == "shifted":  # mostly one sign: Q4_K's min is clamped at 0 in some sub-blocks
            x = rng.normal(2 * s, s, QK_K) * (1 if i % 2 else -1)
        elif kind == "subscaled":  # sub-block scales spread over three decades
            x = rng.normal(0, s, QK_K) * np.repeat(10.0 ** rng.uniform(-2, 1, 8), 32)
        else:  # a few large outliers in normal weights
            x = rng.normal(0, s, QK_K)
            x[rng.integers(0, QK_K, 4)] *= 40
        cases.append((f"{'bf16' if i < 48 else 'f16'}_{kind}", bf16(x) if i < 48 else f16(x)))
    return cases


def edge_cases(rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    """Super-blocks built from 32-value sub-blocks (each one Q8_0/Q4_0/Q4_1 block)."""

    def sb(*subs) -> np.ndarray:
        assert len(subs) == 8
        return bf16(np.concatenate([np.broadcast_to(np.asarray(s, np.float32), 32) for s in subs]))

    def outlier(pos: int, v: float, base=0.0) -> np.ndarray:
        x = np.full(32, base, np.float32) if np.isscalar(base) else np.array(base, np.float32)
        x[pos] = v
        return x

    small = lambda s=0.01: rng.normal(0, s, 32)  # noqa: E731
    halves = np.arange(-16, 16) + 0.5
    return [
        ("zeros", sb(*[0.0] * 8)),
        ("constant", sb(0.5, -0.75, 3.0, -3.0, 1e-3, -1e-3, 256.0, -0.0)),
        ("outlier", sb(outlier(0, 10.0), outlier(31, -10.0), outlier(16, 50.0, small()),
                       outlier(5, -8.0, small()), outlier(7, 1.0, 1e-3), outlier(9, -1.0, -1e-3),
                       outlier(1, 1e-4), outlier(30, 3e4, small(1.0)))),
        ("negative_only", sb(*[-np.abs(rng.normal(0, 10.0 ** -k, 32)) for k in range(8)])),
        ("positive_only", sb(*[np.abs(rng.normal(1, 10.0 ** -k, 32)) + 10.0 ** -k for k in range(8)])),
        # x / d lands on .5 exactly: Q8_0 (amax 127, d 1), Q4_0 (max -8, d 1), Q4_1 (0..15,
        # d 1), and half-integer grids for Q4_K's nearest_int.
        ("ties", sb(np.concatenate([[127.0], halves[1:] * 4]), np.concatenate([[-8.0], halves[1:] / 2]),
                    np.concatenate([[0.0, 15.0], np.arange(30) / 2]), np.arange(32) / 2 - 7.5,
                    halves / 4, np.tile([0.5, -0.5, 1.5, -1.5], 8), np.arange(32) / 2,
                    np.concatenate([[-127.0], -halves[1:] * 4]))),
        # BF16 subnormals and tiny normals: scales whose inverse overflows or that flush to
        # zero as f16.
        ("tiny", sb(rng.normal(0, 1, 32) * 2.0 ** -133, rng.normal(0, 1, 32) * 1e-38,
                    rng.normal(0, 1, 32) * 1e-37, rng.normal(0, 1, 32) * 1e-30,
                    rng.normal(0, 1, 32) * 1e-20, outlier(3, 2.0 ** -130),
                    np.abs(rng.normal(0, 1, 32)) * 1e-38, -np.abs(rng.normal(0, 1, 32)) * 2.0 ** -128)),
        # F16-subnormal range: f16 scales round to subnormals or zero.
        ("tiny_f16_range", sb(*[rng.normal(0, 1, 32) * 10.0 ** -k for k in (4, 5, 6, 7, 8, 9)],
                             outlier(2, 6e-8), np.abs(rng.normal(0, 1e-6, 32)))),
        ("mixed_subblocks", sb(*[rng.normal(0, 10.0 ** (j - 4), 32) for j in range(8)])),
        ("large", sb(rng.normal(0, 1e4, 32), outlier(4, 59904.0, small(100.0)),
                     outlier(4, -59904.0, small(100.0)), np.abs(rng.normal(0, 2e4, 32)),
                     rng.uniform(-3e4, 3e4, 32), 1e4, -1e4, rng.normal(5e3, 1e3, 32))),
        ("ramps", sb(np.arange(32) / 16 - 1, -(np.arange(32) / 16 - 1), np.arange(32),
                     -np.arange(32.0), np.arange(32) / 31, np.arange(32) * 1e-3,
                     np.linspace(-1, 3, 32), np.linspace(2, -5, 32))),
        ("alternating", sb(np.tile([1.0, -1.0], 16), np.tile([0.5, -0.5, 0.0, -0.0], 8),
                           np.tile([1.0, 0.0], 16), np.tile([-1.0, -0.0], 16), np.tile([3.0, 1.0], 16),
                           np.tile([-2.0, -1.0], 16), np.tile([1e-3, -1e-3], 16), np.tile([7.0, -8.0], 16))),
        ("sparse", sb(*[np.where(rng.random(32) < 0.1, rng.normal(0, 1, 32), 0.0) for _ in range(8)])),
        ("integers", sb(*[rng.integers(-8, 8, 32).astype(np.float32) for _ in range(4)],
                        *[rng.integers(0, 16, 32).astype(np.float32) for _ in range(4)])),
        ("one_subblock", sb(*([0.0] * 7 + [rng.normal(0, 1, 32)]))),
        ("near_equal", sb(*[1.0 + np.arange(32) * 2.0 ** -7 * (k % 2) for k in range(8)])),
    ]


def build_harness() -> Path:
    """llama.cpp's ggml-base (release flags) and the harness linked against it."""
    exe = BUILD / "quantizer_ref"
    cmake = shutil.which("cmake") or str(Path(sys.executable).parent / "cmake")
    build = BUILD / "llama-build"
    subprocess.run([cmake, "-S", str(LLAMA_CPP), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                    "-DBUILD_SHARED_LIBS=OFF", "-DGGML_NATIVE=OFF", "-DGGML_OPENMP=OFF",
                    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=OFF",
                    "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_CURL=OFF"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([cmake, "--build", str(build), "--target", "ggml-base", "-j2"], check=True)
    lib = next(build.rglob("libggml-base.a"))
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(Path(__file__).parent / "quantizer_ref.c"),
                    f"-I{LLAMA_CPP / 'ggml' / 'include'}", str(lib), "-lstdc++", "-lm", "-lpthread"],
                   check=True)
    return exe


def main() -> None:
    rng = np.random.default_rng(SEED)
    cases = random_cases(rng) + edge_cases(rng)
    x = np.concatenate([c[1] for c in cases]).astype(np.float32)
    assert x.size == len(cases) * QK_K and np.all(np.isfinite(x))
    exe = build_harness()
    raw = BUILD / "input.f32"
    x.tofile(raw)
    OUT.mkdir(parents=True, exist_ok=True)
    save_npy(OUT / "input.npy", x)
    sizes = {}
    for ty in TYPES:
        out = OUT / f"{ty}.bin"
        subprocess.run([str(exe), ty, str(x.size), str(raw), str(out)], check=True)
        sizes[ty] = out.stat().st_size
    write_json(OUT / "index.json", {
        "super_block": QK_K,
        "cases": [name for name, _ in cases],
        "bytes": sizes,
        "reference": "ggml_quantize_chunk(type, input, dst, 0, 1, n, NULL) of llama.cpp's ggml-base "
                     "(llama-cpp-python 0.3.36 sdist, vendored llama.cpp, ggml 0.25.3)",
        "seed": SEED,
    })
    (OUT / "README.md").write_text(README.format(n=len(cases), values=x.size, sizes=", ".join(
        f"`{ty}.bin` {n} B" for ty, n in sizes.items())))
    print(f"wrote {len(cases)} super-blocks to {OUT}: {sizes}")


if __name__ == "__main__":
    main()
