"""The `fp8` method on CPU: its quantizers, the W8A8 reference numerics the CPU runs, quantization
of plain checkpoints on load, random (dummy) weights, and selection rules."""
from __future__ import annotations

import pytest
import torch

from jackfield.sdk import SelectionContext
from jackfield_plugins.quant import fp8_numerics as fp8
from jackfield_plugins.quant.fp8 import Fp8
from quant_harness import forced_logits, make_linear, rel_err


def test_quantizers_round_to_e4m3_within_half_a_step():
    """Every value lands within half an e4m3 step of itself: 2^-4 relative for normals (|w/s| >= 2^-6),
    half the subnormal spacing 2^-9 * s below."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(96, 200, generator=gen) * torch.logspace(-2, 1, 96)[:, None]  # rows of very different size
    cases = {"tensor": fp8.quantize_per_tensor(w), "channel": fp8.quantize_per_channel(w),
             "block": fp8.quantize_blockwise(w, (32, 64))}
    for name, (q, s) in cases.items():
        assert q.dtype == fp8.FP8
        if name == "block":
            scale = fp8.expand_blocks(s, tuple(w.shape), (32, 64))
        else:
            scale = (s[:, None] if s.dim() else s).expand(w.shape)
        err = (q.float() * scale - w).abs()
        normal = (w / scale).abs() >= 2 ** -6
        bound = torch.where(normal, 2 ** -4 * w.abs(), 2 ** -10 * scale)
        assert (err <= bound * (1 + 1e-6)).all(), name
        assert torch.allclose((w / scale).abs().amax(), torch.tensor(448.0))  # the range is used in full
    assert cases["block"][1].shape == (3, 4)  # partial edge blocks: 200 columns in 4 blocks of 64


def test_per_channel_keeps_small_rows_precise():
    """Rows 1e5 apart: per-channel scales give every row e4m3 precision; one tensor scale leaves the
    small rows subnormal."""
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(1))
    w[32:] *= 1e-5
    q, s = fp8.quantize_per_channel(w)
    small = slice(32, 64)
    assert rel_err(fp8.dequantize_weight(q, s, None)[small], w[small]) < 0.04
    qt, st = fp8.quantize_per_tensor(w)
    assert rel_err((qt.float() * st)[small], w[small]) > 0.1


@pytest.mark.parametrize("block", [None, (32, 32), (64, 128)])
def test_layer_matches_w8a8_reference(block):
    gen = torch.Generator().manual_seed(2)
    w, b, x = torch.randn(160, 256, generator=gen), torch.randn(160, generator=gen), torch.randn(3, 7, 256, generator=gen)
    qc = {"quant_method": "fp8", "weight_block_size": list(block)} if block else {}
    layer = make_linear(Fp8, w, qc, bias=b)
    assert layer.weight.dtype == fp8.FP8 and layer.weight_scale.dtype == torch.float32
    y = layer(x)
    assert y.shape == (3, 7, 160) and y.dtype == torch.float32
    q, s = fp8.quantize_per_channel(w) if block is None else fp8.quantize_blockwise(w, block)
    torch.testing.assert_close(y.reshape(-1, 160), fp8.w8a8_reference(x.reshape(-1, 256), q, s, block, b))
    assert rel_err(y, x @ w.t() + b) < Fp8.max_relative_error
    assert layer(torch.empty(0, 256)).shape == (0, 160)


def test_activations_are_quantized_per_token():
    """A row scaled by 1000 leaves the others' results unchanged (per-token, not per-tensor, scales)."""
    gen = torch.Generator().manual_seed(3)
    w, x = torch.randn(64, 128, generator=gen), torch.randn(4, 128, generator=gen)
    layer = make_linear(Fp8, w)
    y = layer(x)
    x2 = x.clone()
    x2[0] *= 1000
    torch.testing.assert_close(layer(x2)[1:], y[1:], rtol=0, atol=0)


def test_quantize_plain_checkpoint_on_load(tiny_llama):
    ours, ref = forced_logits(tiny_llama, quantization="fp8"), forced_logits(tiny_llama)
    assert 1e-3 < rel_err(ours, ref) < 0.12  # really quantized, and close


def test_dummy_weights(tiny_llama):
    from quant_harness import build_runner

    for method in ("fp8", "int8_wo"):
        runner = build_runner(tiny_llama, quantization=method, load_format="dummy")
        qkv = runner.model.model.layers[0].self_attn.qkv_proj
        assert qkv.weight.dtype in (fp8.FP8, torch.int8) and bool((qkv.weight_scale > 0).all())


def test_selection():
    from jackfield.plugins import load_plugins
    from jackfield.registry import build_registry
    from jackfield.selection import SelectionError, choose

    registry = build_registry(*load_plugins(env={}))
    assert choose(registry, "quantization", "auto", SelectionContext()).name == "unquantized"
    assert choose(registry, "quantization", "auto", SelectionContext(quantization="fp8")).name == "fp8"
    assert choose(registry, "quantization", "fp8", SelectionContext()).name == "fp8"  # on-load quantization
    hopper = SelectionContext(device="cuda", dtype="bfloat16", compute_capability=(9, 0))
    if "triton" not in " ".join(Fp8.incompatibilities(hopper)):
        assert choose(registry, "quantization", "fp8", hopper).name == "fp8"
    ampere = SelectionContext(device="cuda", dtype="bfloat16", compute_capability=(8, 0))
    with pytest.raises(SelectionError, match=r"compute capability 8\.0 < required 8\.9 \(FP8 matmuls need"):
        choose(registry, "quantization", "fp8", ampere)
