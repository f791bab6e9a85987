"""Grammar backends: constrain sampling to a JSON schema, a regex or an EBNF grammar.

Two levels, as in SGLang and vLLM: the backend (one per engine and backend name; compiles) and a
`Grammar` (one per request: a matcher that fills the allowed-token bitmask before each step and
advances on each accepted token).

The bitmask has one format for every backend, because a batch mixes requests that chose different
backends (`grammar_backend` per request): int32 words of shape [rows, ceil(vocab_size / 32)], bit
`i % 32` of word `i // 32` set when token `i` is allowed (xgrammar's and llguidance's layout). The
core allocates it (`allocate_bitmask`), each grammar fills its own row, and the core applies the
whole mask to the logits on the device. Backends get the vocabulary as the bytes each token spells
(`GrammarVocab`), so they need no Hugging Face tokenizer and the conformance kit can drive them
over a small synthetic vocabulary.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch

from jackfield.sdk.component import Component

GRAMMAR_KINDS = ("json_schema", "regex", "ebnf")
MAX_ROLLBACK_TOKENS = 200  # how far `Grammar.rollback` must reach (SGLang's speculative depth)


@dataclass(frozen=True)
class GrammarSpec:
    kind: str   # "json_schema" | "regex" | "ebnf"
    value: str  # the schema as JSON text, the regex, or the grammar (GBNF style: `root ::= ...`)


class GrammarError(ValueError):
    """The constraint cannot be compiled; the message is the compiler's."""


class UnsupportedGrammar(GrammarError):
    """The backend does not support this kind of constraint or one of its features; the message
    names the backend and the feature."""


@dataclass(frozen=True)
class GrammarVocab:
    """The tokenizer as grammar backends see it.

    `tokens[i]` is the exact byte string token `i` spells (byte-level and byte-fallback pieces
    already decoded); special and control tokens are `b""` and are never allowed, except the EOS
    ids, which a grammar allows where the constraint may end. `vocab_size` is the width of the
    model's logits (it may exceed `len(tokens)`; the extra ids are never allowed). `encode` turns
    text into token ids with the model's tokenizer (backends that tokenize forced text use it).
    """

    tokens: tuple[bytes, ...]
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    encode: Callable[[str], list[int]] | None = field(default=None, compare=False)


def bitmask_words(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


def allocate_bitmask(rows: int, vocab_size: int) -> torch.Tensor:
    """A CPU bitmask of `rows` rows with every token allowed."""
    return torch.full((rows, bitmask_words(vocab_size)), -1, dtype=torch.int32)


class Grammar(ABC):
    """One request's matcher. Methods run on the scheduler thread, one request at a time."""

    @abstractmethod
    def accept_token(self, token_id: int) -> bool:
        """Advance on a sampled token. A token the grammar does not allow returns False and
        leaves the state unchanged. Accepting an EOS id where the constraint may end terminates."""

    @abstractmethod
    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed tokens of the next step into `bitmask[row]` (int32 CPU, SDK format)."""

    @abstractmethod
    def is_terminated(self) -> bool:
        """True once an EOS id has been accepted (nothing more may follow)."""

    @abstractmethod
    def rollback(self, num_tokens: int) -> None:
        """Undo the last `num_tokens` accepted tokens (up to MAX_ROLLBACK_TOKENS); used by
        speculative decoding and jump-forward re-tokenization."""

    @abstractmethod
    def copy(self) -> Grammar:
        """A new matcher for the same compiled constraint, in its start state. The core caches
        one compiled grammar per constraint and gives each request a copy."""

    def jump_forward_string(self) -> str:
        """The text the constraint forces next (the only continuation it allows), or "" when
        there is a choice or the constraint may end here. Never cut inside a UTF-8 character."""
        return ""


class EosTrackingGrammar(Grammar):
    """A Grammar over a matcher that never consumes EOS itself (llguidance, outlines-core): EOS is
    accepted where `can_end()`, termination is recorded here, and `rollback` undoes it as the last
    token. Subclasses implement `can_end`, `advance(token_id) -> bool` (refusing leaves the state
    unchanged) and `rollback_tokens(n)`."""

    def __init__(self, eos_token_ids: tuple[int, ...]):
        self._eos, self._terminated = frozenset(eos_token_ids), False

    @abstractmethod
    def can_end(self) -> bool:
        """Whether the constraint is complete here (EOS is allowed)."""

    @abstractmethod
    def advance(self, token_id: int) -> bool:
        """Consume a non-EOS token; False (state unchanged) if the constraint refuses it."""

    @abstractmethod
    def rollback_tokens(self, num_tokens: int) -> None:
        """Undo the last `num_tokens` consumed non-EOS tokens."""

    def accept_token(self, token_id: int) -> bool:
        if self._terminated:
            return False
        if token_id in self._eos:
            self._terminated = self.can_end()
            return self._terminated
        return self.advance(token_id)

    def is_terminated(self) -> bool:
        return self._terminated

    def rollback(self, num_tokens: int) -> None:
        if num_tokens > 0 and self._terminated:
            self._terminated, num_tokens = False, num_tokens - 1
        if num_tokens > 0:
            self.rollback_tokens(num_tokens)


class GrammarBackend(Component):
    """Compiles constraints into Grammars for one vocabulary.

    Constructed once per engine and backend name with a `GrammarVocab`, on the grammar compile
    thread. `compile` is called on that thread too (never on the scheduler's critical path) and
    dispatches on the kind; a backend overrides the `compile_*` methods it supports, the others
    raise UnsupportedGrammar naming the backend and the kind.
    """

    kind: ClassVar[str] = "grammar"

    def __init__(self, vocab: GrammarVocab):
        self.vocab = vocab

    def compile(self, spec: GrammarSpec) -> Grammar:
        """A Grammar in its start state; raises GrammarError with the compiler's message."""
        if spec.kind not in GRAMMAR_KINDS:
            raise GrammarError(f"unknown constraint kind {spec.kind!r} (kinds: {', '.join(GRAMMAR_KINDS)})")
        return getattr(self, f"compile_{spec.kind}")(spec.value)

    def compile_json_schema(self, schema: str) -> Grammar:
        raise self.unsupported("json_schema constraints")

    def compile_regex(self, regex: str) -> Grammar:
        raise self.unsupported("regex constraints")

    def compile_ebnf(self, ebnf: str) -> Grammar:
        raise self.unsupported("ebnf constraints")

    def unsupported(self, feature: str) -> UnsupportedGrammar:
        return UnsupportedGrammar(f"grammar backend '{self.name}' does not support {feature}")
