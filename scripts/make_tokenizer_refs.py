"""Make tokenizer and chat-template reference outputs.

Writes tests/fixtures/tokenizer/:
  corpus.json                      the test strings (multilingual, emoji, code, whitespace, ...)
  expected_<tok>.json              per string: ids with add_special_tokens False/True, and
                                   decode(ids, skip_special_tokens=False), from transformers
  chat_<model>.json                conversations and the exact text of
                                   apply_chat_template(..., tokenize=False,
                                   add_generation_prompt=True), plus its ids

Tokenizers: smollm2 (loaded by transformers from the real GGUF), tekken (the HF tokenizer of
tests/fixtures/tiny_mistral3_tekken, converted from mistral-common's tekken_240911.json) and
llama_spm (the SentencePiece BPE of tests/fixtures/tiny_llama_spm). Run make_tiny_models.py
and fetch_smollm2.sh first. Extra cross-checks: `spm_ids` (the sentencepiece library on the
same tokenizer.model) for llama_spm and `mistral_common_ids` (mistral-common's Tekkenizer,
special tokens in text not parsed) for tekken.

Run: /work/pyref/bin/python scripts/make_tokenizer_refs.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, FIXTURES, WORK, write_json  # noqa: E402

OUT = FIXTURES / "tokenizer"
SMOL_DIR = CACHE / "models"
SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

CORPUS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France?",
    "Le cœur déçu mais l'âme plutôt naïve, Louÿs rêva de crapaüter en canoë.",
    "Falsches Üben von Xylophonmusik quält jeden größeren Zwerg. Straße, Maß.",
    "我能吞下玻璃而不伤身体。北京是中国的首都。",
    "私はガラスを食べられます。それは私を傷つけません。カタカナ、ひらがな。",
    "أنا قادر على أكل الزجاج و هذا لا يؤلمني.",
    "मैं काँच खा सकता हूँ और मुझे उससे कोई चोट नहीं पहुंचती।",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Emoji: 😀 👍🏽 ❤️ 🦙🦙",
    "Family ZWJ: 👨‍👩‍👧‍👦 and 🧑🏻‍💻, flags: 🇫🇷🇩🇪🇯🇵 🏳️‍🌈",
    "fn main() {\n\tlet x: Vec<u32> = (0..10).map(|i| i * i).collect();\n\tprintln!(\"{:?}\", x);\n}\n",
    "def f(x):\n    if x > 0:\n        return x ** 2\n    return -x  # negative\n",
    "a  b   c    d     e      f       g",
    "x" + " " * 20 + "y",
    " " * 7,
    "   leading spaces",
    "trailing spaces   ",
    "\tTabbed\t\ttext\t",
    "line one\r\nline two\r\n\r\nline four",
    "\n\n\nthree newlines then text\n",
    "Numbers: 0 7 42 123 4567 89012 3141592653589793 1,000,000.25 -3.5e-7",
    "Phone 555-0123, year 2024, version v1.2.3, hex 0xDEADBEEF",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "[INST] What is 2+2? [/INST]",
    "<s>[SYSTEM_PROMPT]Be brief.[/SYSTEM_PROMPT][INST]Hi[/INST]</s>",
    "<unk> <pad> <|endoftext|> [IMG][IMG_BREAK][IMG_END]",
    "Mixed: naïve café 日本語 русский 🤖 code_snippet(x=1)",
    "URL https://example.com/path?q=a%20b&x=1#frag and e-mail a.b@c.org",
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there",
    "",
]

CONVERSATIONS = [
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about autumn."}],
    [{"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke about cats."}],
    [{"role": "system", "content": "Answer in French."},
     {"role": "user", "content": "How are you?"},
     {"role": "assistant", "content": "Très bien, merci !"},
     {"role": "user", "content": "Et toi, quel temps fait-il à Paris ?"}],
]


def load_tokenizers() -> dict:
    from transformers import AutoTokenizer

    return {
        "smollm2": AutoTokenizer.from_pretrained(SMOL_DIR, gguf_file=SMOL_GGUF),
        "tekken": AutoTokenizer.from_pretrained(WORK / "tiny_mistral3_tekken" / "hf"),
        "llama_spm": AutoTokenizer.from_pretrained(WORK / "tiny_llama_spm" / "hf"),
    }


def cross_check_encoders() -> dict:
    """Independent encoders of the same vocabularies (not transformers)."""
    import mistral_common
    import sentencepiece as spm
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    sp = spm.SentencePieceProcessor(model_file=str(WORK / "tiny_llama_spm" / "hf" / "tokenizer.model"))
    tekken = Tekkenizer.from_file(str(Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"))
    return {
        "llama_spm": ("spm_ids", lambda s: sp.encode(s)),
        "tekken": ("mistral_common_ids", lambda s: tekken.encode(s, bos=False, eos=False)),
    }


def expected_for(name: str, tok, cross) -> dict:
    entries = []
    for text in CORPUS:
        ids = tok.encode(text, add_special_tokens=False)
        ids_special = tok.encode(text, add_special_tokens=True)
        entry = {
            "text": text,
            "ids": ids,
            "ids_with_special": ids_special,
            "decoded": tok.decode(ids, skip_special_tokens=False),
            "decoded_with_special": tok.decode(ids_special, skip_special_tokens=False),
        }
        if cross:
            key, encode = cross
            entry[key] = list(encode(text))
            entry[key + "_match"] = entry[key] == ids
        entries.append(entry)
    return {
        "tokenizer": name,
        "source": type(tok).__name__,
        "vocab_size": len(tok),
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "notes": "ids: encode(text, add_special_tokens=False); ids_with_special: "
                 "add_special_tokens=True; decoded*: decode(ids, skip_special_tokens=False). "
                 "Special-token text in the input IS matched as special tokens by transformers.",
        "entries": entries,
    }


def chat_for(name: str, tok) -> dict:
    renders = []
    for messages in CONVERSATIONS:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        renders.append({"messages": messages, "add_generation_prompt": True, "text": text,
                        "ids": tok.encode(text, add_special_tokens=False)})
    return {"tokenizer": name, "chat_template": tok.chat_template, "conversations": renders}


def main() -> None:
    toks = load_tokenizers()
    cross = cross_check_encoders()
    write_json(OUT / "corpus.json", CORPUS)
    for name, tok in toks.items():
        doc = expected_for(name, tok, cross.get(name))
        write_json(OUT / f"expected_{name}.json", doc)
        mism = [i for i, e in enumerate(doc["entries"]) if e.get(next(iter(cross.get(name, ("x",))))
                                                               + "_match", True) is False]
        print(name, "cross-check mismatches at corpus indices:", mism)
    write_json(OUT / "chat_smollm2.json", chat_for("smollm2", toks["smollm2"]))
    write_json(OUT / "chat_tiny_mistral3_tekken.json", chat_for("tekken", toks["tekken"]))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
