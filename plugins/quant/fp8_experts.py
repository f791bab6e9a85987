"""The `fp8` method's routed experts: block-wise FP8 ("fp8_block" in jackfield.sdk.moe).

Each expert's w13 [2I, H] and w2 [H, I] are float8_e4m3fn codes with one float32 scale per
[bn, bk] block (DeepSeek-V3's 128x128). From a block-wise checkpoint (`weight_block_size`) the codes
and their `weight_scale_inv` load as they are (the gate and up scales fused into w13's like the
codes, which needs I to be a multiple of bn); a plain checkpoint is quantized per expert after
loading with 128x128 blocks (bn the largest power of two up to 128 dividing I, for small experts). A per-channel FP8 checkpoint's experts have no block scales for the
fused MoE kernels: its experts are rejected with that reason. The dispatchers dequantize in
registers (weight-only FP8: the activations stay in the compute dtype).
"""
from __future__ import annotations

import torch
from torch import nn

from jackfield.sdk import ExpertMethod, ExpertWeights
from jackfield_plugins.quant import fp8_numerics as fp8
from jackfield_plugins.quant.common import replace_parameter

ONLINE_BLOCK = 128  # block rows and columns of a plain checkpoint's experts quantized on load


class Fp8BlockExpertMethod(ExpertMethod):
    format = "fp8_block"

    def __init__(self, block: tuple[int, int] | None, serialized: bool, prefix: str = ""):
        if serialized and block is None:
            raise ValueError(f"{prefix}: this fp8 checkpoint stores per-channel scales, but FP8 experts run with "
                             f"block-wise scales (quantization_config.weight_block_size, e.g. [128, 128]); load the "
                             f"model without --quantization fp8 or from a block-wise FP8 checkpoint")
        self.block, self.serialized = block, serialized

    def create_weights(self, layer, num_experts, hidden_size, intermediate_size, dtype, device):
        if self.block is None:
            self.block = (min(ONLINE_BLOCK, intermediate_size & -intermediate_size), ONLINE_BLOCK)
        bn, bk = self.block
        if intermediate_size % bn:
            raise ValueError(f"fp8 experts: the expert intermediate size {intermediate_size} is not a multiple of the "
                             f"{bn}-row scale blocks, so w13's gate and up blocks cannot be fused")
        super().create_weights(layer, num_experts, hidden_size, intermediate_size,
                               fp8.FP8 if self.serialized else dtype, device)
        if self.serialized:
            cdiv = lambda a, b: -(-a // b)  # noqa: E731
            layer.w13_weight_scale_inv = nn.Parameter(torch.ones(
                num_experts, cdiv(2 * intermediate_size, bn), cdiv(hidden_size, bk), device=device), requires_grad=False)
            layer.w2_weight_scale_inv = nn.Parameter(torch.ones(
                num_experts, cdiv(hidden_size, bn), cdiv(intermediate_size, bk), device=device), requires_grad=False)

    def load(self, layer, param_name, tensor, expert, shard):
        if param_name.endswith("_weight") and self.serialized and tensor.dtype != fp8.FP8:
            raise ValueError(f"an fp8 checkpoint's expert weight must be float8_e4m3fn, got {tensor.dtype}")
        super().load(layer, param_name, tensor, expert, shard)

    def process_weights_after_loading(self, layer):
        for name in ("w13", "w2"):
            w = getattr(layer, f"{name}_weight").detach()
            if w.dtype == fp8.FP8:
                scale = getattr(layer, f"{name}_weight_scale_inv").detach().float().contiguous()
            else:  # a plain checkpoint: one expert at a time, so the float32 temporaries stay small
                q = torch.empty(w.shape, dtype=fp8.FP8, device=w.device)
                scales = []
                for e in range(w.shape[0]):
                    q[e], s = fp8.quantize_blockwise(w[e], self.block)
                    scales.append(s)
                w, scale = q, torch.stack(scales)
                replace_parameter(layer, f"{name}_weight", None)  # free the plain weights first
            replace_parameter(layer, f"{name}_weight", w)
            replace_parameter(layer, f"{name}_weight_scale_inv", scale)

    def weights(self, layer):
        return ExpertWeights(layer.w13_weight, layer.w2_weight, self.format, layer.w13_weight_scale_inv,
                             layer.w2_weight_scale_inv, self.block)
