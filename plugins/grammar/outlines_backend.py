"""outlines: outlines-core's regex automaton over the vocabulary (JSON schema and regex; no EBNF).

A constraint becomes a regex (JSON schemas through outlines-core's `build_regex_from_schema`, with
at most one space between JSON tokens), the regex a token-level `Index` (the compiled grammar),
and each request a `Guide` walking it. EOS is allowed in final states and ends the walk. JSON
schema keywords the regex translation would silently drop (numeric bounds, uniqueItems, …) are
refused with an error naming them, so no output can break its schema.

The forced continuation (jump-forward) is read byte by byte from the mask: a byte is forced while
every allowed token starts with it, EOS is not allowed, and a one-byte token for it exists.
"""
from __future__ import annotations

import json

import numpy as np
import torch

from jackfield.sdk import (Availability, EosTrackingGrammar, GrammarBackend, GrammarError, GrammarVocab, hookimpl,
                           package_availability)
from jackfield.sdk.grammar import MAX_ROLLBACK_TOKENS, bitmask_words

WHITESPACE = r"[ ]?"
IGNORED_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "uniqueItems",
                    "minProperties", "maxProperties", "patternProperties", "propertyNames", "contains", "minContains",
                    "maxContains", "not", "if", "then", "else", "dependentRequired", "dependentSchemas")
NAME_MAPS = ("properties", "$defs", "definitions")  # objects whose keys are names, not keywords
MAX_JUMP_BYTES = 64  # below the guide's rollback depth, so probing never drops its history


def ignored_keywords(node) -> list[str]:
    """Keywords of a JSON schema that the regex translation would drop, outermost first."""
    found = []
    if isinstance(node, dict):
        found += [k for k in node if k in IGNORED_KEYWORDS]
        for key, value in node.items():
            children = value.values() if key in NAME_MAPS and isinstance(value, dict) else [value]
            for child in children:
                found += ignored_keywords(child)
    elif isinstance(node, list):
        for item in node:
            found += ignored_keywords(item)
    return found


class OutlinesGrammar(EosTrackingGrammar):
    def __init__(self, backend: OutlinesBackend, index):
        super().__init__(backend.vocab.eos_token_ids)
        self._backend, self._index = backend, index
        self._guide = backend.oc.Guide(index, max_rollback=MAX_ROLLBACK_TOKENS)

    def can_end(self) -> bool:
        return self._guide.is_finished()

    def advance(self, token_id: int) -> bool:
        if not self._guide.accepts_tokens([token_id]):
            return False
        self._guide.advance(token_id, return_tokens=False)
        return True

    def rollback_tokens(self, num_tokens: int) -> None:
        self._guide.rollback_state(num_tokens)

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        target = bitmask[row]
        self._guide.write_mask_into(target.data_ptr(), target.numel(), 4)

    def copy(self) -> OutlinesGrammar:
        return OutlinesGrammar(self._backend, self._index)

    def jump_forward_string(self) -> str:
        if self.is_terminated():
            return ""
        forced, steps = b"", 0
        while len(forced) < MAX_JUMP_BYTES:
            byte = self._backend.forced_byte(self._guide)
            if byte is None:
                break
            self._guide.advance(self._backend.byte_token[byte], return_tokens=False)
            forced, steps = forced + bytes([byte]), steps + 1
        if steps:
            self._guide.rollback_state(steps)
        return forced.decode("utf-8", errors="ignore")


class OutlinesBackend(GrammarBackend):
    name = "outlines"
    priority = 10
    description = "outlines-core: JSON schema and regex through a token-level regex automaton"

    @classmethod
    def availability(cls) -> Availability:
        return package_availability("outlines_core", "outlines-core", "0.2.0")

    def __init__(self, vocab: GrammarVocab):
        super().__init__(vocab)
        import outlines_core

        self.oc = outlines_core
        tokens: dict[bytes, list[int]] = {}
        for i, piece in enumerate(vocab.tokens):
            if piece and i not in vocab.eos_token_ids:
                tokens.setdefault(piece, []).append(i)
        self.vocabulary = outlines_core.Vocabulary(vocab.eos_token_ids[0], tokens)
        width = bitmask_words(vocab.vocab_size) * 32
        self.first_byte = np.full(width, -1, dtype=np.int16)  # -1: empty token or past the vocabulary
        for i, piece in enumerate(vocab.tokens):
            if piece:
                self.first_byte[i] = piece[0]
        self.byte_token = {piece[0]: i for i, piece in enumerate(vocab.tokens) if len(piece) == 1}
        self.eos = np.array(vocab.eos_token_ids, dtype=np.int64)
        self._mask = torch.zeros(bitmask_words(vocab.vocab_size), dtype=torch.int32)

    def forced_byte(self, guide) -> int | None:
        """The byte every allowed token starts with, when EOS is not allowed; else None."""
        guide.write_mask_into(self._mask.data_ptr(), self._mask.numel(), 4)
        bits = np.unpackbits(self._mask.numpy().view(np.uint8), bitorder="little").astype(bool)
        if bits[self.eos].any():
            return None
        firsts = np.unique(self.first_byte[bits])
        firsts = firsts[firsts >= 0]
        if len(firsts) != 1 or int(firsts[0]) not in self.byte_token:
            return None
        return int(firsts[0])

    def compile_json_schema(self, schema: str) -> OutlinesGrammar:
        dropped = ignored_keywords(json.loads(schema))
        if dropped:
            raise self.unsupported(f"the JSON schema keyword '{dropped[0]}'")
        try:
            regex = self.oc.json_schema.build_regex_from_schema(schema, whitespace_pattern=WHITESPACE)
        except (ValueError, TypeError) as exc:
            raise GrammarError(f"invalid JSON schema: {exc}") from None
        return self.compile_regex(regex)

    def compile_regex(self, regex: str) -> OutlinesGrammar:
        try:
            return OutlinesGrammar(self, self.oc.Index(regex, self.vocabulary))
        except (ValueError, TypeError) as exc:
            raise GrammarError(f"invalid or unsupported regex: {exc}") from None


@hookimpl
def jackfield_register_grammar_backends(register):
    register(OutlinesBackend)
