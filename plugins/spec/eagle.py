"""The `eagle` speculative decoder: an EAGLE-1/2 or EAGLE-3 head drafts from the target's features.

The head (`speculative_draft_model_path`, a directory in the published LlamaForCausalLMEagle or
LlamaForCausalLMEagle3 layout, or one `jackfield spec train-eagle` wrote) runs through a
DraftRunner with its own one-layer KV cache. The target's features reach it through `observe`:
the final hidden state of every committed position (EAGLE-3: the inputs of three target layers).

Per request the head holds rows for pairs (x_{j+1}, f_j), j = the first observed position onward.
Each step it first catches up with the pairs completed since the last step (the accepted tokens,
the new root and their features); the last of them, (root, f_{root-1}), predicts the first draft
level. Then it grows EAGLE-2's dynamic tree (tree_search.py): `speculative_num_steps` levels, the
`speculative_eagle_topk` best children per frontier node, every node fed the head's own output at
its parent; the best nodes by cumulative probability are proposed.
"""
from __future__ import annotations

import torch

from jackfield.sdk import Capabilities, DraftProposal, SpecInput, SpecRuntime, SpeculativeDecoder, TargetStates, hookimpl
from jackfield_plugins.spec.eagle_load import load_head
from jackfield_plugins.spec.draft_growth import catch_up_rows, enable_chain_graphs, grow_chain, grow_tree


class _Features:
    """A request's observed target features not yet read by the head: positions start, start+1, ..."""

    def __init__(self, start: int):
        self.start = start
        self.rows: list[torch.Tensor] = []
        self.count = 0

    def add(self, start: int, rows: torch.Tensor) -> bool:
        if start != self.start + self.count:
            return False  # a gap: the caller starts over
        self.rows.append(rows)
        self.count += rows.shape[0]
        return True

    def take(self, end: int) -> torch.Tensor:
        """Rows of positions [start, end); they leave the buffer."""
        allr = torch.cat(self.rows) if len(self.rows) > 1 else self.rows[0]
        n = end - self.start
        out, rest = allr[:n], allr[n:]
        self.rows, self.count, self.start = ([rest] if rest.shape[0] else []), rest.shape[0], end
        return out


class EagleDecoder(SpeculativeDecoder):
    name = "eagle"
    priority = 20
    capabilities = Capabilities(devices=("cpu", "cuda"))
    description = "EAGLE-2 dynamic draft trees from an EAGLE-1/2 or EAGLE-3 head on the target's features"
    needs_hidden_states = True

    def __init__(self, runtime: SpecRuntime):
        super().__init__(runtime)
        if not runtime.draft_model_path:
            raise ValueError("speculative_algorithm 'eagle' needs speculative_draft_model_path (the head directory); "
                             "train one with `jackfield spec train-eagle`")
        self.head = load_head(runtime.draft_model_path, runtime.model_config, runtime.target, runtime.device,
                              runtime.dtype, runtime.context_len + 2)
        if self.head.version == 3:
            self.aux_hidden_layers = aux_layers(self.head, runtime.model_config.num_layers)
        self.runner = runtime.make_draft_runner(self.head, self.head.config)
        enable_chain_graphs(runtime, self.runner, self.head.config.hidden_size)
        self.features: dict[str, _Features] = {}

    @classmethod
    def kit_settings(cls, model_dir: str, workdir: str) -> dict:
        from jackfield_plugins.spec.eagle_train import random_head

        return {"speculative_draft_model_path": random_head(model_dir, f"{workdir}/eagle-head"),
                "speculative_eagle_topk": 2, "speculative_num_steps": 3}

    def observe(self, states: TargetStates) -> None:
        off = 0
        for rid, start, n in zip(states.req_ids, states.starts, states.lengths):
            rows = states.hidden[off:off + n]
            off += n
            feats = self.features.get(rid)
            if feats is None or not feats.add(start, rows):
                self.runner.release(rid)
                self.features[rid] = feats = _Features(start)
                feats.add(start, rows)

    def release(self, req_id: str) -> None:
        self.features.pop(req_id, None)
        self.runner.release(req_id)

    def propose(self, spec_input: SpecInput) -> DraftProposal:
        bs = len(spec_input)
        tokens, parents = [[] for _ in range(bs)], [[] for _ in range(bs)]
        ready = []
        for i, (rid, ids, budget) in enumerate(zip(spec_input.req_ids, spec_input.token_ids, spec_input.max_drafts)):
            feats = self.features.get(rid)
            if budget <= 0:
                self.release(rid)  # it never speculates again: keep no features for it
            elif feats is not None and feats.count and feats.start + feats.count == len(ids) - 1:
                ready.append(i)
        grown = self._grow(spec_input, ready) if ready else {}
        for i in ready:
            draft = grown.get(spec_input.req_ids[i])
            if draft is not None:
                tokens[i], parents[i] = draft.select(spec_input.max_drafts[i])
        return DraftProposal.from_lists(tokens, parents)

    def _catch_up(self, spec_input: SpecInput, idx: list[int]):
        """The pairs every request completed since its last step, committed to the head's KV."""
        runner = self.runner
        rids, toks, feats = [], [], []
        for i in idx:
            rid, ids, f = spec_input.req_ids[i], spec_input.token_ids[i], self.features[spec_input.req_ids[i]]
            if not runner.holds(rid) and not runner.start(rid, offset=f.start):
                continue
            first = runner.offset(rid) + runner.committed(rid)
            if first != f.start:  # the head's rows and the features parted: start over
                runner.start(rid, offset=f.start)
                first = f.start
            end = len(ids) - 1
            rids.append(rid)
            toks.append(list(ids[first + 1:end + 1]))
            feats.append(f.take(end))
        return rids, toks, feats

    def _grow(self, spec_input: SpecInput, ready: list[int]) -> dict:
        """Per request id: its drafts (a Chain or a TreeSearch: `select(budget)`)."""
        rt, runner = self.runtime, self.runner
        rids, toks, feats = self._catch_up(spec_input, ready)
        if not rids:
            return {}
        parents, commit, ends = catch_up_rows(toks)
        res = runner.forward(rids, toks, parents, commit, ends, hidden_in=torch.cat(feats))
        if res is None:
            for rid in rids:
                self.release(rid)
            return {}
        hidden, logits = res
        root_hidden = hidden[torch.tensor(ends, device=hidden.device)]
        if rt.eagle_topk == 1:
            drafts = grow_chain(runner, rids, logits, rt.num_steps, root_hidden)
        else:
            drafts = grow_tree(runner, rids, logits, rt.eagle_topk, rt.num_steps, root_hidden)
        return dict(zip(rids, drafts))


def aux_layers(head, num_layers: int) -> tuple[int, ...]:
    """Target layers whose inputs an EAGLE-3 head reads: the config's eagle_aux_hidden_state_layer_ids
    (layer outputs, hence + 1) or SGLang's default (2, L // 2, L - 3)."""
    ids = getattr(head, "aux_layer_ids", None)
    layers = tuple(i + 1 for i in ids) if ids else (2, num_layers // 2, num_layers - 3)
    if any(not 0 <= i < num_layers for i in layers):
        raise ValueError(f"EAGLE-3 aux layers {layers} are outside the target's {num_layers} layers")
    return layers


@hookimpl
def jackfield_register_speculative_decoders(register):
    register(EagleDecoder)


@hookimpl
def jackfield_add_cli_commands(subparsers):
    from jackfield_plugins.spec import eagle_train

    eagle_train.add_parser(subparsers)
