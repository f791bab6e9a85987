"""Quantization methods: how each linear layer's weights are created, loaded and applied.

A QuantizationMethod is chosen once per engine. Every linear layer of the model asks it for a
LinearMethod (by the layer's prefix, so a method can leave some layers unquantized) and from then
on calls only the LinearMethod: `create_weights` at construction, `load` for each checkpoint
tensor (shard-aware, for fused qkv / gate_up layers), `process_weights_after_loading` once after
all weights are in (repacking, scale computation, FP8 conversion…), `apply` on the hot path.
Every MoE layer likewise asks `expert_method(prefix)` for the ExpertMethod of its routed experts.

A method reads its checkpoint's `quantization_config` (config.json) from
`model_config.quantization_config`, and the engine-wide options (which GPU GEMM path) from the
`QuantOptions` it is constructed with.
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from jackfield.sdk.component import Component, SelectionContext
from jackfield.sdk.gguf import GGUF_FORMAT
from jackfield.sdk.layers.activation import silu_and_mul
from jackfield.sdk.model_config import ModelConfig

# checkpoint format (quantization_config.quant_method) -> the quantization method that loads it and
# the distribution that ships that method; used to say what is missing when no installed method
# loads a checkpoint's format.
KNOWN_CHECKPOINT_FORMATS: dict[str, tuple[str, str]] = {
    "fp8": ("fp8", "jackfield"),
    "awq": ("awq", "jackfield"),
    "gptq": ("gptq", "jackfield"),
    "compressed-tensors": ("compressed_tensors", "jackfield"),
}
# fused parameter -> the checkpoint tensors packed into it (CausalLM.stacked_params, by name)
FUSED_SHARDS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


@dataclass(frozen=True)
class QuantOptions:
    """Engine-wide settings every quantization method receives (Settings.quantization_gemm_backend)."""

    gemm_backend: str = "auto"
    """GPU matmul path of quantized layers: "auto" (per batch size, the measured choice), "triton"
    (Triton kernels at every batch size) or "torch" (torch._scaled_mm for FP8, dequantize + cuBLAS
    for integer weights)."""
    quantize_lm_head: bool = False
    """Quantize the LM head too, where the method converts plain weights on load (Settings.quantize_lm_head)."""


def create_plain_weights(layer: nn.Module, in_features: int, out_features: int, bias: bool,
                         dtype: torch.dtype, device: torch.device | str) -> None:
    """Register `weight` [out, in] (and `bias` [out] when asked) in `dtype`, as plain checkpoints
    store them: what `create_weights` does for a method that loads unquantized tensors."""
    layer.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype, device=device), requires_grad=False)
    layer.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False) if bias else None


def checkpoint_names(prefix: str) -> tuple[str, ...]:
    """The checkpoint module names a layer's prefix stands for: a fused `...qkv_proj` is
    `...q_proj`, `...k_proj` and `...v_proj` (for matching a checkpoint's ignore lists)."""
    head, _, last = prefix.rpartition(".")
    shards = FUSED_SHARDS.get(last)
    return tuple(f"{head}.{s}" if head else s for s in shards) if shards else (prefix,)


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

    def shard_dims(self, param_name: str, tensor: torch.Tensor) -> tuple[int | None, int | None]:
        """Tensor parallelism: (the dim of checkpoint tensor `param_name` that runs along the layer's
        output features, the dim that runs along its input features); None where it runs along
        neither. The layer cuts the tensor along them in proportion (a dim of 1/8 the features, as
        packed int4 codes are, is cut at 1/8 the offsets) before `load` sees it; a dim of extent 1
        is one value for all features and stays whole. The default suits tensors laid out like the
        weight [out, in]: dim 0 output, dim 1 input (1-D tensors: output; scalars: neither). A
        format that stores its tensors transposed (AWQ, GPTQ) overrides this."""
        return (0 if tensor.dim() >= 1 else None), (1 if tensor.dim() >= 2 else None)

    def load_float(self, layer: nn.Module, weight: torch.Tensor) -> None:
        """Load a float weight [out, in] for the whole layer as a checkpoint of this method's format
        would hold it: random weights of `--load-format dummy`, and tests. The default loads it as
        the plain `weight`; a method whose checkpoints hold other tensors (packed integers, scales)
        quantizes `weight` into them with its own quantizer and loads those."""
        self.load(layer, "weight", weight, 0, weight.shape[0])

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


class PlainLinearMethod(LinearMethod):
    """Unquantized weights in the compute dtype through F.linear: the layers a quantized
    checkpoint leaves unquantized (its ignore list)."""

    def create_weights(self, layer, in_features, out_features, bias, dtype, device):
        create_plain_weights(layer, in_features, out_features, bias, dtype, device)

    def apply(self, layer, x):
        return F.linear(x, layer.weight, layer.bias)


class QuantizationMethod(Component):
    kind: ClassVar[str] = "quantization"
    checkpoint_formats: ClassVar[tuple[str | None, ...]] = ()
    """Checkpoint quantization names (HF `quantization_config.quant_method`) this method loads;
    `None` in the tuple means plain unquantized checkpoints."""
    converts_on_load: ClassVar[bool] = False
    """True when the method can quantize a plain checkpoint at load time (online quantization)."""
    supports_tensor_parallel: ClassVar[bool] = True
    """Can its layers be cut for tensor parallelism (LinearMethod.shard_dims names how)? The
    conformance kit checks that column and row cuts recombine to the whole layer; a method whose
    checkpoint tensors cannot be cut sets False, and tp_size > 1 with it is a startup error."""
    max_relative_error: ClassVar[float] = 1e-5
    """The method's accuracy promise: the largest relative Frobenius error ‖y − y_ref‖ / ‖y_ref‖ of
    a linear layer's output, y_ref being the float32 layer with the same unquantized weights, on
    Gaussian inputs (weights Gaussian with std 1/sqrt(in_features), activations in float32). The
    conformance kit measures it over several layer shapes and fails a method that exceeds it (in
    float16 / bfloat16 it allows that dtype's rounding on top). The default suits plain float weights;
    a lossy method declares its own (e.g. about 1e-2 for int8 per-channel, 0.1 for int4 in groups of 32)."""

    def __init__(self, model_config: ModelConfig, options: QuantOptions | None = None):
        self.model_config = model_config
        self.options = options or QuantOptions()

    @property
    def quant_config(self) -> dict:
        """The checkpoint's `quantization_config` ({} for a plain checkpoint)."""
        return dict(self.model_config.quantization_config) if self.model_config is not None else {}

    @abstractmethod
    def linear_method(self, prefix: str) -> LinearMethod:
        ...

    def expert_method(self, prefix: str):
        """The ExpertMethod (jackfield.sdk.moe) of the routed experts of the MoE layer at `prefix`:
        plain weights in the compute dtype unless a method that quantizes experts overrides this."""
        from jackfield.sdk.moe import ExpertMethod

        return ExpertMethod()

    def lm_head_method(self) -> LinearMethod | None:
        """The LinearMethod of the LM head, or None (the default) to keep it a plain projection in
        the model dtype. A method that returns one gets the head's checkpoint weight in its own
        format (for tied embeddings, the embedding's tensor) through `load`, like any linear layer."""
        return None

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
        fmt = ctx.quantization
        plain = fmt is None or fmt == GGUF_FORMAT  # the loader dequantizes a GGUF file for plain methods
        if fmt is None and None not in cls.checkpoint_formats and not cls.converts_on_load:
            formats = ", ".join(repr(f) for f in cls.checkpoint_formats)
            reasons.append(f"loads only checkpoints quantized as {formats} (config.json quantization_config."
                           f"quant_method) and cannot quantize on load; this checkpoint has no quantization_config")
        elif fmt not in cls.checkpoint_formats and not (plain and cls.loads_plain_checkpoints()):
            reasons.append(f"cannot load checkpoints quantized as {ctx.quantization!r}")
        return reasons


def missing_format_error(fmt: str, installed: dict[str, list[str]]) -> str:
    """The startup error for a checkpoint quantized as `fmt` that no installed method loads;
    `installed` maps each loadable format to the methods that load it."""
    known = KNOWN_CHECKPOINT_FORMATS.get(fmt)
    have = ", ".join(sorted(installed)) or "none"
    if known:
        method, dist = known
        return (f"the checkpoint is quantized as {fmt!r} (config.json quantization_config.quant_method), which the "
                f"quantization method {method!r} loads, but no installed plugin registers it: it is provided by "
                f"{dist!r} (the built-in plugin {method!r}; reinstall {dist}, or check JACKFIELD_PLUGINS / "
                f"JACKFIELD_DISABLE_PLUGINS). Installed methods load: {have}")
    return (f"no installed quantization method loads checkpoints quantized as {fmt!r} (config.json "
            f"quantization_config.quant_method); installed methods load: {have}")
