"""Draft trees as the verify forward sees them: per request, the root plus the proposed nodes.

Node 0 of request i's tree is its root (the last sampled token); proposal node j becomes node j + 1.
`VerifyTrees.from_proposal` checks a DraftProposal (shapes, counts, parent order, token range) and
raises ProposalError naming the decoder and what is wrong, so a bad plugin fails its requests
instead of corrupting the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import torch

from jackfield.mem.device_copy import to_device

if TYPE_CHECKING:  # jackfield.sdk imports this package (DraftRunner): no import cycle at run time
    from jackfield.sdk.spec import DraftProposal


class ProposalError(RuntimeError):
    """A speculative decoder returned a malformed DraftProposal."""


@dataclass(frozen=True)
class TreeGrid:
    """A batch of trees as [B, N] CPU tensors (N: the largest tree), built once per step so that the
    verify batch, the acceptance and the KV commit are a few tensor operations, not loops over nodes.
    Entries past a tree's size are padding: token 0, parent 0."""

    sizes: torch.Tensor      # [B] nodes per tree (verified)
    real: torch.Tensor       # [B] nodes before the graph padding (only these can be accepted)
    tokens: torch.Tensor     # [B, N]
    parents: torch.Tensor    # [B, N], the root's -1 kept
    ancestors: torch.Tensor  # [B, N, N] bool: node k is node j's ancestor or j itself
    starts: torch.Tensor     # [B] row of each tree's root in the flat (verified) node order

    @cached_property
    def valid(self) -> torch.Tensor:
        return torch.arange(self.tokens.shape[1]) < self.sizes[:, None]

    @cached_property
    def depths(self) -> torch.Tensor:
        return self.ancestors.sum(-1) - 1

    def flat(self, grid: torch.Tensor) -> torch.Tensor:
        """The verified nodes' entries of a [B, N] tensor, trees one after the other."""
        return grid[self.valid]

    def gather(self, flat: torch.Tensor) -> torch.Tensor:
        """A per-node flat tensor (in verified order) as [B, N] (padding entries repeat a real one)."""
        idx = self.starts[:, None] + torch.arange(self.tokens.shape[1]).minimum(self.sizes[:, None] - 1)
        return flat[idx]

    def accept(self, picks: torch.Tensor) -> torch.Tensor:
        """[B, N] bool, the accepted path of every tree (`VerifyTrees.accept`), from picks [B, N]: a
        real node is on it when each of its non-root ancestors (itself included) holds the target's
        pick at its parent and is the first such sibling."""
        n = self.tokens.shape[1]
        par = self.parents.clamp(min=0)
        col = torch.arange(n)
        real = col < self.real[:, None]
        match = real & (self.tokens == picks.gather(1, par))
        same = (par[:, :, None] == par[:, None, :]) & (self.tokens[:, :, None] == self.tokens[:, None, :])
        earlier = (col[None, :] < col[:, None]) & (col[None, :] > 0)  # [j, k]: k a non-root node before j
        match &= ~(same & earlier & real[:, None, :]).any(-1)  # of equal siblings, the first one
        match[:, 0] = True
        return ~(self.ancestors & ~match[:, None, :]).any(-1) & real

    @classmethod
    def build(cls, tokens: list[list[int]], parents: list[list[int]], real: list[int]) -> "TreeGrid":
        sizes = [len(t) for t in tokens]
        n = max(sizes, default=1)
        tok = torch.tensor([t + [0] * (n - len(t)) for t in tokens], dtype=torch.int64).view(len(tokens), n)
        par = torch.tensor([p + [0] * (n - len(p)) for p in parents], dtype=torch.int64).view(len(tokens), n)
        anc = torch.eye(n, dtype=torch.bool).repeat(len(tokens), 1, 1)
        rows = torch.arange(len(tokens))
        for j in range(1, n):  # parents come before children: node j's row is its parent's plus itself
            anc[:, j] |= anc[rows, par[:, j].clamp(min=0)]
        size_t = torch.tensor(sizes, dtype=torch.int64)
        starts = torch.zeros_like(size_t)
        starts[1:] = size_t.cumsum(0)[:-1]
        return cls(size_t, torch.tensor(real, dtype=torch.int64), tok, par, anc, starts)


@dataclass(frozen=True)
class VerifyTrees:
    tokens: list[list[int]]    # per request: [root, node 1, ...]
    parents: list[list[int]]   # per request: parent node of each node (-1 for the root)
    real: list[int] | None = None  # per request: nodes before the padding (None: no padding)

    @cached_property
    def sizes(self) -> list[int]:
        return [len(t) for t in self.tokens]

    @property
    def real_sizes(self) -> list[int]:
        return self.real if self.real is not None else self.sizes

    @cached_property
    def grid(self) -> TreeGrid:
        return TreeGrid.build(self.tokens, self.parents, self.real_sizes)

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
        if proposal.parents is not None and proposal.parents.shape != tok.shape:
            raise ProposalError(f"speculative decoder '{name}': parents shape {tuple(proposal.parents.shape)} "
                                f"differs from tokens shape {tuple(tok.shape)}")
        tok = tok.to("cpu", torch.int64)
        col = torch.arange(width)
        used = col < torch.tensor(counts, dtype=torch.int64)[:, None]
        par = proposal.parents.to("cpu", torch.int64) if proposal.parents is not None else (col - 1).expand(bs, width)
        if ((tok < 0) | (tok >= vocab_size))[used].any():
            raise ProposalError(f"speculative decoder '{name}' proposed a token outside [0, {vocab_size})")
        bad = (((par < -1) | (par >= col)) & used).any(1)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ProposalError(f"speculative decoder '{name}': request {i} has a node whose parent does not "
                                f"come before it (parents {par[i, :counts[i]].tolist()})")
        tokens_l, parents_l = tok.tolist(), (par + 1).tolist()
        return cls([[root] + row[:n] for root, row, n in zip(roots, tokens_l, counts)],
                   [[-1] + row[:n] for row, n in zip(parents_l, counts)])

    def depths(self) -> list[list[int]]:
        depth = self.grid.depths.tolist()
        return [row[:n] for row, n in zip(depth, self.sizes)]

    def mask(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(tree_mask, tree_mask_indptr) of the verify ForwardBatch: node j sees its ancestors and itself."""
        g = self.grid
        valid = g.valid
        flat = g.ancestors[valid[:, :, None] & valid[:, None, :]]  # each tree's n x n block, row-major
        indptr = torch.zeros(len(self.tokens) + 1, dtype=torch.int64)
        indptr[1:] = (g.sizes * g.sizes).cumsum(0)
        return to_device(flat, torch.bool, device), to_device(indptr, torch.int64, device)

    def children(self, i: int) -> dict[int, dict[int, int]]:
        """Request i's real nodes by parent, then by token (the first of equal siblings)."""
        kids: dict[int, dict[int, int]] = {}
        tokens, par = self.tokens[i], self.parents[i]
        for j in range(1, self.real_sizes[i]):
            kids.setdefault(par[j], {}).setdefault(tokens[j], j)
        return kids

    def accept(self, picks: list[list[int]] | torch.Tensor) -> list[list[int]]:
        """The accepted path of every request: starting at the root, move to the child whose token
        is the target's pick at the current node, while there is one. `picks[i][j]` is the target's
        token at node j (a [B, N] tensor or lists). Returns per request the path's nodes, root first
        (its length - 1 drafts were accepted; the target's pick at the last node is the extra token).
        Computed on the grid (TreeGrid.accept); the path's nodes are its accepted ones in order."""
        g = self.grid
        pk = picks if isinstance(picks, torch.Tensor) else torch.tensor(
            [p[:n] + [0] * (g.tokens.shape[1] - n) for p, n in zip(picks, self.sizes)], dtype=torch.int64)
        on = g.accept(pk.view(g.tokens.shape))
        n = g.tokens.shape[1]
        order = torch.where(on, torch.arange(n), n).sort(1).values.tolist()
        return [row[:k] for row, k in zip(order, on.sum(1).tolist())]
