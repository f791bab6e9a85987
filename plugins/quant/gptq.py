"""The `gptq` quantization method: GPTQ INT4 checkpoints (`quant_method: gptq`), AutoGPTQ /
GPTQModel layout, with act order (`desc_act`).

A checkpoint holds per linear layer `qweight` [K/8, N] int32 (eight 4-bit values per word along
the input columns), `qzeros` [K/group, N/8] (along the output channels; the original
`checkpoint_format: gptq` stores each zero minus one, `gptq_v2` as is), `scales` [K/group, N]
float16 and `g_idx` [K], the group of each input column; w[k] = (q[k] - z[g_idx[k]]) * s[g_idx[k]].
With `desc_act: true` the columns are sorted by group at load time and the activations permuted to
match (each group must hold `group_size` columns, as GPTQ writes them). `group_size: -1` is one
group per row. Layers in `modules_to_not_convert` stay plain; with `lm_head: true` the LM head is
quantized too. Kernels: int4_linear.py.
GPTQ is a checkpoint format: a plain checkpoint cannot be loaded with --quantization gptq.
"""
from __future__ import annotations

import torch

from jackfield.sdk import hookimpl
from jackfield_plugins.quant import int4_numerics as int4
from jackfield_plugins.quant.common import replace_parameter
from jackfield_plugins.quant.int4_linear import (Int4LinearMethod, Int4Quantization, Int4Scheme, load_columns,
                                                 load_shared)


class GptqLinearMethod(Int4LinearMethod):
    checkpoint_params = ("qweight", "qzeros", "scales", "g_idx")

    def __init__(self, scheme, gemv, backend, v2: bool):
        super().__init__(scheme, gemv, backend)
        self.v2 = v2

    def create_checkpoint_tensors(self, layer, in_features, out_features, group, device):
        groups = in_features // group
        replace_parameter(layer, "qweight", torch.zeros(in_features // 8, out_features, dtype=torch.int32, device=device))
        replace_parameter(layer, "qzeros", torch.zeros(groups, out_features // 8, dtype=torch.int32, device=device))
        replace_parameter(layer, "scales", torch.zeros(groups, out_features, device=device))
        replace_parameter(layer, "g_idx", torch.full((in_features,), -1, dtype=torch.int32, device=device))

    def shard_dims(self, param_name, tensor):
        """The format's tensors are [input-ish, output-ish] (g_idx [K] runs along the input)."""
        if param_name in self.checkpoint_params and tensor.dim() == 2:
            return 1, 0
        return (None, 0) if param_name == "g_idx" else super().shard_dims(param_name, tensor)

    def load_checkpoint_tensor(self, layer, param_name, tensor, shard_offset, shard_size):
        if param_name in ("qweight", "scales"):
            return load_columns(getattr(layer, param_name), tensor, shard_offset, shard_size)
        if param_name == "qzeros":
            if shard_offset % 8 or shard_size % 8:
                raise ValueError(f"GPTQ shard at rows {shard_offset}..{shard_offset + shard_size} is not 8-aligned")
            return load_columns(layer.qzeros, tensor, shard_offset // 8, shard_size // 8)
        if self.scheme.act_order and getattr(layer, "parallel", None) == "row":
            raise ValueError("an act-order (desc_act) GPTQ checkpoint cannot be cut by input columns for tensor "
                             "parallelism (g_idx names the whole layer's groups)")
        return load_shared(layer.g_idx, tensor, "g_idx")

    def float_tensors(self, weight):
        q, scales, zeros, g_idx = self.quantize_float(weight)
        return int4.to_gptq(q, scales, zeros, g_idx, self.v2)

    def unpack_checkpoint(self, layer):
        q, scales, zeros = int4.from_gptq(layer.qweight, layer.qzeros, layer.scales, self.v2)
        return q, scales, zeros, layer.g_idx.detach() if self.scheme.act_order else None


def gptq_v2(qc: dict) -> bool:
    """Whether a GPTQ quantization_config's zero points are stored as is (gptq_v2), not minus one."""
    fmt = str(qc.get("checkpoint_format", "gptq")).lower()
    if fmt not in ("gptq", "gptq_v2"):
        raise ValueError(f"gptq checkpoint_format {fmt!r} is not supported (gptq or gptq_v2)")
    return fmt == "gptq_v2"


def gptq_scheme(qc: dict) -> Int4Scheme:
    if qc.get("bits", 4) != 4:
        raise ValueError(f"gptq checkpoints with {qc.get('bits')} bits are not supported (only 4)")
    return Int4Scheme(int(qc.get("group_size", 128)), bool(qc.get("sym", True)), bool(qc.get("desc_act", False)),
                      tuple(qc.get("modules_to_not_convert") or ()))


class Gptq(Int4Quantization):
    name = "gptq"
    priority = 0
    checkpoint_formats = ("gptq",)
    description = "GPTQ INT4 checkpoints (act order, zero points); Triton GEMV/GEMM on CUDA"
    max_relative_error = 0.14

    def head_in_checkpoint(self):
        """GPTQModel's `lm_head: true`: the checkpoint holds lm_head.qweight and the rest."""
        return bool(self.quant_config.get("lm_head", False))

    @staticmethod
    def int4_method(qc, gemv, backend):
        return GptqLinearMethod(gptq_scheme(qc), gemv, backend, gptq_v2(qc))


@hookimpl
def jackfield_register_quantization_methods(register):
    register(Gptq)
