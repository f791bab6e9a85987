"""LMHead with a quantization method (`lm_head_method`): what its `weight_loader` hands the method,
per vocabulary shard. A recording method stands in for the real ones, so the GGUF case runs without
llama.cpp (the gguf method's CPU kernels need it)."""
from __future__ import annotations

import torch

from jackfield.sdk import LinearMethod
from jackfield.sdk.gguf import GGUFWeight
from jackfield.sdk.layers.embedding import LMHead
from jackfield.sdk.parallel import ParallelGroup


class Recording(LinearMethod):
    """Keeps every (param_name, tensor, shard_offset, shard_size) `load` receives."""

    def __init__(self, dims=(0, 1)):
        self.calls, self.dims = [], dims

    def create_weights(self, layer, in_features, out_features, bias, dtype, device):
        pass

    def shard_dims(self, param_name, tensor):
        return self.dims

    def load(self, layer, param_name, tensor, shard_offset, shard_size):
        self.calls.append((param_name, tensor, shard_offset, shard_size))

    def apply(self, layer, x):
        raise AssertionError("these tests only load the head")


def group(rank: int, size: int) -> ParallelGroup:
    return ParallelGroup(rank=rank, size=size)


def test_gguf_weight_is_cut_by_rows():
    """A GGUFWeight (not a tensor) goes to the method whole on one rank, by its rows on two."""
    blocks = torch.arange(10 * 18, dtype=torch.uint8).view(10, 18)
    weight = GGUFWeight(blocks, 8, 32)
    one = Recording()
    LMHead(10, 32, torch.float32, "cpu", method=one).weight_loader("weight", weight)
    assert one.calls[0][1].blocks.shape == (10, 18)
    second = Recording()
    LMHead(10, 32, torch.float32, "cpu", method=second, tp=group(1, 2)).weight_loader("weight", weight)
    name, part, offset, size = second.calls[0]
    assert torch.equal(part.blocks, blocks[5:]) and (offset, size) == (0, 5)


def test_packed_tensors_are_cut_along_the_methods_vocabulary_dim():
    """GPTQ's qweight is [K/8, V]: the vocabulary runs along dim 1; qzeros [groups, V/8] in eighths."""
    head = Recording(dims=(1, 0))
    lm = LMHead(64, 32, torch.float32, "cpu", method=head, tp=group(1, 2))
    lm.weight_loader("qweight", torch.arange(4 * 64).view(4, 64))
    lm.weight_loader("qzeros", torch.arange(2 * 8).view(2, 8))
    (_, qweight, _, size), (_, qzeros, _, _) = head.calls
    assert torch.equal(qweight, torch.arange(4 * 64).view(4, 64)[:, 32:]) and size == 32
    assert torch.equal(qzeros, torch.arange(2 * 8).view(2, 8)[:, 4:])
