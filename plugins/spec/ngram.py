"""The `ngram` speculative decoder: drafts copied from earlier text, no weights.

Per request, the last n tokens (n from `speculative_ngram_max_match` down to `_min_match`) are
looked up in the request's own tokens; the tokens that followed their latest occurrences become
draft paths. Whatever budget is left goes to continuations from a trie over the token windows of
recent requests (as SGLang's ngram corpus). Several matches make a tree: paths share their common
prefixes (ngram_corpus.DraftTree).

A released request's tokens go into the trie at the next `propose`, not on release: requests leave
from plain decode steps as often as from speculative ones, and inserting a request's windows there
(a few microseconds per token and trie level in Python, milliseconds per request) would stall plain
steps, also those of a batch the load policy keeps plain. Only the latest `PENDING` released
requests wait; older ones are the first a full trie would forget anyway.
"""
from __future__ import annotations

from collections import deque

from jackfield.sdk import Capabilities, DraftProposal, SpecInput, SpecRuntime, SpeculativeDecoder, hookimpl
from jackfield_plugins.spec.ngram_corpus import DraftTree, HistoryIndex, TokenTrie

MAX_BRANCHES = 4  # distinct continuations merged per request
PENDING = 64      # released requests whose tokens wait for the next propose to enter the trie


class NgramDecoder(SpeculativeDecoder):
    name = "ngram"
    priority = 10
    capabilities = Capabilities(devices=("cpu", "cuda"))
    description = "Drafts from n-gram matches in the request's own tokens and a trie over recent requests"

    def __init__(self, runtime: SpecRuntime):
        super().__init__(runtime)
        s = runtime.settings
        self.min_n = getattr(s, "speculative_ngram_min_match", 1)
        self.max_n = max(self.min_n, getattr(s, "speculative_ngram_max_match", 6))
        self.trie = TokenTrie(getattr(s, "speculative_ngram_max_trie_depth", 12),
                              getattr(s, "speculative_ngram_capacity", 500_000))
        self.history: dict[str, HistoryIndex] = {}
        self.pending: deque[list[int]] = deque(maxlen=PENDING)

    def propose(self, spec_input: SpecInput) -> DraftProposal:
        while self.pending:
            self.trie.insert(self.pending.popleft())
        tokens, parents = [], []
        for rid, ids, budget in zip(spec_input.req_ids, spec_input.token_ids, spec_input.max_drafts):
            tree = DraftTree(budget)
            if budget > 0:
                index = self.history.get(rid)
                if index is None:
                    index = self.history[rid] = HistoryIndex(self.min_n, self.max_n)
                index.extend_to(ids)
                for path in index.continuations(budget, MAX_BRANCHES):
                    tree.add(path)
                if len(tree.tokens) < budget:
                    suffix = index.tokens[-self.max_n:]
                    for path in self.trie.continuations(suffix, self.min_n, self.max_n, budget, MAX_BRANCHES):
                        tree.add(path)
            tokens.append(tree.tokens)
            parents.append(tree.parents)
        return DraftProposal.from_lists(tokens, parents)

    def release(self, req_id: str) -> None:
        index = self.history.pop(req_id, None)
        if index is not None:
            self.pending.append(index.tokens)


@hookimpl
def jackfield_register_speculative_decoders(register):
    register(NgramDecoder)
