"""Helpers of the streaming parsers: markers that may be cut between two increments of text."""
from __future__ import annotations

WHITESPACE = " \t\r\n"


def partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `marker`: the part to hold back."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0
