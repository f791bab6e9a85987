"""Quantization methods: how each linear layer's weights are created, loaded and applied.

A QuantizationMethod is chosen once per engine. Every linear layer of the model asks it for a
LinearMethod (by the layer's prefix, so a method can leave some layers unquantized) and from then
on calls only the LinearMethod: `create_weights` at construction, `load` for each checkpoint
tensor (shard-aware, for fused qkv / gate_up layers), `process_weights_after_loading` once after
all weights are in (repacking, scale computation, FP8 conversion…), `apply` on the hot path.
"""
from __future__ import annotations

from abc import abstractmethod

from typing import ClassVar

import torch
from torch import nn

from jackfield.sdk.component import Component, SelectionContext
from jackfield.sdk.layers.activation import silu_and_mul
from jackfield.sdk.model_config import ModelConfig


def create_plain_weights(layer: nn.Module, in_features: int, out_features: int, bias: bool,
                         dtype: torch.dtype, device: torch.device | str) -> None:
    """Register `weight` [out, in] (and `bias` [out] when asked) in `dtype`, as plain checkpoints
    store them: what `create_weights` does for a method that loads unquantized tensors."""
    layer.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype, device=device), requires_grad=False)
    layer.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False) if bias else None


class LinearMethod:
    """Plain (non-plugin-dispatched) per-layer object; `apply` runs on the hot path."""

    @abstractmethod
    def create_weights(self, layer: nn.Module, in_features: int, out_features: int, bias: bool,
                       dtype: torch.dtype, device: torch.device | str) -> None:
        ...

    def load(self, layer: nn.Module, param_name: str, tensor: torch.Tensor, shard_offset: int, shard_size: int) -> None:
        """Copy `tensor` into rows [shard_offset, shard_offset+shard_size) of parameter `param_name`."""
        param = getattr(layer, param_name)
        if tensor.shape[0] != shard_size or tensor.shape[1:] != param.shape[1:]:
            raise ValueError(f"weight shape {tuple(tensor.shape)} does not fit {param_name} shard of "
                             f"{shard_size} rows x {tuple(param.shape[1:])}")
        with torch.no_grad():
            param[shard_offset:shard_offset + shard_size].copy_(tensor)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Repack, compute scales or convert once all of this layer's weights are loaded."""

    @abstractmethod
    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        ...

    def apply_normed(self, layer: nn.Module, x: torch.Tensor, residual: torch.Tensor | None,
                     norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """`apply` on norm(x + residual) (norm(x) when residual is None); returns (output,
        x + residual) (x when residual is None). `norm` is an SDK RMSNorm. The default runs the
        norm, then `apply`; a method with a kernel that fuses the two overrides this."""
        if residual is None:
            return self.apply(layer, norm(x)), x
        h, residual = norm(x, residual)
        return self.apply(layer, h), residual

    def apply_silu_mul(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """`apply` on silu(gate) * up for x = [gate | up] along the last dim (the gated MLP's down
        projection). The default runs the activation, then `apply`; fused kernels override this."""
        return self.apply(layer, silu_and_mul(x))


class QuantizationMethod(Component):
    kind: ClassVar[str] = "quantization"
    checkpoint_formats: ClassVar[tuple[str | None, ...]] = ()
    """Checkpoint quantization names (HF `quantization_config.quant_method`) this method loads;
    `None` in the tuple means plain unquantized checkpoints."""
    converts_on_load: ClassVar[bool] = False
    """True when the method can quantize a plain checkpoint at load time (online quantization)."""
    max_relative_error: ClassVar[float] = 1e-5
    """The method's accuracy promise: the largest relative Frobenius error ‖y − y_ref‖ / ‖y_ref‖ of
    a linear layer's output, y_ref being the float32 layer with the same unquantized weights, on
    Gaussian inputs (weights Gaussian with std 1/sqrt(in_features), activations in float32). The
    conformance kit measures it over several layer shapes and fails a method that exceeds it (in
    float16 / bfloat16 it allows that dtype's rounding on top). The default suits plain float weights;
    a lossy method declares its own (e.g. about 1e-2 for int8 per-channel, 0.1 for int4 in groups of 32)."""

    def __init__(self, model_config: ModelConfig):
        self.model_config = model_config

    @abstractmethod
    def linear_method(self, prefix: str) -> LinearMethod:
        ...

    @classmethod
    def checkpoint_tensors(cls, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """What a checkpoint in this method's format stores for a linear layer whose float weight is
        `weight` [out_features, in_features]: parameter name -> tensor, as `LinearMethod.load`
        receives them (a bias is always stored plain, as "bias"). The conformance kit builds its test
        layers with it. The default, {"weight": weight}, is right for methods that load plain
        checkpoints (`None` in `checkpoint_formats`, or `converts_on_load`); a method that loads only
        pre-quantized checkpoints overrides it with its own quantizer."""
        return {"weight": weight}

    @classmethod
    def loads_plain_checkpoints(cls) -> bool:
        return None in cls.checkpoint_formats or cls.converts_on_load

    @classmethod
    def incompatibilities(cls, ctx: SelectionContext) -> list[str]:
        reasons = super().incompatibilities(ctx)
        if ctx.quantization not in cls.checkpoint_formats and not (ctx.quantization is None and cls.converts_on_load):
            reasons.append(f"cannot load checkpoints quantized as {ctx.quantization!r}")
        return reasons
