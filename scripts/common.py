"""Shared helpers for the fixture scripts (paths, converter invocation, GGUF inspection).

Not a script by itself; imported by the make_*.py scripts in this folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
# What fetch_smollm2.sh and fetch_qwen_tokenizer.sh fetch: $WEBVLM_CACHE, by default (as there
# and in build.sh) ${XDG_CACHE_HOME:-~/.cache}/webvlm.
CACHE = Path(
    os.environ.get("WEBVLM_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "webvlm"
)
# Scratch space for Hugging Face model folders and other intermediates (never committed).
WORK = Path(os.environ.get("WEBVLM_PYREF_WORK", "/work/pyref/work"))
# Unpacked llama-cpp-python sdist (see scripts/README.md).
LLAMA_CPP = Path(
    os.environ.get(
        "LLAMA_CPP_DIR", "/work/pyref/src/llama_cpp_python-0.3.36/vendor/llama.cpp"
    )
)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")


def save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.ascontiguousarray(array))


def convert_hf_to_gguf(hf_dir: Path, outfile: Path, outtype: str, mmproj: bool = False) -> None:
    """Run llama.cpp's own converter (from the llama-cpp-python sdist) on an HF folder."""
    cmd = [
        sys.executable,
        str(LLAMA_CPP / "convert_hf_to_gguf.py"),
        str(hf_dir),
        "--outtype",
        outtype,
        "--outfile",
        str(outfile),
    ]
    if mmproj:
        cmd.append("--mmproj")
    env = dict(os.environ, PYTHONPATH=str(LLAMA_CPP / "gguf-py"))
    outfile.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(cmd, check=True, env=env)


def _field_value(field):
    """Decode a GGUFReader field into a plain Python value (arrays shortened)."""
    from gguf import GGUFValueType

    types = field.types
    if not types:
        return None
    if types[0] == GGUFValueType.ARRAY:
        n = len(field.data)
        sub = types[1] if len(types) > 1 else None
        items = []
        for idx in field.data[:8]:
            part = field.parts[idx]
            if sub == GGUFValueType.STRING:
                items.append(bytes(part).decode("utf-8", errors="replace"))
            else:
                items.append(part.tolist()[0])
        return {"array_len": n, "first": items}
    part = field.parts[field.data[0]]
    if types[0] == GGUFValueType.STRING:
        s = bytes(part).decode("utf-8", errors="replace")
        return s if len(s) <= 200 else s[:200] + f"... ({len(s)} chars)"
    v = part.tolist()[0]
    return v


def gguf_metadata(path: Path) -> dict:
    """All key/value metadata of a GGUF file (arrays shortened to their first items)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return {name: _field_value(f) for name, f in reader.fields.items() if not name.startswith("GGUF.")}


def gguf_tensors(path: Path) -> list[dict]:
    """Name, GGML type and shape (GGUF order: ne0 first) of every tensor in a GGUF file."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return [
        {"name": t.name, "type": t.tensor_type.name, "shape": [int(x) for x in t.shape]}
        for t in reader.tensors
    ]


def gguf_tensor(path: Path, name: str) -> np.ndarray:
    """Dequantized float32 data of one tensor, numpy (row-major) shape."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(path))
    for t in reader.tensors:
        if t.name == name:
            return dequantize(t.data, t.tensor_type).astype(np.float32)
    raise KeyError(name)
