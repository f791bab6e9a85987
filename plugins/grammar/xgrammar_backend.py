"""xgrammar: MLC's grammar engine (JSON schema, regex and EBNF), the default grammar backend.

The vocabulary reaches xgrammar as raw token bytes (`VocabType.RAW`) with the model's EOS ids as the
stop tokens; one `GrammarCompiler` compiles every constraint (xgrammar caches compiled grammars
too), and each request gets a `GrammarMatcher` over the compiled grammar. JSON is laid out on one
line with ", " and ": " separators (no free whitespace, which small models tend to repeat forever).
"""
from __future__ import annotations

import inspect
import re

import torch

from jackfield.sdk import (Availability, Grammar, GrammarBackend, GrammarError, GrammarVocab, hookimpl,
                           package_availability)
from jackfield.sdk.grammar import MAX_ROLLBACK_TOKENS

LOG_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")  # "[04:02:31] /project/cpp/x.cc:94: "


def compiler_message(exc: Exception) -> str:
    return LOG_PREFIX.sub("", str(exc).strip())


def matcher_options(xgr) -> dict:
    """Older xgrammar keeps no rollback history unless asked; newer keeps all (the option is deprecated)."""
    default = inspect.signature(xgr.GrammarMatcher.__init__).parameters["max_rollback_tokens"].default
    return {} if default == -1 else {"max_rollback_tokens": MAX_ROLLBACK_TOKENS}


class XGrammarGrammar(Grammar):
    def __init__(self, compiled, backend: XGrammarBackend):
        self._compiled, self._backend = compiled, backend
        self._matcher = backend.xgr.GrammarMatcher(compiled, **backend.matcher_options)

    def accept_token(self, token_id: int) -> bool:
        return self._matcher.accept_token(token_id)

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        self._matcher.fill_next_token_bitmask(bitmask, row)

    def is_terminated(self) -> bool:
        return self._matcher.is_terminated()

    def rollback(self, num_tokens: int) -> None:
        self._matcher.rollback(num_tokens)

    def copy(self) -> XGrammarGrammar:
        return XGrammarGrammar(self._compiled, self._backend)

    def jump_forward_string(self) -> str:
        return "" if self._matcher.is_terminated() else self._matcher.find_jump_forward_string()


class XGrammarBackend(GrammarBackend):
    name = "xgrammar"
    priority = 30
    description = "xgrammar: JSON schema, regex and EBNF with a precompiled token mask cache"

    @classmethod
    def availability(cls) -> Availability:
        return package_availability("xgrammar", "xgrammar", "0.1.19")

    def __init__(self, vocab: GrammarVocab):
        super().__init__(vocab)
        import xgrammar as xgr

        self.xgr = xgr
        self.matcher_options = matcher_options(xgr)
        info = xgr.TokenizerInfo(list(vocab.tokens), xgr.VocabType.RAW, vocab_size=vocab.vocab_size,
                                 stop_token_ids=list(vocab.eos_token_ids))
        self.compiler = xgr.GrammarCompiler(info, max_threads=1)

    def _compile(self, fn, *args, **kwargs) -> XGrammarGrammar:
        try:
            return XGrammarGrammar(fn(*args, **kwargs), self)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise GrammarError(compiler_message(exc)) from None

    def compile_json_schema(self, schema: str) -> XGrammarGrammar:
        return self._compile(self.compiler.compile_json_schema, schema, any_whitespace=False)

    def compile_regex(self, regex: str) -> XGrammarGrammar:
        return self._compile(self.compiler.compile_regex, regex)

    def compile_ebnf(self, ebnf: str) -> XGrammarGrammar:
        return self._compile(self.compiler.compile_grammar, ebnf)


@hookimpl
def jackfield_register_grammar_backends(register):
    register(XGrammarBackend)
