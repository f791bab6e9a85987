"""The CUDA side of the `gguf` method: a layer segment's GGUF blocks on the GPU, and its matmul.

A segment whose type a kernel reads (gguf_layout.FORMATS: Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K) is
repacked into planes on the GPU (bit for bit the file's codes and scales) and multiplied by the
Triton kernels of gguf_kernels.py: one row through the GEMV, up to DEQUANT_ROWS rows through the
dequantize-in-registers GEMM, more (long prefills) or `quantization_gemm_backend torch` through
the dequantize kernel and cuBLAS. Any other type (F16, F32, IQ types, Q5_0 ...) is dequantized once
at load to the model dtype and multiplied by cuBLAS.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from jackfield.sdk import GGUFWeight
from jackfield_plugins.quant.gguf_layout import FORMATS, GGUFPlanes, repack

DEQUANT_ROWS = 1024  # from this many rows: dequantize + cuBLAS (auto backend)


@dataclass(frozen=True)
class CudaSegment:
    """Rows [offset, offset + size) of a layer: `planes` for a kernel type, else `dense` [size, K]."""

    offset: int
    size: int
    ggml_type: int
    planes: GGUFPlanes | None = None
    dense: torch.Tensor | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        return self.planes.tensors() if self.planes is not None else {"dense": self.dense}


def cuda_segment(offset: int, weight: GGUFWeight, device: torch.device, dtype: torch.dtype) -> CudaSegment:
    """The segment of `weight` (its blocks on any device) on `device`."""
    size = weight.shape[0]
    if weight.ggml_type in FORMATS:
        planes = repack(weight.blocks.to(device), weight.ggml_type, weight.in_features)
        return CudaSegment(offset, size, weight.ggml_type, planes=planes)
    dense = weight.to("cpu").dequantize().to(device=device, dtype=dtype)
    return CudaSegment(offset, size, weight.ggml_type, dense=dense)


def cuda_matmul(x: torch.Tensor, segment: CudaSegment, bias: torch.Tensor | None, backend: str) -> torch.Tensor:
    """x [M, K] (CUDA, unit stride along K) times the segment's weight^T, plus `bias` (the segment's
    [size] or None): [M, size] in x's dtype."""
    if segment.planes is None:
        return F.linear(x, segment.dense.to(x.dtype), bias)
    from jackfield_plugins.quant.gguf_kernels import gguf_dequantize, gguf_gemv, gguf_matmul

    if backend == "torch" or (backend == "auto" and x.shape[0] >= DEQUANT_ROWS):
        return F.linear(x, gguf_dequantize(segment.planes, x.dtype), bias)
    if x.shape[0] == 1:
        return gguf_gemv(x, segment.planes, bias)
    return gguf_matmul(x, segment.planes, bias)
