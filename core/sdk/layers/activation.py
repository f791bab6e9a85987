"""Activations. On CUDA the fused Triton kernel of jackfield.kernels replaces the torch path."""
import torch
import torch.nn.functional as F

from jackfield.kernels import fused_available


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x = [gate | up] along the last dim -> silu(gate) * up."""
    if fused_available(x):
        from jackfield.kernels.activation import silu_and_mul as fused

        return fused(x)
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up
