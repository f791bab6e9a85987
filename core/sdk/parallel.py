"""Tensor and expert parallelism as the SDK's layers see it: this rank's place in its group and
the two collectives the layers need.

A model is built once per rank. `ModelBuildContext.tp` is a `ParallelGroup` (size 1 when tensor
parallelism is off: every collective is then a no-op and every layer holds its whole weight). The
SDK layers split themselves by it (SGLang's / Megatron's scheme):

- column-parallel `Linear` (qkv_proj, gate_up_proj): each rank holds a slice of the output
  features of every fused shard; no communication;
- row-parallel `Linear` (o_proj, down_proj): each rank holds a slice of the input features and
  the partial outputs are summed with one all-reduce;
- `VocabEmbedding` / `LMHead`: each rank holds a slice of the vocabulary rows; the embedding
  all-reduces (other ranks' tokens are zero rows), the head all-gathers the logits;
- `SelfAttention`: each rank runs num_heads / size query heads and its share of the KV heads
  (a KV head is replicated on size / num_kv_heads ranks when there are fewer KV heads than ranks).

The collectives go through `torch.distributed` on `group` (NCCL on GPU, gloo on CPU); on CUDA the
all-reduce is captured inside the decode CUDA graphs like any other kernel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class ParallelGroup:
    rank: int = 0
    size: int = 1
    group: Any = None  # the torch.distributed ProcessGroup of the ranks (None: the default group)

    @property
    def enabled(self) -> bool:
        return self.size > 1

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum `x` over the group, in place; returns it."""
        if self.size > 1:
            import torch.distributed as dist

            dist.all_reduce(x, group=self.group)
        return x

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """The ranks' `x` (equal shapes) concatenated along `dim`, in rank order."""
        if self.size == 1:
            return x
        import torch.distributed as dist

        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x, group=self.group)
        return torch.cat(parts, dim=dim)

    def split(self, total: int, what: str) -> tuple[int, int]:
        """(start, size) of this rank's even share of `total` items; ValueError naming `what` when
        the group size does not divide it."""
        if total % self.size:
            raise ValueError(f"tensor parallel size {self.size} does not divide the {total} {what}")
        share = total // self.size
        return self.rank * share, share

    def head_share(self, num_heads: int, what: str = "KV heads") -> tuple[int, int]:
        """(first head, heads) of this rank: an even split when the group size divides `num_heads`,
        else (fewer heads than ranks, the group size a multiple of them) one head replicated on
        size / num_heads consecutive ranks."""
        if num_heads >= self.size or self.size % num_heads:
            return self.split(num_heads, what)
        return self.rank // (self.size // num_heads), 1


SINGLE = ParallelGroup()


def tp_kv_heads(num_kv_heads: int, tp_size: int) -> int:
    """KV heads each rank stores at tensor parallel size `tp_size` (replicated when fewer than ranks)."""
    return max(1, num_kv_heads // tp_size)
