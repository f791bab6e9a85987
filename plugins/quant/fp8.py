"""The `fp8` quantization method: FP8 (e4m3) weights and dynamically quantized FP8 activations.

Weight scales are per tensor, per output channel, or per [bn, bk] block (DeepSeek-V3's 128x128,
with activations quantized per token and bk-column group); otherwise activations are quantized
per token. Routed experts of MoE layers are stored block-wise (fp8_experts.py). Per-tensor scales
are kept as per-channel ones (each row of a fused qkv/gate_up layer
gets its shard's scale), which is exact and lets one kernel serve both.

Checkpoints: `quant_method: fp8` (the HF / SGLang / vLLM format: `weight` float8_e4m3fn, with
`weight_scale` (scalar or [N]) or, with `weight_block_size`, `weight_scale_inv` [cdiv(N, bn),
cdiv(K, bk)]; `activation_scheme: static` checkpoints also hold `input_scale`, which is read and
not used: per-token dynamic scales are at least as accurate). A plain checkpoint is quantized per
channel while loading (`--quantization fp8`). Layers on the checkpoint's ignore list stay plain.

Where it runs:
  CPU (any device without FP8 matmul): the reference numerics of fp8_numerics.w8a8_reference,
    dequantized in float32, so FP8 models are tested everywhere.
  CUDA, compute capability >= 8.9: one row (batch-1 decode) goes through the SDK's Gemv with the
    FP8 codes and their scales (W8A16: the activation stays in the compute dtype; timed against the
    W8A8 path per shape, RMSNorm / SiLU-and-mul fused in where faster); more rows quantize the
    activations (one Triton kernel) and multiply with torch._scaled_mm (rowwise, bf16 output) or the
    Triton W8A8 GEMM of fp8_kernels.py, per `quantization_gemm_backend` (auto: _scaled_mm for
    per-channel scales, Triton for block-wise; benchmarks/studies/quant_gemm.py measures both).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from jackfield.sdk import Capabilities, Gemv, WeightScale, create_plain_weights, hookimpl
from jackfield_plugins.quant import fp8_numerics as fp8
from jackfield_plugins.quant.common import (BuiltinQuantization, ScaledCodesLinearMethod, is_ignored, load_row_scale,
                                            replace_parameter)


@dataclass(frozen=True)
class Fp8Scheme:
    """How one checkpoint stores its FP8 layers."""

    block: tuple[int, int] | None = None  # [bn, bk] weight blocks; None: per-channel (per-tensor) scales
    serialized: bool = False              # the checkpoint holds FP8 codes; else quantize plain weights on load
    scale_name: str = "weight_scale"      # "weight_scale_inv" for block-wise `quant_method: fp8` checkpoints
    input_scales: bool = False            # static activation scales in the checkpoint (read, unused)
    ignored: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, qc: dict) -> "Fp8Scheme":
        """From a `quant_method: fp8` quantization_config ({} for a plain checkpoint)."""
        if not qc:
            return cls()
        block = qc.get("weight_block_size")
        if block is not None:
            block = tuple(int(b) for b in block)
            if len(block) != 2 or any(b <= 0 or b & (b - 1) for b in block):
                raise ValueError(f"fp8 weight_block_size must be two powers of two, got {qc['weight_block_size']}")
        scheme = qc.get("activation_scheme", "dynamic")
        if scheme not in ("dynamic", "static"):
            raise ValueError(f"fp8 activation_scheme must be 'dynamic' or 'static', got {scheme!r}")
        ignored = tuple(qc.get("ignored_layers") or qc.get("modules_to_not_convert") or ())
        return cls(block, True, "weight_scale_inv" if block else "weight_scale", scheme == "static", ignored)


class Fp8LinearMethod(ScaledCodesLinearMethod):
    """After loading: `weight` [N, K] float8_e4m3fn and `weight_scale` float32 ([N], or blocks)."""

    def __init__(self, scheme: Fp8Scheme, gemv: Gemv, backend: str):
        super().__init__(gemv, backend)
        self.scheme = scheme

    # ---- weights ---------------------------------------------------------------------------------
    def create_weights(self, layer, in_features, out_features, bias, dtype, device):
        s = self.scheme
        if not s.serialized:
            create_plain_weights(layer, in_features, out_features, bias, dtype, device)
            return
        create_plain_weights(layer, in_features, out_features, bias, fp8.FP8, device)
        if bias:
            replace_parameter(layer, "bias", torch.zeros(out_features, dtype=dtype, device=device))
        if s.block is None:
            scale = torch.ones(out_features, dtype=torch.float32, device=device)
        else:
            scale = torch.ones(-(-out_features // s.block[0]), -(-in_features // s.block[1]), device=device)
        replace_parameter(layer, s.scale_name, scale)
        if s.input_scales:  # one per shard in the checkpoint, kept per row here (read, not used)
            replace_parameter(layer, "input_scale", torch.ones(out_features, device=device))

    def load(self, layer, param_name, tensor, shard_offset, shard_size):
        s = self.scheme
        if param_name == "weight" and s.serialized and tensor.dtype != fp8.FP8:
            raise ValueError(f"an fp8 checkpoint's weight must be float8_e4m3fn, got {tensor.dtype}")
        if param_name == "input_scale" or (param_name == s.scale_name and s.block is None):
            load_row_scale(layer, param_name, tensor, shard_offset, shard_size)
        elif param_name == s.scale_name:
            bn = s.block[0]
            if shard_offset % bn:
                raise ValueError(f"{param_name}: shard at row {shard_offset} does not start on a {bn}-row weight "
                                 f"block, so its block scales cannot be fused")
            super().load(layer, param_name, tensor, shard_offset // bn, -(-shard_size // bn))
        else:
            super().load(layer, param_name, tensor, shard_offset, shard_size)

    def load_float(self, layer, weight):
        s = self.scheme
        if not s.serialized:
            return super().load_float(layer, weight)
        q, scale = fp8.quantize_per_channel(weight) if s.block is None else fp8.quantize_blockwise(weight, s.block)
        n = weight.shape[0]
        self.load(layer, "weight", q, 0, n)
        self.load(layer, s.scale_name, scale, 0, n)
        if s.input_scales:
            self.load(layer, "input_scale", torch.ones(()), 0, n)

    def process_weights_after_loading(self, layer):
        s = self.scheme
        if layer.weight.dtype != fp8.FP8:  # a plain checkpoint: quantize now
            w = layer.weight.detach()
            q, scale = fp8.quantize_per_channel(w) if s.block is None else fp8.quantize_blockwise(w, s.block)
            replace_parameter(layer, "weight", q)
        else:
            scale = getattr(layer, s.scale_name).detach()
        replace_parameter(layer, s.scale_name, None)
        replace_parameter(layer, "input_scale", None)
        replace_parameter(layer, "weight_scale", scale.float().contiguous())
        layer.wscale = WeightScale(layer.weight_scale, s.block)

    # ---- matmul ----------------------------------------------------------------------------------
    def reference(self, layer, x):
        return fp8.w8a8_reference(x, layer.weight, layer.weight_scale, self.scheme.block, layer.bias).to(x.dtype)

    def matmul(self, layer, x):
        from jackfield_plugins.quant.fp8_kernels import quantize_activations, w8a8_matmul

        block = self.scheme.block
        xq, xs = quantize_activations(x, block[1] if block else None)
        if self._scaled_mm(x, layer):
            if block is None:
                y = torch._scaled_mm(xq, layer.weight.t(), scale_a=xs, scale_b=layer.weight_scale.view(1, -1),
                                     out_dtype=x.dtype)
            else:
                y = blockwise_scaled_mm(xq, xs, layer.weight, layer.weight_scale, x.dtype)
            return y if layer.bias is None else y + layer.bias
        return w8a8_matmul(xq, xs, layer.weight, layer.weight_scale, block, layer.bias, x.dtype)

    def _scaled_mm(self, x, layer) -> bool:
        """torch's scaled matmuls (bf16 output only; dims multiples of 16; blocks only 128x128, where
        torch has F.scaled_mm): with the `torch` backend, and with `auto` for per-channel scales;
        otherwise the Triton W8A8 GEMM."""
        n, k = layer.weight.shape
        block = self.scheme.block
        fits = x.dtype == torch.bfloat16 and n % 16 == 0 and k % 16 == 0
        if block is not None:  # torch's block-scaled matmul: 128x128 blocks, torch >= 2.10
            fits = fits and block == (128, 128) and hasattr(F, "scaled_mm")
        wanted = self.backend == "torch" or (self.backend == "auto" and block is None)
        return fits and wanted


def blockwise_scaled_mm(xq, xs, wq, ws, out_dtype):
    """torch's block-scaled matmul (1x128 activation groups x 128x128 weight blocks, CUDA 12.9+ on
    SM90): scales outer-dim-major, the token count padded to 4 and the K blocks to 4."""
    m, kb = xs.shape
    pad_m, pad_k = -m % 4, -kb % 4
    if pad_m:
        xq, xs = F.pad(xq.view(torch.uint8), (0, 0, 0, pad_m)).view(xq.dtype), F.pad(xs, (0, 0, 0, pad_m), value=1.0)
    if pad_k:
        xs, ws = F.pad(xs, (0, pad_k), value=1.0), F.pad(ws, (0, pad_k), value=1.0)
    y = F.scaled_mm(xq, wq.t(), xs.t().contiguous().t(), F.ScalingType.BlockWise1x128, ws.t(),
                    F.ScalingType.BlockWise128x128, output_dtype=out_dtype)
    return y[:m]


class Fp8(BuiltinQuantization):
    name = "fp8"
    priority = -10  # opt-in for plain checkpoints; `auto` picks it for fp8 checkpoints (the only loader)
    checkpoint_formats = ("fp8",)
    converts_on_load = True
    capabilities = Capabilities(min_compute_capability=(8, 9))
    description = "FP8 e4m3 weights (per-tensor, per-channel or 128x128 blocks), dynamic FP8 activations"
    max_relative_error = 0.06

    def __init__(self, model_config, options=None):
        super().__init__(model_config, options)
        self.scheme = Fp8Scheme.from_config(self.quant_config)
        self.ignored = self.scheme.ignored

    @classmethod
    def incompatibilities(cls, ctx):
        return [r + " (FP8 matmuls need Ada or Hopper; on CPU the dequantizing path runs)"
                if r.startswith("compute capability") else r for r in super().incompatibilities(ctx)]

    def layer_method(self, prefix):
        return Fp8LinearMethod(self.scheme, self.gemv, self.options.gemm_backend)

    def plain_head_method(self):
        """Per-channel FP8 codes of the head's float weight (FP8 checkpoints keep their head plain)."""
        return Fp8LinearMethod(Fp8Scheme(), self.gemv, self.options.gemm_backend)

    def expert_method(self, prefix):
        """Block-wise FP8 experts (fp8_experts.py), unless the checkpoint leaves the layer plain."""
        if is_ignored(prefix, self.ignored):
            return super().expert_method(prefix)
        from jackfield_plugins.quant.fp8_experts import Fp8BlockExpertMethod

        return Fp8BlockExpertMethod(self.scheme.block, self.scheme.serialized, prefix)


@hookimpl
def jackfield_register_quantization_methods(register):
    register(Fp8)
