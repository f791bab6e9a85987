"""The bytes each token spells, for grammar backends (`GrammarVocab`).

Read from the tokenizer's own description (`tokenizer.json`): byte-level BPE pieces (GPT-2, Llama 3,
Qwen, SmolLM2) map each character back to its byte; SentencePiece-style pieces (Llama 2, Mistral)
turn `▁` into a space and `<0xNN>` byte-fallback pieces into that byte; other pieces are their
UTF-8 text. Special added tokens spell nothing (b""): a constraint never allows them as text.
"""
from __future__ import annotations

import functools
import json
import re

from jackfield.sdk.grammar import GrammarVocab

BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@functools.lru_cache(maxsize=1)
def byte_level_decoder() -> dict[str, int]:
    """GPT-2's printable-character alphabet for the 256 byte values, inverted."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _decoder_kinds(decoder: dict | None) -> set[str]:
    if not decoder:
        return set()
    kinds = {decoder.get("type", "")}
    for sub in decoder.get("decoders") or ():
        kinds |= _decoder_kinds(sub)
    return kinds


def _piece_bytes(piece: str, kinds: set[str]) -> bytes:
    if "ByteLevel" in kinds:
        table = byte_level_decoder()
        if all(c in table for c in piece):
            return bytes(table[c] for c in piece)
    if "ByteFallback" in kinds and (m := BYTE_PIECE.fullmatch(piece)):
        return bytes([int(m.group(1), 16)])
    if "Metaspace" in kinds or "Replace" in kinds:
        piece = piece.replace("▁", " ")
    return piece.encode("utf-8")


def token_bytes(backend) -> list[bytes]:
    """tokens[i] = the bytes token i spells, for a `tokenizers.Tokenizer` backend."""
    spec = json.loads(backend.to_str())
    kinds = _decoder_kinds(spec.get("decoder"))
    special = {a["id"] for a in spec.get("added_tokens", []) if a.get("special")}
    out = [b""] * backend.get_vocab_size(with_added_tokens=True)
    for piece, i in backend.get_vocab(with_added_tokens=True).items():
        if i not in special:
            out[i] = _piece_bytes(piece, kinds)
    return out


def grammar_vocab(tokenizer, vocab_size: int, eos_token_ids: tuple[int, ...]) -> GrammarVocab:
    """The GrammarVocab of a jackfield Tokenizer for a model whose logits are `vocab_size` wide."""
    tokens = token_bytes(tokenizer.backend)[:vocab_size]
    return GrammarVocab(tuple(tokens), vocab_size, tuple(eos_token_ids),
                        encode=functools.partial(tokenizer.encode, add_special_tokens=False))
