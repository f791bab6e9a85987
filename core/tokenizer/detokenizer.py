"""Streaming detokenization and stop-string matching for generated tokens."""

from __future__ import annotations

from jackfield.tokenizer.tokenizer import Tokenizer

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Turn a growing list of token ids into text deltas, one ``add`` call at a time.

    Each call decodes a short window: the tokens from ``surr_offset`` (already emitted, kept as
    context so spacing and merges decode the same way) through the newest token, and emits the
    part after the already emitted window text. Text ending in U+FFFD is an incomplete UTF-8
    sequence split across tokens, so it is held back until a later token completes it, or until
    ``flush`` is called at the end of the stream.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._ids: list[int] = []
        self._surr_offset = 0
        self._read_offset = 0
        self._text = ""

    @property
    def text(self) -> str:
        """All text emitted so far."""
        return self._text

    @property
    def token_ids(self) -> list[int]:
        """All token ids added so far."""
        return self._ids

    def add(self, token_ids: list[int]) -> str:
        """Append ``token_ids`` and return the text they complete (possibly empty)."""
        self._ids.extend(token_ids)
        return self._advance(final=False)

    def flush(self) -> str:
        """Return any held-back text, incomplete characters included, at the end of a stream."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        decode = self._tokenizer.decode
        window_text = decode(self._ids[self._surr_offset:self._read_offset], self._skip_special)
        new_text = decode(self._ids[self._surr_offset:], self._skip_special)
        if len(new_text) <= len(window_text) or (new_text.endswith(REPLACEMENT_CHAR) and not final):
            return ""
        delta = new_text[len(window_text):]
        self._surr_offset = self._read_offset
        self._read_offset = len(self._ids)
        self._text += delta
        return delta


def find_stop(text: str, stops: list[str], start: int = 0) -> tuple[int, str] | None:
    """Find the earliest stop string in ``text`` that may end at or after ``start``.

    The search begins ``max(len(stop)) - 1`` characters before ``start`` so that a stop string
    straddling old and new text is found. Among stops at the same index the longest wins.
    Returns ``(index, stop)`` or None.
    """
    stops = [stop for stop in stops if stop]
    if not stops:
        return None
    begin = max(0, start - max(len(stop) for stop in stops) + 1)
    best: tuple[int, str] | None = None
    for stop in stops:
        index = text.find(stop, begin)
        if index < 0:
            continue
        if best is None or index < best[0] or (index == best[0] and len(stop) > len(best[1])):
            best = (index, stop)
    return best


def hold_back_len(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of some stop string.

    A streaming server emits ``text[:len(text) - hold_back_len(text, stops)]`` so it never sends
    the start of a stop string that may complete with the next token.
    """
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-size:]):
                longest = size
                break
    return longest


class StopStringChecker:
    """Check one request's growing output for stop strings, scanning only text not seen before."""

    def __init__(self, stops: list[str]):
        self.stops = [stop for stop in stops if stop]
        self._checked = 0

    def check(self, full_text: str) -> tuple[str, str] | None:
        """Return ``(text before the stop, stop)`` for the first stop in ``full_text``, else None."""
        if not self.stops:
            return None
        if len(full_text) < self._checked:
            self._checked = 0
        found = find_stop(full_text, self.stops, self._checked)
        self._checked = len(full_text)
        if found is None:
            return None
        index, stop = found
        return full_text[:index], stop

    def hold_back_len(self, full_text: str) -> int:
        """How many trailing characters of ``full_text`` could still begin a stop string."""
        return hold_back_len(full_text, self.stops)
