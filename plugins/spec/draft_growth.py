"""Growing drafts below each request's root, shared by the draft-model and EAGLE decoders.

Both start from a catch-up forward whose last row per request is the root: its logits (and, for
EAGLE, its output hidden state) give the first draft level. Then:

* `grow_chain` (topk 1): `steps - 1` more greedy tokens per request on the device
  (DraftRunner.chain, a CUDA graph on GPU), one host read at the end;
* `grow_tree` (topk > 1): EAGLE-2's dynamic tree (tree_search.py), one draft forward per level over
  the frontier and its ancestors; each node reads its parent's output hidden state (EAGLE) or just
  its token (a draft model).
"""
from __future__ import annotations

import torch

from jackfield_plugins.spec.tree_search import TreeSearch


def enable_chain_graphs(runtime, runner, hidden_size: int | None) -> None:
    """CUDA graphs for chains, when the decoder drafts chains on a CUDA device with graphs on."""
    if runtime.eagle_topk == 1 and runtime.num_steps > 1 and not getattr(runtime.settings, "disable_cuda_graph", True):
        runner.enable_chain_graphs(runtime.num_steps - 1, min(runtime.max_running_requests, 32), hidden_size)


def catch_up_rows(tokens: list[list[int]]) -> tuple[list[list[int]], list[int], list[int]]:
    """(parents of each request's new rows as a chain, commit counts, the last row of each request)."""
    ends, n = [], 0
    for t in tokens:
        n += len(t)
        ends.append(n - 1)
    return [list(range(-1, len(t) - 1)) for t in tokens], [len(t) for t in tokens], ends


class Chain:
    """One request's greedy chain; `select(n)` is its first n tokens (TreeSearch's interface)."""

    def __init__(self, tokens: list[int]):
        self.tokens = tokens

    def select(self, n: int) -> tuple[list[int], list[int]]:
        return self.tokens[:n], list(range(-1, min(n, len(self.tokens)) - 1))


def grow_chain(runner, rids: list[str], root_logits: torch.Tensor, steps: int,
               root_hidden: torch.Tensor | None = None) -> list[Chain]:
    """Chains of `steps` tokens (none when the draft pool is short)."""
    first = root_logits.argmax(dim=-1)
    toks = first[:, None]
    if steps > 1:
        rest = runner.chain(rids, first, steps - 1, root_hidden)
        if rest is None:
            return [Chain([]) for _ in rids]
        toks = torch.cat([toks, rest], dim=1)
    return [Chain(t) for t in toks.tolist()]


def grow_tree(runner, rids: list[str], root_logits: torch.Tensor, topk: int, steps: int,
              root_hidden: torch.Tensor | None = None) -> list[TreeSearch]:
    searches = [TreeSearch(topk) for _ in rids]
    outputs = [{-1: h} for h in root_hidden] if root_hidden is not None else None  # node -> its output
    for s, lp in zip(searches, torch.log_softmax(root_logits.float(), dim=-1)):
        s.expand_root(lp)
    for _ in range(steps - 1):
        nodes = [s.forward_nodes() for s in searches]
        tok, par, rows, hin, off = [], [], [], [], 0
        for k, (s, ns) in enumerate(zip(searches, nodes)):
            where = {node: j for j, node in enumerate(ns)}
            tok.append([s.tokens[x] for x in ns])
            par.append([where.get(s.parents[x], -1) for x in ns])
            if outputs is not None:
                hin += [outputs[k][s.parents[x]] for x in ns]
            rows += [off + where[f] for f in s.frontier]
            off += len(ns)
        res = runner.forward(rids, tok, par, [0] * len(rids), rows,
                             hidden_in=torch.stack(hin) if outputs is not None else None)
        if res is None:
            break
        hidden, logits = res
        lps, start, off = torch.log_softmax(logits.float(), dim=-1), 0, 0
        for k, (s, ns) in enumerate(zip(searches, nodes)):
            if outputs is not None:
                for j, x in enumerate(ns):
                    outputs[k][x] = hidden[off + j]
            n = len(s.frontier)
            s.expand(lps[start:start + n])
            start += n
            off += len(ns)
    return searches
