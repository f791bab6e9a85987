"""Draft trees as the verify forward sees them: per request, the root plus the proposed nodes.

Node 0 of request i's tree is its root (the last sampled token); proposal node j becomes node j + 1.
`VerifyTrees.from_proposal` checks a DraftProposal (shapes, counts, parent order, token range) and
raises ProposalError naming the decoder and what is wrong, so a bad plugin fails its requests
instead of corrupting the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from jackfield.mem.device_copy import to_device

if TYPE_CHECKING:  # jackfield.sdk imports this package (DraftRunner): no import cycle at run time
    from jackfield.sdk.spec import DraftProposal


class ProposalError(RuntimeError):
    """A speculative decoder returned a malformed DraftProposal."""


@dataclass(frozen=True)
class VerifyTrees:
    tokens: list[list[int]]    # per request: [root, node 1, ...]
    parents: list[list[int]]   # per request: parent node of each node (-1 for the root)
    real: list[int] | None = None  # per request: nodes before the padding (None: no padding)

    @property
    def sizes(self) -> list[int]:
        return [len(t) for t in self.tokens]

    @property
    def real_sizes(self) -> list[int]:
        return self.real if self.real is not None else self.sizes

    def padded(self, size: int) -> "VerifyTrees":
        """Every tree grown to `size` nodes with padding children of the root, never accepted (so
        a verify CUDA graph of fixed shape can run the batch)."""
        return VerifyTrees([t + [t[0]] * (size - len(t)) for t in self.tokens],
                           [p + [0] * (size - len(p)) for p in self.parents], self.real_sizes)

    @classmethod
    def from_proposal(cls, roots: list[int], proposal: "DraftProposal", max_drafts: tuple[int, ...],
                      vocab_size: int, name: str = "decoder") -> "VerifyTrees":
        bs = len(roots)
        tok = proposal.tokens
        if tok.dim() != 2 or tok.shape[0] != bs:
            raise ProposalError(f"speculative decoder '{name}' proposed tokens of shape {tuple(tok.shape)}, "
                                f"expected [{bs}, n]")
        width = tok.shape[1]
        counts = list(proposal.counts) if proposal.counts is not None else [width] * bs
        if len(counts) != bs or any(not 0 <= c <= width for c in counts):
            raise ProposalError(f"speculative decoder '{name}' gave counts {counts} for {bs} rows of width {width}")
        over = [(i, c, m) for i, (c, m) in enumerate(zip(counts, max_drafts)) if c > m]
        if over:
            i, c, m = over[0]
            raise ProposalError(f"speculative decoder '{name}' proposed {c} nodes for request {i}, allowed {m}")
        tokens_l = tok.tolist()
        parents_l = proposal.parents.tolist() if proposal.parents is not None else None
        if parents_l is not None and (proposal.parents.shape != tok.shape):
            raise ProposalError(f"speculative decoder '{name}': parents shape {tuple(proposal.parents.shape)} "
                                f"differs from tokens shape {tuple(tok.shape)}")
        out_t, out_p = [], []
        for i in range(bs):
            n = counts[i]
            row = tokens_l[i][:n]
            if any(not 0 <= t < vocab_size for t in row):
                raise ProposalError(f"speculative decoder '{name}' proposed a token outside [0, {vocab_size})")
            par = parents_l[i][:n] if parents_l is not None else list(range(-1, n - 1))
            if any(not -1 <= p < j for j, p in enumerate(par)):
                raise ProposalError(f"speculative decoder '{name}': request {i} has a node whose parent does not "
                                    f"come before it (parents {par})")
            out_t.append([roots[i]] + row)
            out_p.append([-1] + [p + 1 for p in par])
        return cls(out_t, out_p)

    def depths(self) -> list[list[int]]:
        out = []
        for par in self.parents:
            d = [0] * len(par)
            for j in range(1, len(par)):
                d[j] = d[par[j]] + 1
            out.append(d)
        return out

    def mask(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(tree_mask, tree_mask_indptr) of the verify ForwardBatch: node j sees its ancestors and itself."""
        flat, indptr = [], [0]
        for par in self.parents:
            n = len(par)
            rows: list[list[bool]] = []
            for j in range(n):
                row = list(rows[par[j]]) if par[j] >= 0 else [False] * n
                row[j] = True
                rows.append(row)
            for row in rows:
                flat += row
            indptr.append(indptr[-1] + n * n)
        return to_device(flat, torch.bool, device), to_device(indptr, torch.int64, device)

    def children(self, i: int) -> dict[int, dict[int, int]]:
        """Request i's real nodes by parent, then by token (the first of equal siblings)."""
        kids: dict[int, dict[int, int]] = {}
        tokens, par = self.tokens[i], self.parents[i]
        for j in range(1, self.real_sizes[i]):
            kids.setdefault(par[j], {}).setdefault(tokens[j], j)
        return kids

    def accept(self, picks: list[list[int]]) -> list[list[int]]:
        """The accepted path of every request: starting at the root, move to the child whose token
        is the target's pick at the current node, while there is one. `picks[i][j]` is the target's
        token at node j. Returns per request the path's nodes, root first (its length - 1 drafts
        were accepted; the target's pick at the last node is the extra token)."""
        paths = []
        for i, pick in enumerate(picks):
            kids, path = self.children(i), [0]
            while (nxt := kids.get(path[-1], {}).get(pick[path[-1]])) is not None:
                path.append(nxt)
            paths.append(path)
        return paths
