"""Tokenizing one random prompt: one backend call against the pieces of jackfield/tokenizer/parallel_encode.py.

Each timing encodes a fresh text (random token ids decoded), so the tokenizer's word cache does not
help, as it does not for the random prompts of `bench serving`. Checks that both give the same ids.

Usage: python benchmarks/tokenize_pieces.py TOKENIZER_DIR [--repeats 15]
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

from jackfield.tokenizer.tokenizer import Tokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tokenizer")
    p.add_argument("--repeats", type=int, default=15)
    a = p.parse_args()
    tok = Tokenizer.load(a.tokenizer)
    print("pieces enabled", tok._pieces.enabled, "cores", tok._pieces.cores)
    rng = random.Random(0)
    for n in (1024, 4096):
        one, pieces = [], []
        for _ in range(a.repeats):
            text = tok.decode([rng.randrange(100, min(tok.vocab_size, 49000)) for _ in range(n)])
            start = time.perf_counter()
            tok.backend.encode(text)
            one.append(time.perf_counter() - start)
            text = tok.decode([rng.randrange(100, min(tok.vocab_size, 49000)) for _ in range(n)])
            start = time.perf_counter()
            ids = tok.encode(text)
            pieces.append(time.perf_counter() - start)
            assert ids == tok.backend.encode(text).ids
        print(f"{n} tokens: one call {statistics.median(one) * 1e3:.2f} ms, pieces {statistics.median(pieces) * 1e3:.2f} ms "
              f"(median of {a.repeats}, fresh text)")


if __name__ == "__main__":
    main()
