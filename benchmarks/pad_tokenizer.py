"""Write a copy of a tokenizer whose vocabulary covers a model's: for dummy-weight benchmarks.

A model with dummy (random) weights samples any id of its vocabulary, and a tokenizer borrowed for
it is often smaller (SmolLM2's 49,152 tokens for the 8B shape's 128,256). The ids past the
tokenizer's end decode to nothing, so an OpenAI stream sends no chunk for them, and a client that
times the first chunk with text (ours, SGLang's bench_serving) counts every such token as more
time to the first token and a longer gap between tokens. The padded copy spells id i past the
original end as " pad<i>" (byte-level BPE vocabulary entries without merges: encoding never
produces them, so prompts tokenize as before).

Usage: python benchmarks/pad_tokenizer.py SRC_DIR DST_DIR (--vocab-size 128256 | --model-config CONFIG_JSON)
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def pad_tokenizer(src: Path, dst: Path, vocab_size: int) -> int:
    """Copy the tokenizer files of `src` to `dst`, padding tokenizer.json's BPE vocabulary to
    `vocab_size` ids; returns how many entries were added."""
    spec = json.loads((src / "tokenizer.json").read_text())
    model = spec["model"]
    if model.get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise SystemExit(f"{src}: only byte-level BPE tokenizers can be padded (model {model.get('type')}, "
                         f"decoder {(spec.get('decoder') or {}).get('type')})")
    vocab: dict[str, int] = model["vocab"]
    taken = set(vocab.values()) | {t["id"] for t in spec.get("added_tokens", [])}
    start = max(taken) + 1
    if vocab_size <= start:
        raise SystemExit(f"{src} already has {start} ids, not fewer than --vocab-size {vocab_size}")
    for i in range(start, vocab_size):
        vocab[f"\u0120pad{i}"] = i  # "Ġ" is the byte-level spelling of a space
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "tokenizer.json":
            shutil.copy(f, dst / f.name)
    (dst / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
    return vocab_size - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--vocab-size", type=int, help="the model's vocab_size")
    size.add_argument("--model-config", type=Path, help="the model's config.json (its vocab_size)")
    a = p.parse_args()
    vocab_size = a.vocab_size or json.loads(a.model_config.read_text())["vocab_size"]
    added = pad_tokenizer(a.src, a.dst, vocab_size)
    print(f"wrote {a.dst}: {added} ids added, {vocab_size} in all")


if __name__ == "__main__":
    main()
