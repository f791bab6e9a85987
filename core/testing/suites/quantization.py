"""The quantization suite: every linear layer a method builds stays within its declared error bound.

A test layer is built the way the model's `Linear` builds one: `linear_method(prefix)`, then
`create_weights`, `load` of each checkpoint tensor (from `checkpoint_tensors`, shard by shard for a
fused layer), `process_weights_after_loading`, then `apply` (and the fused `apply_normed` /
`apply_silu_mul`). Outputs are compared with the float32 layer on the same unquantized weights
(`jackfield.sdk.reference.linear`), Gaussian weights (std 1/sqrt(in)) and Gaussian inputs: the
relative Frobenius error must be within `max_relative_error`, plus the rounding of the activation
dtype for float16 / bfloat16. Runs in every declared dtype, on the device asked for. For tensor
parallelism, the SDK `Linear` cut in two (column and row; the checkpoint tensors cut by the method's
`shard_dims`) must recombine to the whole layer, unless the method declares
`supports_tensor_parallel = False`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from jackfield.sdk import LinearMethod, ModelConfig, QuantizationMethod
from jackfield.sdk.layers.linear import Linear
from jackfield.sdk.layers.norm import RMSNorm
from jackfield.sdk.model import ModelBuildContext
from jackfield.sdk.parallel import ParallelGroup
from jackfield.sdk.reference import linear as reference_linear
from jackfield.testing.kit import Check, KitTarget, KitFailure, expect
from jackfield.testing.suites.common import base_dtype, cannot_serve, runs_on_device

DTYPE_ALLOWANCE = {"float32": 0.0, "float16": 3e-3, "bfloat16": 1.5e-2}
# (in_features, out_features, bias, what): MLP-like, attention-like with bias, a small odd shape
SHAPES = [(256, 128, False, "256 -> 128"), (512, 384, True, "512 -> 384 with bias"),
          (72, 40, False, "72 -> 40 (not a multiple of 16 or 32)")]
ROWS = (1, 7, 33)
QKV = (256, (128, 64, 64), ("q", "k", "v"))  # in_features, shard sizes, shard ids


def kit_model_config(cls) -> ModelConfig:
    """A small Llama-shaped ModelConfig to construct the method with."""
    formats = [f for f in cls.checkpoint_formats if f is not None]
    hf = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 256, "hidden_size": 256,
          "intermediate_size": 384, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    if not cls.loads_plain_checkpoints() and formats:
        hf["quantization_config"] = {"quant_method": formats[0]}
    return ModelConfig.from_hf(hf)


class Layer(nn.Module):
    """Stands in for the model's `Linear`: the LinearMethod owns its parameters."""


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _weight(out_f: int, in_f: int, seed: int) -> torch.Tensor:
    return torch.randn(out_f, in_f, generator=_gen(seed)) / math.sqrt(in_f)


def build_layer(t: KitTarget, method, prefix: str, weights: list[torch.Tensor], shard_ids: tuple,
                bias: torch.Tensor | None, dtype: torch.dtype) -> tuple[nn.Module, LinearMethod]:
    """create_weights, load every shard's checkpoint tensors, process_weights_after_loading."""
    lm = method.linear_method(prefix)
    expect(isinstance(lm, LinearMethod), f"linear_method({prefix!r}) returned {type(lm).__name__}, not a LinearMethod")
    layer, in_f = Layer(), weights[0].shape[1]
    out_f = sum(w.shape[0] for w in weights)
    lm.create_weights(layer, in_f, out_f, bias is not None, dtype, t.device)
    offset = 0
    for w, _sid in zip(weights, shard_ids):
        tensors = t.cls.checkpoint_tensors(w.to(dtype))
        for name, tensor in tensors.items():
            lm.load(layer, name, tensor.to(t.device), offset, w.shape[0])
        offset += w.shape[0]
    if bias is not None:
        lm.load(layer, "bias", bias.to(dtype).to(t.device), 0, out_f)
    lm.process_weights_after_loading(layer)
    return layer, lm


def _bound(t: KitTarget, dtype: str) -> float:
    return t.cls.max_relative_error + DTYPE_ALLOWANCE[dtype]


def _compare(t: KitTarget, y: torch.Tensor, ref: torch.Tensor, dtype: str, what: str) -> None:
    expect(isinstance(y, torch.Tensor) and tuple(y.shape) == tuple(ref.shape),
           f"{what}: output shape {tuple(getattr(y, 'shape', ()))}, expected {tuple(ref.shape)}")
    expect(y.dtype == getattr(torch, dtype), f"{what}: output dtype {y.dtype}, expected the activations' {dtype}")
    expect(bool(torch.isfinite(y).all()), f"{what}: output has NaN or inf")
    err = ((y.float() - ref).norm() / ref.norm().clamp_min(1e-12)).item()
    bound = _bound(t, dtype)
    expect(err <= bound, f"{what}: relative error {err:.3g} vs the float32 layer exceeds the declared bound "
                         f"{bound:.3g} (max_relative_error {t.cls.max_relative_error:g}"
                         + (f" + {DTYPE_ALLOWANCE[dtype]:g} for {dtype})" if DTYPE_ALLOWANCE[dtype] else ")"))


def _inputs(rows: int, in_f: int, dtype: str, device: str, seed: int) -> torch.Tensor:
    return torch.randn(rows, in_f, generator=_gen(seed)).to(getattr(torch, dtype)).to(device)


@torch.inference_mode()
def layer_error(t: KitTarget, dtype: str) -> None:
    method, dt = t.cls(kit_model_config(t.cls)), getattr(torch, dtype)
    for i, (in_f, out_f, has_bias, what) in enumerate(SHAPES):
        w = _weight(out_f, in_f, seed=i)
        bias = torch.randn(out_f, generator=_gen(100 + i)) * 0.1 if has_bias else None
        layer, lm = build_layer(t, method, "model.layers.0.mlp.down_proj", [w], (None,), bias, dt)
        for rows in ROWS:
            x = _inputs(rows, in_f, dtype, t.device, seed=10 * i + rows)
            ref = reference_linear(x, w.to(dt).to(t.device), None if bias is None else bias.to(dt).to(t.device))
            _compare(t, lm.apply(layer, x), ref, dtype, f"layer {what}, {rows} row(s), {dtype}")


@torch.inference_mode()
def fused_shards(t: KitTarget) -> None:
    """A qkv-like layer whose three checkpoint tensors are loaded into one parameter, shard by shard."""
    dtype = _base_dtype(t)
    method, dt = t.cls(kit_model_config(t.cls)), getattr(torch, dtype)
    in_f, sizes, ids = QKV
    weights = [_weight(n, in_f, seed=30 + j) for j, n in enumerate(sizes)]
    layer, lm = build_layer(t, method, "model.layers.0.self_attn.qkv_proj", weights, ids, None, dt)
    x = _inputs(7, in_f, dtype, t.device, seed=31)
    ref = reference_linear(x, torch.cat(weights).to(dt).to(t.device))
    _compare(t, lm.apply(layer, x), ref, dtype, f"qkv layer {in_f} -> {sizes} loaded shard by shard, {dtype}")


@torch.inference_mode()
def fused_paths(t: KitTarget) -> None:
    """apply_normed (with and without a residual) and apply_silu_mul agree with the float32 layer."""
    dtype = _base_dtype(t)
    method, dt = t.cls(kit_model_config(t.cls)), getattr(torch, dtype)
    in_f, out_f = 256, 128
    w = _weight(out_f, in_f, seed=40)
    layer, lm = build_layer(t, method, "model.layers.0.self_attn.qkv_proj", [w], (None,), None, dt)
    norm = RMSNorm(in_f, 1e-6, dt, t.device)
    with torch.no_grad():
        norm.weight.copy_((1 + 0.2 * torch.randn(in_f, generator=_gen(41))).to(dt))
    x, res = _inputs(5, in_f, dtype, t.device, 42), _inputs(5, in_f, dtype, t.device, 43)
    w_dev = w.to(dt).to(t.device)

    def rms(h: torch.Tensor) -> torch.Tensor:
        h = h.float()
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight.float()

    out, passed = lm.apply_normed(layer, x, None, norm)
    _compare(t, out, reference_linear(rms(x), w_dev), dtype, f"apply_normed without residual, {dtype}")
    expect(torch.equal(passed, x), "apply_normed without residual must return x itself as its second value")
    out, summed = lm.apply_normed(layer, x, res, norm)
    _compare(t, out, reference_linear(rms(x.float() + res.float()), w_dev), dtype, f"apply_normed with residual, {dtype}")
    err = ((summed.float() - (x.float() + res.float())).norm() / (x.float() + res.float()).norm()).item()
    expect(err <= DTYPE_ALLOWANCE[dtype] + 1e-6, f"apply_normed with residual: second value is not x + residual "
                                                 f"(relative error {err:.3g})")
    gate_up = _inputs(5, 2 * in_f, dtype, t.device, 44)
    act = F.silu(gate_up[:, :in_f].float()) * gate_up[:, in_f:].float()
    _compare(t, lm.apply_silu_mul(layer, gate_up), reference_linear(act, w_dev), dtype, f"apply_silu_mul, {dtype}")


@torch.inference_mode()
def rejects_wrong_shape(t: KitTarget) -> None:
    """Loading a checkpoint tensor of the wrong shape raises ValueError (the model's loader adds the
    tensor's name to it) instead of loading garbage or crashing with another error."""
    dtype = _base_dtype(t)
    method, dt = t.cls(kit_model_config(t.cls)), getattr(torch, dtype)
    lm = method.linear_method("model.layers.0.mlp.down_proj")
    layer = Layer()
    lm.create_weights(layer, 256, 128, False, dt, t.device)
    wrong = t.cls.checkpoint_tensors(_weight(128, 200, seed=50).to(dt))
    try:
        for name, tensor in wrong.items():
            lm.load(layer, name, tensor.to(t.device), 0, 128)
    except ValueError:
        return
    except Exception as exc:
        raise KitFailure(f"loading a [128, 200] weight into a 256 -> 128 layer raised {type(exc).__name__}: {exc}; "
                         "expected ValueError") from exc
    raise KitFailure("loading a [128, 200] weight into a 256 -> 128 layer was accepted; expected ValueError")


def _bound_declared(t: KitTarget) -> None:
    bound = t.cls.max_relative_error
    expect(isinstance(bound, (int, float)) and not isinstance(bound, bool) and 0 < bound < 1 and math.isfinite(bound),
           f"max_relative_error must be a float in (0, 1), got {bound!r}")


def _checkpoint_builder(t: KitTarget) -> None:
    plain = t.cls.loads_plain_checkpoints()
    overridden = t.cls.checkpoint_tensors.__func__ is not QuantizationMethod.checkpoint_tensors.__func__
    expect(plain or overridden, f"loads only {t.cls.checkpoint_formats} checkpoints, so it must override "
                                "checkpoint_tensors(weight) to say what such a checkpoint stores")


def _context(t: KitTarget) -> dict:
    """The SelectionContext fields of the checkpoints the kit builds (plain, or the method's format)."""
    formats = [f for f in t.cls.checkpoint_formats if f is not None]
    return {} if t.cls.loads_plain_checkpoints() or not formats else {"quantization": formats[0]}


def _base_dtype(t: KitTarget) -> str:
    return base_dtype(t, **_context(t))


def _sdk_linear(t: KitTarget, method, tp: ParallelGroup, parallel: str, weights: list[torch.Tensor], ids: tuple,
                bias: torch.Tensor | None, dt: torch.dtype, prefix: str) -> Linear:
    """The SDK Linear at rank `tp.rank`, loaded from whole-layer checkpoint tensors as the model loader does."""
    ctx = ModelBuildContext(quant=method, dtype=dt, device=torch.device(t.device), tp=tp)
    layer = Linear(weights[0].shape[1], tuple(w.shape[0] for w in weights), ctx, prefix, bias=bias is not None,
                   shard_ids=ids, parallel=parallel)
    for w, sid in zip(weights, ids):
        for name, tensor in t.cls.checkpoint_tensors(w.to(dt)).items():
            layer.weight_loader(name, tensor.to(t.device), sid)
    if bias is not None:
        layer.weight_loader("bias", bias.to(dt).to(t.device), ids[0])
    layer.process_weights_after_loading()
    return layer


@torch.inference_mode()
def tensor_parallel_cuts(t: KitTarget) -> None:
    """Tensor parallel size 2: the column cuts of a qkv layer, concatenated per shard, and the row
    cuts of a layer with bias, summed, match the float32 layer within the method's bound."""
    dtype = _base_dtype(t)
    method, dt = t.cls(kit_model_config(t.cls)), getattr(torch, dtype)
    in_f, sizes, ids = QKV
    weights = [_weight(n, in_f, seed=60 + j) for j, n in enumerate(sizes)]
    x = _inputs(7, in_f, dtype, t.device, seed=61)
    outs = [_sdk_linear(t, method, ParallelGroup(r, 2), "column", weights, ids, None, dt,
                        "model.layers.0.self_attn.qkv_proj") for r in range(2)]
    outs = [layer.method.apply(layer, x) for layer in outs]
    halves = [n // 2 for n in sizes]
    y = torch.cat([torch.cat([o.split(halves, dim=-1)[j] for o in outs], dim=-1) for j in range(len(sizes))], dim=-1)
    _compare(t, y, reference_linear(x, torch.cat(weights).to(dt).to(t.device)), dtype,
             f"qkv layer {in_f} -> {sizes} cut in two column-parallel ranks, {dtype}")
    w = _weight(128, 512, seed=62)
    bias = torch.randn(128, generator=_gen(63)) * 0.1
    x = _inputs(7, 512, dtype, t.device, seed=64)
    rows = [_sdk_linear(t, method, ParallelGroup(r, 2), "row", [w], (None,), bias, dt, "model.layers.0.mlp.down_proj")
            for r in range(2)]
    y = sum(layer.method.apply(layer, x[:, layer.in_start:layer.in_start + layer.in_features]).float() for layer in rows)
    _compare(t, y.to(dt), reference_linear(x, w.to(dt).to(t.device), bias.to(dt).to(t.device)), dtype,
             f"layer 512 -> 128 with bias cut in two row-parallel ranks (outputs summed), {dtype}")


def _tensor_parallel(t: KitTarget) -> str | None:
    if not t.cls.supports_tensor_parallel:
        return "declares supports_tensor_parallel = False"
    return _runs_in()(t)


def _runs_in(dtype: str | None = None):
    def requires(t: KitTarget) -> str | None:
        return runs_on_device(t) or cannot_serve(t, dtype or _base_dtype(t), **_context(t))
    return requires


def checks(target: KitTarget) -> list[Check]:
    out = [Check("declares max_relative_error, its accuracy promise", _bound_declared),
           Check("can build a checkpoint for the kit (loads plain weights, or overrides checkpoint_tensors)",
                 _checkpoint_builder)]
    for dtype in target.cls.capabilities.dtypes:
        out.append(Check(f"layer output within max_relative_error of the float32 layer, in {dtype}",
                         lambda t, dtype=dtype: layer_error(t, dtype), _runs_in(dtype)))
    out += [Check("a fused qkv layer loaded shard by shard matches the whole weight", fused_shards, _runs_in()),
            Check("apply_normed and apply_silu_mul match the unfused layer", fused_paths, _runs_in()),
            Check("loading a weight of the wrong shape raises ValueError", rejects_wrong_shape, _runs_in()),
            Check("tensor-parallel column and row cuts recombine to the whole layer", tensor_parallel_cuts,
                  _tensor_parallel)]
    return out
