"""Make ground truth for the safetensors reader: files written by the `safetensors` package
and by transformers' sharded `save_pretrained`, with every tensor's values as float32 .npy.

Writes tests/fixtures/safetensors/:
- single.safetensors (`safetensors.torch.save_file`): F32, F16 and BF16 tensors of 0-D
  (scalar), 1-D, 2-D and 3-D shapes, an I64 buffer (a dtype webvlm does not load as a
  weight), and `__metadata__`;
- sharded/: a tiny random LlamaForCausalLM in bfloat16 saved by transformers with
  `max_shard_size` small enough for three shards (model-0000N-of-00003.safetensors and
  model.safetensors.index.json, as transformers writes them; config files dropped);
- expected.json: per file, every tensor's dtype and shape as `safe_open` reports them, and
  the metadata; for the sharded folder also the weight map;
- npy/<file stem>/<tensor name>.npy: the values as float32 (exact for F16/BF16), in the
  tensor's row-major shape (I64 tensors skipped).

Run: /work/pyref/bin/python scripts/make_safetensors_refs.py
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FIXTURES, write_json  # noqa: E402

OUT = FIXTURES / "safetensors"
SEED = 20260513


def single_tensors(gen: torch.Generator) -> dict[str, torch.Tensor]:
    def rand(*shape):
        return torch.randn(*shape, generator=gen)

    return {
        "embed.weight": rand(6, 4).to(torch.bfloat16),
        "layers.0.proj.weight": rand(3, 5).to(torch.float16),
        "layers.0.proj.bias": rand(3),
        "layers.0.norm.weight": rand(5).to(torch.bfloat16),
        "conv.weight": rand(2, 3, 4).to(torch.float32),
        "patch.weight": rand(2, 3, 2, 2).to(torch.float16),
        "scale": torch.tensor(0.125, dtype=torch.float32),
        "position_ids": torch.arange(7, dtype=torch.int64).reshape(1, 7),
    }


def save_sharded(dest: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=48,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    tmp = dest.parent / (dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, max_shard_size="4KB")
    shards = sorted(tmp.glob("model-*.safetensors"))
    assert len(shards) == 3, f"expected 3 shards, got {[s.name for s in shards]}"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for f in shards + [tmp / "model.safetensors.index.json"]:
        shutil.copy(f, dest / f.name)
    shutil.rmtree(tmp)


def describe(path: Path, npy_dir: Path) -> dict:
    """Dtypes, shapes and metadata as the safetensors package reads them; values as .npy."""
    tensors = {}
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        for name in f.keys():
            sl = f.get_slice(name)
            tensors[name] = {"dtype": sl.get_dtype(), "shape": list(sl.get_shape())}
            t = f.get_tensor(name)
            if t.is_floating_point():
                # np.save directly: common.save_npy's ascontiguousarray makes a scalar 1-D.
                npy_dir.mkdir(parents=True, exist_ok=True)
                np.save(npy_dir / f"{name}.npy", t.to(torch.float32).contiguous().numpy())
    return {"metadata": metadata, "tensors": tensors}


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    gen = torch.Generator().manual_seed(SEED)
    single = OUT / "single.safetensors"
    # One metadata key: the writer serializes the map in hash order, so two would make the
    # file's bytes differ from run to run.
    save_file(single_tensors(gen), str(single), metadata={"format": "pt"})
    save_sharded(OUT / "sharded")

    expected = {"single.safetensors": describe(single, OUT / "npy" / "single")}
    for shard in sorted((OUT / "sharded").glob("model-*.safetensors")):
        expected[f"sharded/{shard.name}"] = describe(shard, OUT / "npy" / shard.stem)
    import json

    index = json.loads((OUT / "sharded" / "model.safetensors.index.json").read_text())
    expected["weight_map"] = index["weight_map"]
    write_json(OUT / "expected.json", expected)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total} bytes)")


if __name__ == "__main__":
    main()
