"""The `draft_model` speculative decoder: a smaller model with the target's vocabulary drafts.

The draft checkpoint (`speculative_draft_model_path`) is loaded like the target and runs through a
DraftRunner (its own KV cache and attention backend). Each step, per request, the draft first
catches up with the tokens it has not seen (the whole prompt at first, then the last step's
accepted tokens and the new root) and commits them to its KV; then it grows an EAGLE-2 style tree
below the root for `speculative_num_steps` steps with `speculative_eagle_topk` children per node
(topk 1 gives a chain) and proposes the best nodes by cumulative draft probability.
"""
from __future__ import annotations

import torch

from jackfield.sdk import Capabilities, DraftProposal, SpecInput, SpecRuntime, SpeculativeDecoder, hookimpl
from jackfield_plugins.spec.tree_search import TreeSearch, subtree


class DraftModelDecoder(SpeculativeDecoder):
    name = "draft_model"
    priority = 5
    capabilities = Capabilities(devices=("cpu", "cuda"))
    description = "Drafts from a smaller model with the same vocabulary, run with its own KV cache"

    def __init__(self, runtime: SpecRuntime):
        super().__init__(runtime)
        if not runtime.draft_model_path:
            raise ValueError("speculative_algorithm 'draft_model' needs speculative_draft_model_path")
        model, config = runtime.load_model(runtime.draft_model_path)
        target_vocab = runtime.model_config.vocab_size
        if config.vocab_size != target_vocab:
            raise ValueError(f"draft model '{runtime.draft_model_path}' has vocabulary size {config.vocab_size}, "
                             f"the target has {target_vocab}: a draft model must share the target's vocabulary")
        self.runner = runtime.make_draft_runner(model, config)

    @classmethod
    def kit_settings(cls, model_dir: str, workdir: str) -> dict:
        return {"speculative_draft_model_path": model_dir, "speculative_eagle_topk": 2, "speculative_num_steps": 3}

    def propose(self, spec_input: SpecInput) -> DraftProposal:
        active = [i for i, b in enumerate(spec_input.max_drafts) if b > 0]
        tokens = [[] for _ in range(len(spec_input))]
        parents = [[] for _ in range(len(spec_input))]
        active = [i for i in active if self._hold(spec_input.req_ids[i])]
        if active:
            searches = self._search(spec_input, active)
            for i, search in zip(active, searches):
                if search is not None:
                    tokens[i], parents[i] = search.select(spec_input.max_drafts[i])
        return DraftProposal.from_lists(tokens, parents)

    def _hold(self, rid: str) -> bool:
        return self.runner.holds(rid) or self.runner.start(rid)

    def _search(self, spec_input: SpecInput, active: list[int]) -> list[TreeSearch | None]:
        rt, runner = self.runtime, self.runner
        rids = [spec_input.req_ids[i] for i in active]
        news = []
        for i, rid in zip(active, rids):
            new = list(spec_input.token_ids[i][runner.committed(rid):])
            if not new:  # it holds the root already (no step since its last proposal): start over
                runner.start(rid)
                new = list(spec_input.token_ids[i])
            news.append(new)
        ends, n = [], 0
        for new in news:
            n += len(new)
            ends.append(n - 1)
        out = runner.forward(rids, news, [list(range(-1, len(t) - 1)) for t in news], [len(t) for t in news], ends)
        if out is None:  # the draft's KV pool is short: let these requests go without drafts
            for rid in rids:
                runner.release(rid)
            return [None] * len(active)
        searches = [TreeSearch(rt.eagle_topk) for _ in active]
        logprobs = torch.log_softmax(out[1].float(), dim=-1)
        for search, lp in zip(searches, logprobs):
            search.expand_root(lp)
        for _ in range(rt.num_steps - 1):
            nodes = [s.forward_nodes() for s in searches]
            trees = [subtree(s, ns) for s, ns in zip(searches, nodes)]
            rows, off = [], 0
            for s, ns in zip(searches, nodes):
                rows += [off + ns.index(f) for f in s.frontier]
                off += len(ns)
            out = runner.forward(rids, [t for t, _ in trees], [p for _, p in trees], [0] * len(rids), rows)
            if out is None:
                break
            logprobs = torch.log_softmax(out[1].float(), dim=-1)
            start = 0
            for s in searches:
                k = len(s.frontier)
                s.expand(logprobs[start:start + k])
                start += k
        return searches

    def release(self, req_id: str) -> None:
        self.runner.release(req_id)


@hookimpl
def jackfield_register_speculative_decoders(register):
    register(DraftModelDecoder)
