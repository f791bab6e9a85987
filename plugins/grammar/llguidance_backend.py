"""llguidance: Microsoft's Earley-parser grammar engine (JSON schema, regex, and EBNF via Lark).

The vocabulary reaches llguidance as token bytes through its `TokenizerWrapper` (special tokens
are the empty ones; forced text is tokenized with the model's tokenizer). A compiled grammar is a
validated `LLMatcher` in its start state; each request gets a fresh matcher over the same grammar
text. GBNF-style `ebnf` constraints are translated to Lark with llguidance's own converter.

llguidance stops (accepts only EOS) once the constraint is complete, and its matcher enters an
error state on a rejected token, so tokens are validated before it consumes them; EOS is never
given to it (its rollback would not count it): the Grammar records termination itself.
"""
from __future__ import annotations

import json

import torch

from jackfield.sdk import (Availability, EosTrackingGrammar, GrammarBackend, GrammarError, GrammarVocab, hookimpl,
                           package_availability)


JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}  # one line, as xgrammar


NAME_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")


def closed_objects(node):
    """The schema with `additionalProperties: false` on every object schema that does not say
    otherwise: the same policy as xgrammar's strict mode (and outlines), so a model cannot append
    properties forever."""
    if isinstance(node, list):
        return [closed_objects(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: ({name: closed_objects(sub) for name, sub in v.items()} if k in NAME_MAPS and isinstance(v, dict)
               else closed_objects(v)) for k, v in node.items()}
    is_object = node.get("type") == "object" or "properties" in node
    if is_object and not {"additionalProperties", "unevaluatedProperties", "patternProperties"} & node.keys():
        out["additionalProperties"] = False
    return out


class _Tokens:
    """What llguidance's TokenizerWrapper reads from a tokenizer."""

    def __init__(self, vocab: GrammarVocab):
        self.eos_token_id = vocab.eos_token_ids[0]
        self.bos_token_id = None
        self.tokens = list(vocab.tokens)
        self.special_token_ids = [i for i, b in enumerate(vocab.tokens) if not b]
        self._encode = vocab.encode

    def __call__(self, text) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._encode(text)


class LLGuidanceGrammar(EosTrackingGrammar):
    """EOS is never given to llguidance (its rollback would not count it)."""

    def __init__(self, backend: LLGuidanceBackend, grammar: str):
        super().__init__(backend.vocab.eos_token_ids)
        self._backend, self._grammar = backend, grammar
        self._matcher = backend.llg.LLMatcher(backend.tokenizer, grammar)

    def can_end(self) -> bool:
        return self._matcher.is_accepting()

    def advance(self, token_id: int) -> bool:
        return self._matcher.validate_tokens([token_id]) == 1 and self._matcher.consume_token(token_id)

    def rollback_tokens(self, num_tokens: int) -> None:
        self._matcher.rollback(num_tokens)

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        target = bitmask[row]  # contiguous int32 words, llguidance's own layout
        self._matcher.unsafe_compute_mask_ptr(target.data_ptr(), target.numel() * 4)

    def copy(self) -> LLGuidanceGrammar:
        return LLGuidanceGrammar(self._backend, self._grammar)

    def jump_forward_string(self) -> str:
        if self.is_terminated() or self._matcher.is_stopped():
            return ""
        forced = self._matcher.compute_ff_bytes()
        return forced.decode("utf-8", errors="ignore") if forced else ""


class LLGuidanceBackend(GrammarBackend):
    name = "llguidance"
    priority = 20
    description = "llguidance: JSON schema, regex and Lark/EBNF grammars with an Earley parser"

    @classmethod
    def availability(cls) -> Availability:
        return package_availability("llguidance", "llguidance", "0.7.0")

    def __init__(self, vocab: GrammarVocab):
        super().__init__(vocab)
        import llguidance
        import llguidance.gbnf_to_lark  # not llguidance.torch: importing it loads torch.compile (seconds)

        if vocab.encode is None:
            raise ValueError("the llguidance backend needs the tokenizer's encode function (GrammarVocab.encode)")
        self.llg = llguidance
        self._gbnf_to_lark = llguidance.gbnf_to_lark
        self.tokenizer = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Tokens(vocab)), n_vocab=vocab.vocab_size,
                                                eos_token=list(vocab.eos_token_ids))

    def _compile(self, grammar: str) -> LLGuidanceGrammar:
        error = self.llg.LLMatcher.validate_grammar(grammar, self.tokenizer)
        if error:
            raise GrammarError(error.strip())
        return LLGuidanceGrammar(self, grammar)

    def compile_json_schema(self, schema: str) -> LLGuidanceGrammar:
        try:
            strict = closed_objects(json.loads(schema))
            grammar = self.llg.LLMatcher.grammar_from_json_schema(json.dumps(strict), overrides=JSON_LAYOUT)
        except ValueError as exc:
            raise GrammarError(str(exc)) from None
        return self._compile(grammar)

    def compile_regex(self, regex: str) -> LLGuidanceGrammar:
        return self._compile(self.llg.LLMatcher.grammar_from_regex(regex))

    def compile_ebnf(self, ebnf: str) -> LLGuidanceGrammar:
        try:
            lark = self._gbnf_to_lark.gbnf_to_lark(ebnf)
        except Exception as exc:  # the converter raises GbnfToLarkError, or a bare Exception for unknown rules
            raise GrammarError(f"invalid EBNF grammar: {exc}") from None
        return self._compile(self.llg.LLMatcher.grammar_from_lark(lark))


@hookimpl
def jackfield_register_grammar_backends(register):
    register(LLGuidanceBackend)
