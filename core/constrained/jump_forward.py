"""Jump-forward decoding (SGLang's historic design, §1.7 of the wave-2 notes).

Where a request's grammar allows exactly one continuation (a fixed key, punctuation), its text is
appended at once instead of one decode forward per token. The scheduler then parks the request:
its computed KV goes into the radix tree, and it re-enters the waiting queue, so the next prefill
extends it by the forced tokens in one forward over the cached prefix (exact: the tree holds only
KV of tokens that were computed).

Re-tokenization happens at the boundary: the text of the last sampled token plus the forced text
is encoded again; it must start with that same last token (otherwise the forced text would fuse
with it, and the request simply decodes one more step before trying again), and the rest are the
new tokens. Already emitted tokens never change. The grammar accepts the new tokens one by one; if
it refuses one (a tokenization it does not allow), it is rolled back and nothing is appended.
"""
from __future__ import annotations

from typing import Callable

from jackfield.sdk.grammar import Grammar

MIN_JUMP_TOKENS = 2  # a one-token jump saves no forward: the extend that follows costs one too


def forced_tokens(tokens: tuple[bytes, ...], encode: Callable[[str], list[int]], last_id: int,
                  forced: str) -> list[int] | None:
    """The tokens that spell `forced` after token `last_id`, or None when the boundary does not hold."""
    try:
        text = (tokens[last_id] + forced.encode("utf-8")).decode("utf-8")
    except (UnicodeDecodeError, IndexError):  # the last token ends inside a character
        return None
    ids = encode(text)
    if len(ids) < 2 or ids[0] != last_id:
        return None
    return ids[1:]


def jump(grammar: Grammar, tokens: tuple[bytes, ...], encode: Callable[[str], list[int]], last_id: int,
         budget: int) -> list[int]:
    """Advance `grammar` over the forced continuation; returns the tokens it accepted (at most
    `budget`), or [] when there is nothing worth jumping."""
    forced = grammar.jump_forward_string()
    new = forced_tokens(tokens, encode, last_id, forced) if forced else None
    if not new:
        return []
    new = new[:budget]
    if len(new) < MIN_JUMP_TOKENS:
        return []
    for n, token in enumerate(new):
        if not grammar.accept_token(token):
            grammar.rollback(n)
            return []
    return new
