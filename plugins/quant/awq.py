"""The `awq` quantization method: AutoAWQ INT4 checkpoints (`quant_method: awq`, version gemm).

A checkpoint holds per linear layer `qweight` [K, N/8] and `qzeros` [K/group, N/8] int32 (eight
4-bit values per word along the output channels, in AWQ's 0 2 4 6 1 3 5 7 order) and `scales`
[K/group, N] float16; w = (q - z) * s. The quantization_config must say bits 4, zero_point true
and version gemm; `modules_to_not_convert` stay plain. The kernels are int4_linear.py's.
AWQ is a checkpoint format: a plain checkpoint cannot be loaded with --quantization awq.
"""
from __future__ import annotations

import torch

from jackfield.sdk import hookimpl
from jackfield_plugins.quant import int4_numerics as int4
from jackfield_plugins.quant.common import replace_parameter
from jackfield_plugins.quant.int4_linear import Int4LinearMethod, Int4Quantization, Int4Scheme, load_columns


class AwqLinearMethod(Int4LinearMethod):
    checkpoint_params = ("qweight", "qzeros", "scales")

    def create_checkpoint_tensors(self, layer, in_features, out_features, group, device):
        groups = in_features // group
        replace_parameter(layer, "qweight", torch.zeros(in_features, out_features // 8, dtype=torch.int32, device=device))
        replace_parameter(layer, "qzeros", torch.zeros(groups, out_features // 8, dtype=torch.int32, device=device))
        replace_parameter(layer, "scales", torch.zeros(groups, out_features, device=device))

    def shard_dims(self, param_name, tensor):
        """The format's tensors are [input-ish, output-ish] (g_idx [K] runs along the input)."""
        if param_name in self.checkpoint_params and tensor.dim() == 2:
            return 1, 0
        return (None, 0) if param_name == "g_idx" else super().shard_dims(param_name, tensor)

    def load_checkpoint_tensor(self, layer, param_name, tensor, shard_offset, shard_size):
        if param_name in ("qweight", "qzeros"):
            if shard_offset % 8 or shard_size % 8:
                raise ValueError(f"AWQ shard at rows {shard_offset}..{shard_offset + shard_size} is not 8-aligned")
            return load_columns(getattr(layer, param_name), tensor, shard_offset // 8, shard_size // 8)
        return load_columns(layer.scales, tensor, shard_offset, shard_size)

    def float_tensors(self, weight):
        q, scales, zeros, _ = self.quantize_float(weight)
        return int4.to_awq(q, scales, zeros)

    def unpack_checkpoint(self, layer):
        q, scales, zeros = int4.from_awq(layer.qweight, layer.qzeros, layer.scales)
        return q, scales, zeros, None


def awq_scheme(qc: dict) -> Int4Scheme:
    if qc.get("bits", qc.get("w_bit", 4)) != 4:
        raise ValueError(f"awq checkpoints with {qc.get('bits', qc.get('w_bit'))} bits are not supported (only 4)")
    version = str(qc.get("version", "gemm")).lower()
    if version != "gemm":
        raise ValueError(f"awq version {version!r} is not supported (only the gemm layout)")
    if not qc.get("zero_point", True):
        raise ValueError("awq checkpoints without zero points (zero_point: false) are not supported")
    group = int(qc.get("group_size", qc.get("q_group_size", 128)))
    return Int4Scheme(group, False, False, tuple(qc.get("modules_to_not_convert") or ()))


class Awq(Int4Quantization):
    name = "awq"
    priority = 0
    checkpoint_formats = ("awq",)
    description = "AutoAWQ INT4 checkpoints (group-wise scales and zero points); Triton GEMV/GEMM on CUDA"
    max_relative_error = 0.13

    @staticmethod
    def int4_method(qc, gemv, backend):
        return AwqLinearMethod(awq_scheme(qc), gemv, backend)


@hookimpl
def jackfield_register_quantization_methods(register):
    register(Awq)
