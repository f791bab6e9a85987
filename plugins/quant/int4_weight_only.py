"""The `int4_weight_only` quantization method (CPU): 4-bit weights, bfloat16 activations.

Plain checkpoints are quantized while loading. Each linear weight [N, K] is rounded to nearest
with an asymmetric 4-bit grid per group of 32 input columns (scale = (max - min) / 15, codes
0..15, W = (q - 8) * scale + zero with zero = min + 8 * scale), packed with
`aten._convert_weight_to_int4pack_for_cpu`, and multiplied by PyTorch's CPU int4 kernel
`aten._weight_int4pack_mm_for_cpu`. That kernel is only fast with bfloat16 activations and
scales, so `apply` casts x to bfloat16 and the result back to the model dtype (float32 on CPU).

Why: batch-1 decoding on CPU is bound by reading the weights; 4-bit weights read 8x less than
float32. For a Q4_1 GGUF (the embedded SmolLM2) the grid is the file's own (Q4_1 is this scheme
with fp16 scale/min), so the only numerical change is bfloat16 rounding of the scales, zeros and
activations (about 0.3% relative error per matmul).

Layers the kernel cannot take keep their float weight and run F.linear: in_features not a
multiple of 32 (the group) or out_features not a multiple of 16 (a packing constraint of the
kernel). Embeddings and the lm_head are not Linear layers and stay in the model dtype.
CPU only: the CUDA int4 kernel takes a different packing and is not implemented or tested here.
"""
import torch
import torch.nn.functional as F

from jackfield.sdk import (Availability, Capabilities, LinearMethod, QuantizationMethod, create_plain_weights,
                           hookimpl)

GROUP_SIZE = 32
N_MULTIPLE = 16  # _convert_weight_to_int4pack_for_cpu needs out_features divisible by 16
KERNEL_OPS = ("_convert_weight_to_int4pack_for_cpu", "_weight_int4pack_mm_for_cpu")


def quantize(w: torch.Tensor, group_size: int = GROUP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric round-to-nearest int4 of w [N, K] per group of input columns.

    Returns the codes q (int32 [N, K], 0..15) and scales_and_zeros (float32 [K/group, N, 2]),
    the kernel's layout, such that W[n, k] = (q[n, k] - 8) * scale[g, n] + zero[g, n], g = k // group.
    """
    n, k = w.shape
    groups = w.float().reshape(n, k // group_size, group_size)
    lo, hi = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    scale = (hi - lo) / 15
    q = ((groups - lo) / scale.clamp(min=torch.finfo(torch.float32).tiny)).round().clamp(0, 15)
    zero = lo + 8 * scale
    scales_and_zeros = torch.cat([scale, zero], -1).transpose(0, 1).contiguous()
    return q.reshape(n, k).to(torch.int32), scales_and_zeros


def dequantize(q: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int = GROUP_SIZE) -> torch.Tensor:
    """The float32 weight [N, K] that codes q and scales_and_zeros [K/group, N, 2] stand for."""
    n, k = q.shape
    sz = scales_and_zeros.float().transpose(0, 1)  # [N, K/group, 2]
    groups = q.float().reshape(n, k // group_size, group_size)
    return ((groups - 8) * sz[..., :1] + sz[..., 1:]).reshape(n, k)


class Int4WeightOnlyLinearMethod(LinearMethod):
    """Loads a plain weight like `unquantized`, then swaps it for packed int4 codes.

    After `process_weights_after_loading` a packed layer has `layer.weight = None`, a `qweight`
    buffer (the packed codes) and a `scales_and_zeros` buffer (bfloat16 [K/32, N, 2]); a layer the
    kernel cannot take keeps `layer.weight`, and `apply` tells the two apart by it.
    """

    def create_weights(self, layer, in_features, out_features, bias, dtype, device):
        create_plain_weights(layer, in_features, out_features, bias, dtype, device)

    def process_weights_after_loading(self, layer):
        w = layer.weight
        if w is None:  # already packed
            return
        n, k = w.shape
        if k % GROUP_SIZE or n % N_MULTIPLE:
            return  # F.linear fallback
        q, scales_and_zeros = quantize(w)
        layer.register_buffer("qweight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1), persistent=False)
        layer.register_buffer("scales_and_zeros", scales_and_zeros.to(torch.bfloat16), persistent=False)
        layer.weight = None  # frees the float weight

    def apply(self, layer, x):
        if layer.weight is not None:
            return F.linear(x, layer.weight, layer.bias)
        n = layer.scales_and_zeros.shape[1]
        x2 = x.reshape(-1, x.shape[-1])
        if x2.shape[0] == 0:
            return x.new_empty(*x.shape[:-1], n)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.to(torch.bfloat16).contiguous(), layer.qweight,
                                                       GROUP_SIZE, layer.scales_and_zeros).to(x.dtype)
        if layer.bias is not None:
            y = y + layer.bias
        return y.reshape(*x.shape[:-1], n)


class Int4WeightOnly(QuantizationMethod):
    name = "int4_weight_only"
    priority = -10  # opt-in: `auto` keeps picking `unquantized` for plain checkpoints
    checkpoint_formats = ()
    converts_on_load = True
    max_relative_error = 0.1  # round-to-nearest 4-bit in groups of 32 (~0.075) plus bfloat16 activations
    capabilities = Capabilities(devices=("cpu",))
    description = "Quantize plain weights to int4 at load (group 32, bf16 activations; CPU)"
    max_relative_error = 0.1  # 4-bit round-to-nearest per 32 columns (~0.08 on Gaussian weights)

    @classmethod
    def availability(cls) -> Availability:
        missing = [op for op in KERNEL_OPS if not hasattr(torch.ops.aten, op)]
        if missing:
            return Availability.no(f"torch {torch.__version__} has no torch.ops.aten.{missing[0]} "
                                   "(PyTorch's CPU int4 kernel)")
        return super().availability()

    def linear_method(self, prefix):
        return Int4WeightOnlyLinearMethod()


@hookimpl
def jackfield_register_quantization_methods(register):
    register(Int4WeightOnly)
