"""Training text and trainer for the small SentencePiece tokenizers of the tiny models.

The text is built from docstrings of a fixed list of Python standard-library modules (so it
needs no download) plus a few multilingual lines; it depends on the Python version
(fixtures were made with CPython 3.11). Not a script by itself.
"""

from __future__ import annotations

import importlib
from pathlib import Path

STDLIB_MODULES = [
    "argparse", "collections", "csv", "datetime", "decimal", "email", "fractions",
    "functools", "heapq", "inspect", "json", "logging", "pathlib", "pickle", "random",
    "re", "shutil", "statistics", "string", "subprocess", "tarfile", "textwrap",
    "threading", "typing", "unittest", "urllib.parse", "uuid", "zipfile",
]

EXTRA_LINES = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France. Berlin is the capital of Germany.",
    "Le café est très bon à Paris, n'est-ce pas ? Où est la gare ?",
    "Die Straße ist schön, und die Bäume sind grün.",
    "def main():\n\tprint('hello, world')\n\treturn 0\n",
    "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n",
    "1234567890 3.14159 2024-01-01 100% 42",
]


def training_text() -> str:
    parts = []
    for name in STDLIB_MODULES:
        doc = importlib.import_module(name).__doc__ or ""
        parts.append(doc.strip())
    parts.extend(EXTRA_LINES)
    return "\n".join(parts)


def train_spm_bpe(out_dir: Path, vocab_size: int) -> Path:
    """Train a SentencePiece BPE model with byte_fallback; returns the .model path."""
    import sentencepiece as spm

    out_dir.mkdir(parents=True, exist_ok=True)
    text_file = out_dir / "spm_train.txt"
    text_file.write_text(training_text(), encoding="utf-8")
    prefix = out_dir / "spm"
    spm.SentencePieceTrainer.train(
        input=str(text_file),
        model_prefix=str(prefix),
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        num_threads=1,
        seed_sentencepiece_size=100000,
        minloglevel=2,
    )
    return prefix.with_suffix(".model")
