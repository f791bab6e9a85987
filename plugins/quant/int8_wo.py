"""The `int8_wo` quantization method: int8 weights with one scale per output channel, activations
in the compute dtype (weight-only: half the bytes of bf16 at bf16 accuracy of the activations).

A plain checkpoint is quantized while loading: scale = max|w_row| / 127, q = round(w / scale) in
[-127, 127]. compressed-tensors INT8 checkpoints (`weight` int8, `weight_scale` per channel or
per tensor) load through the same LinearMethod (compressed_tensors.py); their activation
quantization, if any, is not applied (activations stay in the compute dtype).

Where it runs:
  CPU: float32 matmul with the int8 codes (exact integers in float32), times the row scales.
  CUDA: one row through the SDK's Gemv with the int8 codes and scales (timed per shape against the
    fallback, RMSNorm / SiLU-and-mul fused in where faster); up to DEQUANT_ROWS rows the Triton
    W8A16 GEMM of w8a16_kernels.py; more rows, or `quantization_gemm_backend torch`, cuBLAS on the
    codes converted to the compute dtype (exact), the row scales applied to its output.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from jackfield.sdk import Gemv, WeightScale, create_plain_weights, hookimpl
from jackfield_plugins.quant.common import (BuiltinQuantization, ScaledCodesLinearMethod, load_row_scale,
                                            replace_parameter)

DEQUANT_ROWS = 1024  # from this many rows (prefill) cuBLAS on a dequantized weight (auto backend)


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (codes [N, K] int8 in [-127, 127], scale [N] float32)."""
    amax = w.float().abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
    return (w.float() / scale[:, None]).round().clamp(-127, 127).to(torch.int8), scale


class Int8LinearMethod(ScaledCodesLinearMethod):
    """After loading: `weight` [N, K] int8 and `weight_scale` [N] float32. `serialized`: the
    checkpoint holds the codes (compressed-tensors); else a plain weight is quantized on load."""

    def __init__(self, gemv: Gemv, backend: str, serialized: bool = False, input_scales: bool = False):
        super().__init__(gemv, backend)
        self.serialized, self.input_scales = serialized, input_scales

    def create_weights(self, layer, in_features, out_features, bias, dtype, device):
        create_plain_weights(layer, in_features, out_features, bias, dtype, device)
        if self.serialized:
            replace_parameter(layer, "weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
            replace_parameter(layer, "weight_scale", torch.ones(out_features, device=device))
        if self.input_scales:  # a W8A8 checkpoint's static activation scales: read, not used
            replace_parameter(layer, "input_scale", torch.ones(out_features, device=device))

    def load(self, layer, param_name, tensor, shard_offset, shard_size):
        if param_name in ("weight_scale", "input_scale"):
            return load_row_scale(layer, param_name, tensor, shard_offset, shard_size)
        if param_name == "weight" and self.serialized and tensor.dtype != torch.int8:
            raise ValueError(f"an int8 checkpoint's weight must be int8, got {tensor.dtype}")
        super().load(layer, param_name, tensor, shard_offset, shard_size)

    def load_float(self, layer, weight):
        if not self.serialized:
            return super().load_float(layer, weight)
        q, scale = quantize_int8(weight)
        self.load(layer, "weight", q, 0, weight.shape[0])
        self.load(layer, "weight_scale", scale, 0, weight.shape[0])

    def process_weights_after_loading(self, layer):
        replace_parameter(layer, "input_scale", None)
        if layer.weight.dtype != torch.int8:
            q, scale = quantize_int8(layer.weight.detach())
            replace_parameter(layer, "weight", q)
            replace_parameter(layer, "weight_scale", scale)
        layer.wscale = WeightScale(layer.weight_scale)

    def reference(self, layer, x):
        y = (F.linear(x.float(), layer.weight.float()) * layer.weight_scale).to(x.dtype)
        return y if layer.bias is None else y + layer.bias

    def matmul(self, layer, x):
        if self.backend == "torch" or (self.backend == "auto" and x.shape[0] >= DEQUANT_ROWS):
            y = (F.linear(x, layer.weight.to(x.dtype)).float() * layer.weight_scale).to(x.dtype)  # codes exact in bf16
            return y if layer.bias is None else y + layer.bias
        from jackfield_plugins.quant.w8a16_kernels import w8a16_matmul

        return w8a16_matmul(x.contiguous(), layer.weight, layer.weight_scale, layer.bias)


class Int8WeightOnly(BuiltinQuantization):
    name = "int8_wo"
    priority = -10  # opt-in: `auto` keeps `unquantized` for plain checkpoints
    checkpoint_formats = ()
    converts_on_load = True
    description = "int8 weights with per-channel scales, activations in the compute dtype (weight-only)"
    max_relative_error = 0.02

    def layer_method(self, prefix):
        return Int8LinearMethod(self.gemv, self.options.gemm_backend)

    def plain_head_method(self):
        return self.layer_method("lm_head")  # its layers already quantize plain weights on load


@hookimpl
def jackfield_register_quantization_methods(register):
    register(Int8WeightOnly)
