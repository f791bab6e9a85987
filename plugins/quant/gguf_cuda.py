"""The CUDA side of the `gguf` method: a layer segment's GGUF blocks on the GPU, and its matmul.

A segment whose type a kernel reads (gguf_layout.FORMATS: Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K) is
repacked into planes on the GPU (bit for bit the file's codes and scales) and multiplied by the
Triton kernels of gguf_kernels.py. Under the `auto` backend one row goes through the GEMV in the
configuration the SDK's Gemv tuner timed fastest for the type and shape (or dequantize + cuBLAS
where that was faster); two rows and more through the dequantize kernel and cuBLAS (on the H100
the dequantize-in-registers GEMM took 66 us at 16 rows of a 4096 x 4096 Q4_K weight against 35 us,
and 541 against 109 us at 2048 rows: benchmarks/gguf_gemv.py). `quantization_gemm_backend triton`
takes the GEMV (default configuration) and the GEMM, `torch` dequantize + cuBLAS for every input.
Any other type (F16, F32, IQ types, Q5_0 ...) is dequantized once at load to the model dtype and
multiplied by cuBLAS.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from jackfield.sdk import Gemv, GGUFWeight
from jackfield_plugins.quant.gguf_layout import FORMATS, GGUFPlanes, repack


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


def cuda_matmul(x: torch.Tensor, segment: CudaSegment, bias: torch.Tensor | None, backend: str,
                gemv: Gemv) -> torch.Tensor:
    """x [M, K] (CUDA, unit stride along K) times the segment's weight^T, plus `bias` (the segment's
    [size] or None): [M, size] in x's dtype. `gemv`: the engine's tuner (one timing per type and shape)."""
    if segment.planes is None:
        return F.linear(x, segment.dense.to(x.dtype), bias)
    from jackfield_plugins.quant.gguf_kernels import GEMV_CONFIGS, gguf_dequantize, gguf_gemv, gguf_matmul

    p = segment.planes
    dequantized = lambda: F.linear(x, gguf_dequantize(p, x.dtype), bias)  # noqa: E731
    if backend == "triton":
        return gguf_gemv(x, p, bias) if x.shape[0] == 1 else gguf_matmul(x, p, bias)
    if backend == "auto" and x.shape[0] == 1:
        k = p.in_features
        cfg = gemv.choose(("gguf_gemv", segment.ggml_type, segment.size, k, x.dtype), k, dequantized,
                          lambda c: gguf_gemv(x, p, bias, c), GEMV_CONFIGS)
        if cfg is not None:
            return gguf_gemv(x, p, bias, cfg)
    return dequantized()
