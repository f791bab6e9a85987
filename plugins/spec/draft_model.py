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
from jackfield_plugins.spec.draft_growth import catch_up_rows, enable_chain_graphs, grow_chain, grow_tree


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
        enable_chain_graphs(runtime, self.runner, None)

    @classmethod
    def kit_settings(cls, model_dir: str, workdir: str) -> dict:
        return {"speculative_draft_model_path": model_dir, "speculative_eagle_topk": 2, "speculative_num_steps": 3}

    def propose(self, spec_input: SpecInput) -> DraftProposal:
        rt = self.runtime
        tokens, parents = [[] for _ in range(len(spec_input))], [[] for _ in range(len(spec_input))]
        active = [i for i, b in enumerate(spec_input.max_drafts) if b > 0 and self._hold(spec_input.req_ids[i])]
        caught = self._catch_up(spec_input, active) if active else None
        if caught is None:
            return DraftProposal.from_lists(tokens, parents)
        rids, root_logits = caught
        if rt.eagle_topk == 1:
            drafts = grow_chain(self.runner, rids, root_logits, rt.num_steps)
        else:
            drafts = grow_tree(self.runner, rids, root_logits, rt.eagle_topk, rt.num_steps)
        for i, draft in zip(active, drafts):
            tokens[i], parents[i] = draft.select(spec_input.max_drafts[i])
        return DraftProposal.from_lists(tokens, parents)

    def _hold(self, rid: str) -> bool:
        return self.runner.holds(rid) or self.runner.start(rid)

    def _catch_up(self, spec_input: SpecInput, active: list[int]) -> tuple[list[str], torch.Tensor] | None:
        """Commit the tokens each request's draft KV lacks (the whole prompt at first, then the
        accepted tokens and the new root); returns the roots' logits."""
        runner = self.runner
        rids = [spec_input.req_ids[i] for i in active]
        news = []
        for i, rid in zip(active, rids):
            new = list(spec_input.token_ids[i][runner.committed(rid):])
            if not new:  # it holds the root already (no step since its last proposal): start over
                runner.start(rid)
                new = list(spec_input.token_ids[i])
            news.append(new)
        parents, commit, ends = catch_up_rows(news)
        out = runner.forward(rids, news, parents, commit, ends)
        if out is None:  # the draft's KV pool is short: let these requests go without drafts
            for rid in rids:
                runner.release(rid)
            return None
        return rids, out[1]

    def release(self, req_id: str) -> None:
        self.runner.release(req_id)


@hookimpl
def jackfield_register_speculative_decoders(register):
    register(DraftModelDecoder)
