"""The INT4 LinearMethod shared by `awq`, `gptq` and compressed-tensors W4A16 checkpoints.

Each format's subclass creates and loads the checkpoint's own tensors (shard-aware: AWQ and GPTQ
pack output channels along their second dimension) and says how they unpack; after loading, every
format is repacked into one internal layout (int4_numerics.py): `qweight` [N, K/8] int32,
`scales` and `zeros` [N, K/group] float16, and `perm` [K] (act order, else None) by which the
activations are permuted so that each group's columns are contiguous.

Where it runs:
  CPU: the weight dequantized to float32 (int4_numerics.dequantize), then F.linear.
  CUDA, bf16, groups of 128 or 256 (`quantization_gemm_backend auto`): the codes are repacked into
    tinygemm's layout (int4_tinygemm.py); up to int4_tinygemm.ROWS rows go through PyTorch's
    tinygemm kernel (tensor cores; 1.2-1.4x the Triton GEMV's speed at batch 1 on the 8B shapes, H100),
    more through the Triton dequantize kernel (which reads that layout) and cuBLAS: on the 8B shapes
    that beats the Triton GEMM from 32 rows on (benchmarks/studies/int4_tinygemm.py).
  CUDA otherwise: one row through the Triton INT4 GEMV (int4_kernels.py; block configuration timed once
    per shape against the next path, by the SDK's Gemv tuner); up to DEQUANT_ROWS rows the Triton
    dequantize-in-registers GEMM; more rows (prefill), or `quantization_gemm_backend torch`, the
    Triton dequantize kernel and cuBLAS.
"""
from __future__ import annotations

import functools
from abc import abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from jackfield.sdk import Gemv, LinearMethod, create_plain_weights
from jackfield_plugins.quant import int4_numerics as int4
from jackfield_plugins.quant import int4_tinygemm as tinygemm
from jackfield_plugins.quant.common import BuiltinQuantization, replace_parameter

DEQUANT_ROWS = 1024  # from this many rows: dequantize + cuBLAS (auto backend)
GEMV_CONFIGS = (  # (block_n, block_k, num_warps, num_stages) timed for one-row inputs
    (4, 128, 4, 3), (8, 128, 4, 3), (16, 128, 8, 2), (8, 64, 4, 4), (16, 64, 4, 3), (32, 32, 4, 4), (16, 32, 4, 4),
    # chunks spanning several groups: 256-512 bytes of codes per row per load, enough bytes in
    # flight to stream HBM (a 128-column chunk moves 64 bytes a row, and the loop waits on each)
    (4, 512, 4, 2), (8, 512, 4, 2), (16, 512, 8, 2), (4, 1024, 4, 2), (8, 1024, 8, 2))
GROUPED_GEMV_CONFIGS = (  # the whole-group kernel (int4_kernels._int4_gemv_grouped_kernel): chunks of whole groups;
    # the fifth value: 1 loads x a vector per word and splits it in registers, 2 one strided load per code
    (2, 1024, 4, 2, 1), (4, 512, 4, 2, 1), (4, 1024, 4, 2, 1), (8, 256, 4, 2, 1), (8, 512, 4, 2, 1),
    (8, 1024, 8, 2, 1), (16, 256, 8, 2, 1), (16, 128, 4, 2, 1), (4, 256, 2, 2, 1), (2, 512, 2, 2, 1),
    (4, 512, 4, 2, 2), (8, 512, 4, 2, 2), (16, 256, 8, 2, 2))


@dataclass(frozen=True)
class Int4GemvConfig:
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    pdl: bool = True
    grouped: int = 0  # 1, 2: the whole-group kernel (block_k a power-of-two multiple of the group) with x
    #                   split in registers / gathered per code position


def grouped_fits(block_k: int, k: int, group: int) -> bool:
    """Whether the whole-group GEMV tiles K with chunks of block_k columns: a power-of-two number
    of groups a chunk, each a power-of-two number of words."""
    def pow2(v: int) -> bool:
        return v > 0 and v & (v - 1) == 0

    return k % block_k == 0 and block_k % group == 0 and pow2(block_k // group) and group >= 8 and pow2(group // 8)


def gemv_fits(block_k: int, k: int, group: int) -> bool:
    """Whether a GEMV chunk of block_k columns (whole words) tiles K; a chunk within one group reads
    one scale a row, a longer one a scale per word (every group is whole words: int4_fits)."""
    return block_k % 8 == 0 and k % block_k == 0 and group % 8 == 0


def tile_fits(block_k: int, k: int, group: int) -> bool:
    """Whether a matmul / dequantize tile of block_k columns tiles K and stays within one group."""
    return block_k % 8 == 0 and k % block_k == 0 and group % block_k == 0


@functools.cache
def gemv_configs(k: int, group: int) -> tuple[Int4GemvConfig, ...]:
    """The GEMV configurations of both kernels that tile this K and group."""
    return (tuple(Int4GemvConfig(*c) for c in GEMV_CONFIGS if gemv_fits(c[1], k, group))
            + tuple(Int4GemvConfig(*c[:4], grouped=c[4]) for c in GROUPED_GEMV_CONFIGS if grouped_fits(c[1], k, group)))


@dataclass(frozen=True)
class Int4Scheme:
    group: int                 # input columns per scale; -1: one group per row (per channel)
    symmetric: bool = False    # our quantizer's grid for `load_float` (checkpoints carry their zeros)
    act_order: bool = False    # g_idx reorders columns into groups (GPTQ desc_act, compressed-tensors actorder)
    ignored: tuple[str, ...] = ()

    def group_of(self, in_features: int) -> int:
        return in_features if self.group <= 0 else self.group


def int4_fits(in_features: int, out_features: int, group: int) -> bool:
    """Whether a layer can hold INT4 codes: whole groups along its input, whole words of eight
    output channels (the packed formats' granularity)."""
    return in_features % group == 0 and group % 8 == 0 and out_features % 8 == 0


def float_checkpoint(method: "Int4LinearMethod", weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """A format's checkpoint tensors for a float weight (the whole layer), or the plain weight where
    its shape fits no INT4 grid: `QuantizationMethod.checkpoint_tensors` of the INT4 formats."""
    group = method.scheme.group_of(weight.shape[1])
    return method.float_tensors(weight) if int4_fits(weight.shape[1], weight.shape[0], group) else {"weight": weight}


def load_columns(param: torch.Tensor, tensor: torch.Tensor, start: int, width: int) -> None:
    """Copy `tensor` into columns [start, start + width) of a checkpoint tensor packed along dim 1."""
    if tensor.shape[0] != param.shape[0] or tensor.shape[1] != width:
        raise ValueError(f"tensor of shape {tuple(tensor.shape)} does not fit {param.shape[0]} rows x {width} columns")
    with torch.no_grad():
        param[:, start:start + width].copy_(tensor)


def load_shared(param: torch.Tensor, tensor: torch.Tensor, name: str) -> None:
    """Tensors every shard of a fused layer holds alike (g_idx): the first load copies, later ones must match."""
    if tensor.shape != param.shape:
        raise ValueError(f"{name} of shape {tuple(tensor.shape)}, expected {tuple(param.shape)}")
    with torch.no_grad():
        if bool((param < 0).all()):
            param.copy_(tensor)
        elif not torch.equal(param, tensor.to(param.device, param.dtype)):
            raise ValueError(f"the shards of a fused layer have different {name}; such checkpoints are not supported")


class Int4LinearMethod(LinearMethod):
    """A layer whose shape fits no INT4 grid (in_features not a multiple of the group, or
    out_features of 8) is `plain`: checkpoints store such layers unquantized, and so does this."""

    checkpoint_params: tuple[str, ...] = ()  # the format's tensor names, dropped after repacking

    def __init__(self, scheme: Int4Scheme, gemv: Gemv, backend: str):
        self.scheme, self.gemv, self.backend = scheme, gemv, backend

    def create_weights(self, layer, in_features, out_features, bias, dtype, device):
        self.group, self.dtype = self.scheme.group_of(in_features), dtype
        self.plain = not int4_fits(in_features, out_features, self.group)
        create_plain_weights(layer, in_features if self.plain else 0, out_features, bias, dtype, device)
        if not self.plain:
            replace_parameter(layer, "weight", None)
            layer.weight = None  # the codes replace it
            self.create_checkpoint_tensors(layer, in_features, out_features, self.group, device)

    @abstractmethod
    def create_checkpoint_tensors(self, layer, in_features: int, out_features: int, group: int, device) -> None:
        ...

    def load(self, layer, param_name, tensor, shard_offset, shard_size):
        if not isinstance(getattr(layer, param_name, None), torch.Tensor):
            kind = "plain (its shape fits no INT4 grid)" if self.plain else "INT4"
            raise ValueError(f"checkpoint tensor {param_name!r} is not part of this {kind} layer")
        if self.plain or param_name == "bias":
            return super().load(layer, param_name, tensor, shard_offset, shard_size)
        return self.load_checkpoint_tensor(layer, param_name, tensor, shard_offset, shard_size)

    def load_checkpoint_tensor(self, layer, param_name, tensor, shard_offset, shard_size) -> None:
        """One of the format's tensors; the default copies rows (output channels along dim 0)."""
        super().load(layer, param_name, tensor, shard_offset, shard_size)

    def load_float(self, layer, weight):
        if self.plain:
            return super().load_float(layer, weight)
        for name, tensor in self.float_tensors(weight).items():
            self.load(layer, name, tensor, 0, weight.shape[0])

    @abstractmethod
    def float_tensors(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """The format's tensors for a float weight, quantized on this scheme's grid."""

    @abstractmethod
    def unpack_checkpoint(self, layer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(codes [N, K], scales [N, G], zeros [N, G], g_idx [K] or None) of the loaded tensors."""

    def process_weights_after_loading(self, layer):
        if self.plain:
            return
        q, scales, zeros, g_idx = self.unpack_checkpoint(layer)
        perm = int4.act_order_perm(g_idx, self.group) if g_idx is not None else None
        if perm is not None:
            q = q[:, perm]
        for name in self.checkpoint_params:
            replace_parameter(layer, name, None)
        n, k = q.shape
        use_tinygemm = self.backend == "auto" and tinygemm.fits(q.device, self.dtype, n, k, self.group)
        replace_parameter(layer, "qweight", tinygemm.pack_on_device(q) if use_tinygemm else int4.pack(q, 1))
        replace_parameter(layer, "scales", scales.to(torch.float16).contiguous())
        replace_parameter(layer, "zeros", zeros.to(torch.float16).contiguous())
        layer.register_buffer("perm", perm)
        layer.register_buffer("tinygemm_table", tinygemm.scale_table(scales, zeros) if use_tinygemm else None)

    def quantize_float(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes, scales, zeros, g_idx) of a float weight on this scheme's grid (natural column order)."""
        group = self.scheme.group_of(weight.shape[1])
        q, scales, zeros = int4.quantize(weight, group, self.scheme.symmetric)
        return q, scales, zeros, torch.arange(weight.shape[1], device=weight.device) // group

    # ---- matmul ----------------------------------------------------------------------------------
    def apply(self, layer, x):
        if self.plain:
            return F.linear(x, layer.weight, layer.bias)
        x2 = x.reshape(-1, x.shape[-1])
        if layer.perm is not None:
            x2 = x2.index_select(1, layer.perm)
        if not x2.is_cuda:
            w = int4.dequantize(int4.unpack(layer.qweight, 1), layer.scales, layer.zeros, None)
            y = F.linear(x2.float(), w).to(x.dtype)
            y = y if layer.bias is None else y + layer.bias
        elif layer.tinygemm_table is not None:
            y = self._tinygemm(layer, x2)
        elif x2.shape[0] == 1 and self.backend != "torch":
            y = self._gemv(layer, x2.contiguous())
        else:
            y = self._matmul(layer, x2)
        return y.reshape(*x.shape[:-1], y.shape[-1])

    def _tinygemm(self, layer, x):
        """A layer in tinygemm's layout: its kernel up to tinygemm.ROWS rows, dequantize + cuBLAS above."""
        from jackfield_plugins.quant.int4_kernels import int4_dequantize

        if x.shape[0] > tinygemm.ROWS:
            return F.linear(x, int4_dequantize(layer.qweight, layer.scales, layer.zeros, self.group, x.dtype),
                            layer.bias)
        y = tinygemm.matmul(x.contiguous(), layer.qweight, self.group, layer.tinygemm_table)
        return y if layer.bias is None else y + layer.bias

    def _gemv(self, layer, x):
        from jackfield_plugins.quant.int4_kernels import int4_gemv

        n, k = layer.qweight.shape[0], x.shape[1]
        run = lambda c: int4_gemv(x, layer.qweight, layer.scales, layer.zeros, self.group, layer.bias, c)  # noqa: E731
        cfg = self.gemv.choose(("int4_gemv", n, k, self.group, x.dtype), k, lambda: self._matmul(layer, x), run,
                               gemv_configs(k, self.group))
        return run(cfg) if cfg is not None else self._matmul(layer, x)

    def _matmul(self, layer, x):
        from jackfield_plugins.quant.int4_kernels import int4_dequantize, int4_matmul

        if self.backend == "torch" or (self.backend == "auto" and x.shape[0] >= DEQUANT_ROWS):
            w = int4_dequantize(layer.qweight, layer.scales, layer.zeros, self.group, x.dtype)
            return F.linear(x, w, layer.bias)
        return int4_matmul(x.contiguous(), layer.qweight, layer.scales, layer.zeros, self.group, layer.bias)


class Int4Quantization(BuiltinQuantization):
    """The INT4 checkpoint formats (awq, gptq): `int4_method` builds a layer's LinearMethod from the
    quantization_config. One is built with the method, so an unsupported config fails at startup."""

    def __init__(self, model_config, options=None):
        super().__init__(model_config, options)
        self.ignored = self.layer_method("").scheme.ignored

    @staticmethod
    @abstractmethod
    def int4_method(qc: dict, gemv: Gemv | None, backend: str) -> Int4LinearMethod:
        """The LinearMethod of a quantized layer under quantization_config `qc`, or ValueError naming
        what of it is not supported."""

    @classmethod
    def checkpoint_tensors(cls, weight):
        """What a checkpoint of a config naming only the format (its defaults) stores."""
        return float_checkpoint(cls.int4_method({}, None, "auto"), weight)

    def layer_method(self, prefix):
        return self.int4_method(self.quant_config, self.gemv, self.options.gemm_backend)
