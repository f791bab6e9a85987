"""The `compressed_tensors` quantization method: checkpoints written by llm-compressor
(`quant_method: compressed-tensors`), each layer mapped onto the method that implements its scheme.

The quantization_config's `config_groups` name target layers (`Linear`, module names, or `re:`
patterns) and, per group, the `weights` and `input_activations` quantization arguments:
  FP8 weights (`type: float`, 8 bits; strategy tensor, channel or block with `block_structure`)
    -> fp8's Fp8LinearMethod (`weight`, `weight_scale`, static `input_scale` read and unused);
    activations are quantized dynamically per token (per token and group for block weights).
  INT8 weights (`type: int`, 8 bits, symmetric, tensor or channel) -> int8_wo's Int8LinearMethod
    (activation quantization of W8A8 checkpoints is not applied: activations stay in bf16).
  INT4 weights (`type: int`, 4 bits, group or channel strategy, format pack-quantized: W4A16)
    -> an INT4 LinearMethod on `weight_packed`, `weight_scale`, `weight_zero_point` (asymmetric),
    `weight_shape` and `weight_g_idx` (`actorder: group`), kernels of int4_linear.py.
A fused layer (qkv, gate_up) takes the scheme of its shards, which must agree. Layers on the
`ignore` list, or matched by no group, stay plain. Other schemes (2:4 sparsity, FP4, 8-bit
asymmetric…) fail at startup naming the scheme.
"""
from __future__ import annotations

import re

import torch

from jackfield.sdk import PlainLinearMethod, checkpoint_names, hookimpl
from jackfield_plugins.quant import int4_numerics as int4
from jackfield_plugins.quant.common import BuiltinQuantization, replace_parameter, shards
from jackfield_plugins.quant.fp8 import Fp8LinearMethod, Fp8Scheme
from jackfield_plugins.quant.int4_linear import Int4LinearMethod, Int4Scheme, load_shared
from jackfield_plugins.quant.int8_wo import Int8LinearMethod


class CompressedInt4LinearMethod(Int4LinearMethod):
    """compressed-tensors pack-quantized INT4 (rows are output channels, as in the internal layout)."""

    checkpoint_params = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape", "weight_g_idx")

    def create_checkpoint_tensors(self, layer, in_features, out_features, group, device):
        groups = in_features // group
        replace_parameter(layer, "weight_packed", torch.zeros(out_features, in_features // 8, dtype=torch.int32,
                                                              device=device))
        replace_parameter(layer, "weight_scale", torch.zeros(out_features, groups, device=device))
        # [out, in] of each shard, checked row by row while loading, then dropped
        replace_parameter(layer, "weight_shape", torch.zeros(out_features, 2, dtype=torch.int32, device=device))
        if not self.scheme.symmetric:
            replace_parameter(layer, "weight_zero_point", torch.zeros(out_features // 8, groups, dtype=torch.int32,
                                                                      device=device))
        if self.scheme.act_order:
            replace_parameter(layer, "weight_g_idx", torch.full((in_features,), -1, dtype=torch.int32, device=device))

    def shard_dims(self, param_name, tensor):
        if param_name == "weight_shape":  # [out, in] of the whole shard: a value, not cut
            return None, None
        return (None, 0) if param_name == "weight_g_idx" else super().shard_dims(param_name, tensor)

    def load_checkpoint_tensor(self, layer, param_name, tensor, shard_offset, shard_size):
        if param_name == "weight_shape":
            expected = [shard_size, layer.weight_packed.shape[1] * 8]
            out, inp = tensor.tolist()
            if [out, inp] != expected and getattr(layer, "parallel", None) and not (
                    out % expected[0] or inp % expected[1]):  # a tensor-parallel cut of the whole shard
                tensor = torch.tensor(expected, dtype=tensor.dtype)
            if tensor.tolist() != expected:
                raise ValueError(f"weight_shape {tensor.tolist()} does not match the layer's shard {expected}")
            with torch.no_grad():
                layer.weight_shape[shard_offset:shard_offset + shard_size] = tensor
            return None
        if param_name == "weight_zero_point":
            if shard_offset % 8 or shard_size % 8:
                raise ValueError(f"zero-point shard at rows {shard_offset}..{shard_offset + shard_size} is not 8-aligned")
            return super().load_checkpoint_tensor(layer, param_name, tensor, shard_offset // 8, shard_size // 8)
        if param_name == "weight_g_idx":
            if getattr(layer, "parallel", None) == "row":
                raise ValueError("an act-order (actorder: group) checkpoint cannot be cut by input columns for "
                                 "tensor parallelism (weight_g_idx names the whole layer's groups)")
            return load_shared(layer.weight_g_idx, tensor, "weight_g_idx")
        return super().load_checkpoint_tensor(layer, param_name, tensor, shard_offset, shard_size)

    def float_tensors(self, weight):
        q, scales, zeros, g_idx = self.quantize_float(weight)
        tensors = int4.to_compressed(q, scales, None if self.scheme.symmetric else zeros)
        if self.scheme.act_order:
            tensors["weight_g_idx"] = g_idx.to(torch.int32)
        tensors.pop("weight_shape")
        return tensors

    def load_float(self, layer, weight):
        super().load_float(layer, weight)
        for off, size in shards(layer, weight.shape[0]) if not self.plain else ():
            self.load(layer, "weight_shape", torch.tensor([size, weight.shape[1]], dtype=torch.int32), off, size)

    def unpack_checkpoint(self, layer):
        zp = layer.weight_zero_point if not self.scheme.symmetric else None
        q, scales, zeros = int4.from_compressed(layer.weight_packed, layer.weight_scale, zp)
        return q, scales, zeros, layer.weight_g_idx.detach() if self.scheme.act_order else None


def _matches(target: str, name: str) -> bool:
    if target == "Linear":
        return True
    if target.startswith("re:"):
        return re.fullmatch(target[3:], name) is not None
    return name == target or name.endswith("." + target)


class CompressedTensors(BuiltinQuantization):
    name = "compressed_tensors"
    priority = 0
    checkpoint_formats = ("compressed-tensors",)
    description = "llm-compressor checkpoints: FP8 W8A8, INT8, W4A16 pack-quantized, mapped onto fp8/int8_wo/int4"
    max_relative_error = 0.15  # the worst of the schemes it maps (INT4 group-wise)

    def __init__(self, model_config, options=None):
        super().__init__(model_config, options)
        qc = self.quant_config
        self.groups = list((qc.get("config_groups") or {}).values())
        self.ignored = tuple(qc.get("ignore") or ())
        for group in self.groups:  # fail at startup, not at the first layer
            self._scheme(group)

    @classmethod
    def checkpoint_tensors(cls, weight):
        """What a checkpoint of a config naming only `quant_method: compressed-tensors` stores: with
        no config_groups every layer is plain. (A config's groups choose other tensors per layer,
        those of fp8, int8_wo or INT4 above; a classmethod cannot see the config.)"""
        return {"weight": weight}

    def _group_for(self, name: str) -> dict | None:
        for group in self.groups:
            if any(_matches(t, name) for t in group.get("targets") or ()):
                return group
        return None

    def layer_method(self, prefix):
        groups = [self._group_for(n) for n in checkpoint_names(prefix)]
        if any(g is not groups[0] for g in groups):
            raise ValueError(f"{prefix}: its shards {checkpoint_names(prefix)} are quantized with different schemes")
        if groups[0] is None:
            return PlainLinearMethod()
        return self._scheme(groups[0])()

    def _scheme(self, group: dict):
        """A factory of the LinearMethod for one config group, or ValueError naming what is unsupported."""
        w, act = group.get("weights") or {}, group.get("input_activations") or None
        kind, bits, strategy = w.get("type"), w.get("num_bits"), w.get("strategy")
        backend, static_input = self.options.gemm_backend, bool(act) and not act.get("dynamic", False)
        desc = f"{bits}-bit {kind} weights, strategy {strategy}"
        if kind == "float" and bits == 8 and strategy in ("tensor", "channel", "block"):
            block = (tuple(w.get("block_structure") or ()) or None) if strategy == "block" else None
            if strategy == "block" and (block is None or len(block) != 2):
                raise ValueError(f"compressed-tensors block strategy without a 2-d block_structure: {w}")
            scheme = Fp8Scheme(block, True, "weight_scale", static_input)
            return lambda: Fp8LinearMethod(scheme, self.gemv, backend)
        if kind == "int" and bits == 8 and strategy in ("tensor", "channel") and w.get("symmetric", True):
            return lambda: Int8LinearMethod(self.gemv, backend, serialized=True, input_scales=static_input)
        if kind == "int" and bits == 4 and strategy in ("group", "channel"):
            group_size = int(w.get("group_size") or -1) if strategy == "group" else -1
            scheme = Int4Scheme(group_size, bool(w.get("symmetric", True)), w.get("actorder") == "group")
            return lambda: CompressedInt4LinearMethod(scheme, self.gemv, backend)
        raise ValueError(f"compressed-tensors scheme with {desc} (symmetric={w.get('symmetric')}) is not supported; "
                         "supported: FP8 tensor/channel/block, INT8 symmetric tensor/channel, INT4 group/channel")


@hookimpl
def jackfield_register_quantization_methods(register):
    register(CompressedTensors)
