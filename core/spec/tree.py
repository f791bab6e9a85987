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

import numpy as np
import torch

from jackfield.mem.device_copy import to_device

if TYPE_CHECKING:  # jackfield.sdk imports this package (DraftRunner): no import cycle at run time
    from jackfield.sdk.spec import DraftProposal


class ProposalError(RuntimeError):
    """A speculative decoder returned a malformed DraftProposal."""


@dataclass(frozen=True)
class TreeGrid:
    """A batch of trees as [B, N] numpy arrays (N: the largest tree), built once per step so that the
    verify batch, the acceptance and the KV commit are a few array operations, not loops over nodes
    (numpy: a small operation costs the host a fifth of a CPU torch operation; `to_device` takes
    the arrays as they are). Entries past a tree's size are padding: token 0, parent 0."""

    sizes: np.ndarray      # [B] nodes per tree (verified)
    real: np.ndarray       # [B] nodes before the graph padding (only these can be accepted)
    tokens: np.ndarray     # [B, N]
    parents: np.ndarray    # [B, N], the root's -1 kept
    ancestors: np.ndarray  # [B, N, N] bool: node k is node j's ancestor or j itself
    starts: np.ndarray     # [B] row of each tree's root in the flat (verified) node order

    @cached_property
    def valid(self) -> np.ndarray:
        return np.arange(self.tokens.shape[1]) < self.sizes[:, None]

    @cached_property
    def depths(self) -> np.ndarray:
        return self.ancestors.sum(-1) - 1

    def flat(self, grid: np.ndarray) -> np.ndarray:
        """The verified nodes' entries of a [B, N] array, trees one after the other."""
        return grid[self.valid]

    def gather(self, flat: np.ndarray) -> np.ndarray:
        """A per-node flat array (in verified order) as [B, N] (padding entries repeat a real one)."""
        return flat[self.starts[:, None] + np.minimum(np.arange(self.tokens.shape[1]), self.sizes[:, None] - 1)]

    def accept(self, picks: np.ndarray) -> np.ndarray:
        """[B, N] bool, the accepted path of every tree (`VerifyTrees.accept`), from picks [B, N]: a
        real node is on it when each of its non-root ancestors (itself included) holds the target's
        pick at its parent and is the first such sibling."""
        tok, par = self.tokens, np.maximum(self.parents, 0)
        col = np.arange(tok.shape[1])
        real = col < self.real[:, None]
        match = real & (tok == np.take_along_axis(picks, par, 1))
        same = (par[:, :, None] == par[:, None, :]) & (tok[:, :, None] == tok[:, None, :])
        earlier = (col[None, :] < col[:, None]) & (col[None, :] > 0)  # [j, k]: k a non-root node before j
        match &= ~(same & earlier & real[:, None, :]).any(-1)  # of equal siblings, the first one
        match[:, 0] = True
        return ~(self.ancestors & ~match[:, None, :]).any(-1) & real

    @classmethod
    def build(cls, tokens: list[list[int]], parents: list[list[int]], real: list[int]) -> "TreeGrid":
        sizes = np.array([len(t) for t in tokens], dtype=np.int64)
        b, n = len(tokens), int(sizes.max(initial=1))
        tok = np.array([t + [0] * (n - len(t)) for t in tokens], dtype=np.int64).reshape(b, n)
        par = np.array([p + [0] * (n - len(p)) for p in parents], dtype=np.int64).reshape(b, n)
        anc = np.zeros((b, n, n), dtype=bool)
        anc[:, np.arange(n), np.arange(n)] = True
        rows, up = np.arange(b), np.maximum(par, 0)
        for j in range(1, n):  # parents come before children: node j's row is its parent's plus itself
            anc[:, j] |= anc[rows, up[:, j]]
        starts = np.zeros_like(sizes)
        np.cumsum(sizes[:-1], out=starts[1:])
        return cls(sizes, np.array(real, dtype=np.int64), tok, par, anc, starts)


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
        tok = tok.to("cpu", torch.int64).numpy()
        col = np.arange(width)
        used = col < np.array(counts, dtype=np.int64)[:, None]
        par = proposal.parents.to("cpu", torch.int64).numpy() if proposal.parents is not None else \
            np.broadcast_to(col - 1, (bs, width))
        if ((tok < 0) | (tok >= vocab_size))[used].any():
            raise ProposalError(f"speculative decoder '{name}' proposed a token outside [0, {vocab_size})")
        bad = (((par < -1) | (par >= col)) & used).any(1)
        if bad.any():
            i = int(bad.nonzero()[0][0])
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
        flat = g.ancestors[g.valid[:, :, None] & g.valid[:, None, :]]  # each tree's n x n block, row-major
        indptr = np.zeros(len(self.tokens) + 1, dtype=np.int64)
        np.cumsum(g.sizes * g.sizes, out=indptr[1:])
        return to_device(flat, torch.bool, device), to_device(indptr, torch.int64, device)

    def children(self, i: int) -> dict[int, dict[int, int]]:
        """Request i's real nodes by parent, then by token (the first of equal siblings)."""
        kids: dict[int, dict[int, int]] = {}
        tokens, par = self.tokens[i], self.parents[i]
        for j in range(1, self.real_sizes[i]):
            kids.setdefault(par[j], {}).setdefault(tokens[j], j)
        return kids

    def accept(self, picks: list[list[int]] | np.ndarray | torch.Tensor) -> list[list[int]]:
        """The accepted path of every request: starting at the root, move to the child whose token
        is the target's pick at the current node, while there is one. `picks[i][j]` is the target's
        token at node j (a [B, N] array, tensor or lists). Returns per request the path's nodes, root first
        (its length - 1 drafts were accepted; the target's pick at the last node is the extra token).
        Computed on the grid (TreeGrid.accept); the path's nodes are its accepted ones in order."""
        g = self.grid
        n = g.tokens.shape[1]
        if isinstance(picks, (np.ndarray, torch.Tensor)):
            pk = np.asarray(picks)
        else:
            pk = np.array([p[:k] + [0] * (n - k) for p, k in zip(picks, self.sizes)], dtype=np.int64)
        on = g.accept(pk.reshape(g.tokens.shape))
        order = np.sort(np.where(on, np.arange(n), n), 1).tolist()
        return [row[:k] for row, k in zip(order, on.sum(1).tolist())]
