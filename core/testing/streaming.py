"""Feeding a streaming parser the way the detokenizer does: the text cut at random places."""
from __future__ import annotations

import random
from typing import Iterator


def fed_in_chunks(stream, text: str, seed: int, max_piece: int = 8) -> Iterator:
    """Feed `text` to `stream` in random pieces of 1 to `max_piece` characters, then finish it;
    yield what each call returned."""
    rng, i = random.Random(seed), 0
    while i < len(text):
        n = rng.randint(1, max_piece)
        yield stream.feed(text[i:i + n])
        i += n
    yield stream.finish()
