"""What the quantization plugins share: the CUDA requirement, ignore lists, shard bookkeeping, the
base of the built-in methods and the `apply` of int8 / FP8 codes."""
from __future__ import annotations

import importlib.util
import re
from abc import abstractmethod

import torch
from torch import nn

from jackfield.sdk import (Gemv, LinearMethod, PlainLinearMethod, QuantizationMethod, SelectionContext,
                           checkpoint_names)


def triton_missing_on_cuda(ctx: SelectionContext) -> list[str]:
    """The incompatibility of a method whose CUDA kernels are Triton's, on a machine without it."""
    if ctx.device == "cuda" and importlib.util.find_spec("triton") is None:
        return ["its CUDA kernels need the Python package 'triton' (pip install 'jackfield[gpu]')"]
    return []


def is_ignored(prefix: str, ignored: tuple[str, ...]) -> bool:
    """Whether a checkpoint's ignore list (module names, or `re:` patterns as compressed-tensors
    writes them) leaves this layer unquantized: a fused layer when all of its shards are listed."""
    def listed(name: str) -> bool:
        for entry in ignored:
            if entry.startswith("re:"):
                if re.fullmatch(entry[3:], name):
                    return True
            elif name == entry or name.endswith("." + entry) or entry.endswith("." + name):
                return True
        return False

    return all(listed(n) for n in checkpoint_names(prefix))


def shards(layer: nn.Module, out_features: int) -> list[tuple[int, int]]:
    """(offset, size) of each checkpoint tensor fused into the layer's rows (one for a plain layer)."""
    return list(getattr(layer, "shards", {None: (0, out_features)}).values())


def replace_parameter(layer: nn.Module, name: str, value: torch.Tensor | None) -> None:
    """Swap a parameter of `layer` for `value` (a frozen Parameter), or remove it (None)."""
    if hasattr(layer, name):
        delattr(layer, name)
    if value is not None:
        setattr(layer, name, nn.Parameter(value, requires_grad=False))


def load_row_scale(layer: nn.Module, name: str, tensor: torch.Tensor, offset: int, size: int) -> None:
    """Load a per-tensor (one value) or per-channel ([size] or [size, 1]) scale of one shard into
    rows [offset, offset + size) of the layer's per-row scale parameter `name`."""
    flat = tensor.float().reshape(-1)
    if flat.numel() not in (1, size):
        raise ValueError(f"{name} of shape {tuple(tensor.shape)} is neither per tensor nor per channel for "
                         f"{size} rows")
    with torch.no_grad():
        getattr(layer, name)[offset:offset + size] = flat


class BuiltinQuantization(QuantizationMethod):
    """The built-in quantization methods' shared parts: one Gemv per engine (its per-shape timings
    shared by every layer), Triton kernels on CUDA, and the checkpoint's ignore list (`ignored`),
    whose layers stay plain. Subclasses implement `layer_method`."""

    ignored: tuple[str, ...] = ()

    def __init__(self, model_config, options=None):
        super().__init__(model_config, options)
        self.gemv = Gemv()

    @classmethod
    def incompatibilities(cls, ctx: SelectionContext) -> list[str]:
        return super().incompatibilities(ctx) + triton_missing_on_cuda(ctx)

    def linear_method(self, prefix: str) -> LinearMethod:
        return PlainLinearMethod() if is_ignored(prefix, self.ignored) else self.layer_method(prefix)

    def lm_head_method(self) -> LinearMethod | None:
        """The head's method: quantized when the checkpoint stores it so (`head_in_checkpoint`), or when
        asked (`quantize_lm_head`) and the method can quantize its plain checkpoint weight on load
        (`plain_head_method`); otherwise plain."""
        if self.head_in_checkpoint():
            return self.layer_method("lm_head")
        return self.plain_head_method() if self.options.quantize_lm_head else None

    def head_in_checkpoint(self) -> bool:
        """Whether the checkpoint stores the LM head in this method's format."""
        return False

    def plain_head_method(self) -> LinearMethod | None:
        """A LinearMethod that quantizes the head's plain checkpoint weight on load, or None if this
        method only loads pre-quantized tensors."""
        return None

    @abstractmethod
    def layer_method(self, prefix: str) -> LinearMethod:
        """The LinearMethod of a quantized layer."""


class ScaledCodesLinearMethod(LinearMethod):
    """Int8 or FP8 codes with their `layer.wscale` (a WeightScale): the shared `apply`. On CUDA one row
    goes through the SDK's Gemv (the norm or activation fused in where faster, timed per shape
    against `matmul`), other inputs to `matmul`; `quantization_gemm_backend torch` always takes
    `matmul`. Off CUDA, `reference`."""

    def __init__(self, gemv: Gemv, backend: str):
        self.gemv, self.backend = gemv, backend

    @abstractmethod
    def reference(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """x [M, K] times the layer, plus bias, on any device (the CPU path)."""

    @abstractmethod
    def matmul(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """x [M, K] times the layer, plus bias, with the CUDA kernels."""

    def apply(self, layer, x):
        x2 = x.reshape(-1, x.shape[-1])
        if x2.shape[0] == 0:
            return x.new_empty(*x.shape[:-1], layer.weight.shape[0])
        if not x2.is_cuda:
            y = self.reference(layer, x2)
        elif self.backend != "torch":
            y = self.gemv.linear(x2.contiguous(), layer.weight, layer.bias, layer.wscale, lambda t: self.matmul(layer, t))
        else:
            y = self.matmul(layer, x2)
        return y.reshape(*x.shape[:-1], y.shape[-1])

    def apply_normed(self, layer, x, residual, norm):
        fused = None
        if x.is_cuda and self.backend != "torch":
            fused = self.gemv.normed_linear(x, residual, norm.weight, norm.eps, layer.weight, layer.bias, layer.wscale,
                                            lambda t: self.matmul(layer, t))
        return fused if fused is not None else super().apply_normed(layer, x, residual, norm)

    def apply_silu_mul(self, layer, x):
        fused = None
        if x.is_cuda and self.backend != "torch":
            fused = self.gemv.silu_mul_linear(x, layer.weight, layer.bias, layer.wscale, lambda t: self.matmul(layer, t))
        return fused if fused is not None else super().apply_silu_mul(layer, x)
