"""The `int4_weight_only` quantization method: RTN numerics, the CPU int4 kernel, SmolLM2, selection.

Tolerances come from bfloat16: the kernel stores scales and zeros in bf16 (relative rounding
<= 2^-8) and multiplies bf16 activations, so a dequantized weight may move by
2^-8 * (8 * scale + |zero|) and a matmul output by about 1% of its largest entry.
Set JACKFIELD_TEST_SMOLLM2=0 to skip the tests that load the embedded SmolLM2.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from jackfield.sdk import SelectionContext
from jackfield.sdk.layers.linear import Linear
from jackfield.sdk.model import ModelBuildContext
from jackfield_plugins.quant.int4_weight_only import GROUP_SIZE, Int4WeightOnly, dequantize, quantize

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from model_harness import ArchSpec, PagedDriver, build_hf_model, build_runner, greedy_run, rel_err  # noqa: E402

pytestmark = pytest.mark.skipif(not Int4WeightOnly.availability().ok, reason=Int4WeightOnly.availability().reason)
SMOLLM2 = os.environ.get("JACKFIELD_TEST_SMOLLM2", "1").lower() not in ("0", "off", "false", "no")
BF16_EPS = 2.0 ** -8


def rtn_reference(w: torch.Tensor, group: int = GROUP_SIZE):
    """Asymmetric 4-bit round-to-nearest, one group of input columns at a time (min + q * scale)."""
    grid, scales, mins = torch.empty_like(w), [], []
    for start in range(0, w.shape[1], group):
        block = w[:, start:start + group]
        lo, hi = block.min(1, keepdim=True).values, block.max(1, keepdim=True).values
        scale = (hi - lo) / 15
        q = torch.round((block - lo) / torch.where(scale > 0, scale, 1)).clamp(0, 15)
        grid[:, start:start + group] = lo + q * scale
        scales.append(scale)
        mins.append(lo)
    return grid, torch.cat(scales, 1), torch.cat(mins, 1)  # [N, K], [N, K/group] x 2


def weight_bound(scales_and_zeros: torch.Tensor) -> torch.Tensor:
    """Per-element [N, K] bound on what bf16 rounding of scale and zero moves a dequantized weight."""
    sz = scales_and_zeros.float().transpose(0, 1).repeat_interleave(GROUP_SIZE, 1)  # [N, K, 2]
    return 1.01 * BF16_EPS * (8 * sz[..., 0].abs() + sz[..., 1].abs()) + 1e-7


def make_linear(w: torch.Tensor, b: torch.Tensor | None = None) -> Linear:
    ctx = ModelBuildContext(quant=Int4WeightOnly(None), dtype=w.dtype, device=torch.device("cpu"))
    layer = Linear(w.shape[1], (w.shape[0],), ctx, "test.proj", bias=b is not None)
    layer.weight_loader("weight", w)
    if b is not None:
        layer.weight_loader("bias", b)
    layer.process_weights_after_loading()
    return layer


def unpack(layer: Linear) -> torch.Tensor:
    """The float32 weight [N, K] a packed layer multiplies by: the kernel applied to the identity."""
    k = layer.scales_and_zeros.shape[0] * GROUP_SIZE
    return torch.ops.aten._weight_int4pack_mm_for_cpu(torch.eye(k), layer.qweight, GROUP_SIZE,
                                                      layer.scales_and_zeros.float()).t()


# ---- numerics on random weights --------------------------------------------------------------------
def test_quantize_matches_reference_rtn():
    w = torch.randn(96, 256, generator=torch.Generator().manual_seed(0))
    w[3, :GROUP_SIZE] = 0.25  # a constant group: scale 0 must not give NaN
    q, sz = quantize(w)
    grid, scales, mins = rtn_reference(w)
    assert q.dtype == torch.int32 and int(q.min()) >= 0 and int(q.max()) <= 15
    assert sz.shape == (256 // GROUP_SIZE, 96, 2)
    torch.testing.assert_close(sz[..., 0].t(), scales, rtol=0, atol=0)
    torch.testing.assert_close(sz[..., 1].t(), mins + 8 * scales, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dequantize(q, sz), grid, rtol=0, atol=1e-5)
    assert torch.isfinite(dequantize(q, sz)).all() and torch.allclose(dequantize(q, sz)[3, :GROUP_SIZE], w[3, :GROUP_SIZE])
    # the bf16 scales/zeros the kernel keeps move the grid by no more than their rounding
    assert ((dequantize(q, sz.bfloat16()) - grid).abs() <= weight_bound(sz)).all()


def test_apply_matches_dequantized_linear():
    gen = torch.Generator().manual_seed(1)
    w, b = torch.randn(192, 128, generator=gen), torch.randn(192, generator=gen)
    layer = make_linear(w, b)
    assert layer.weight is None and "weight" not in dict(layer.named_parameters())
    assert layer.qweight.dtype == torch.uint8 and layer.scales_and_zeros.dtype == torch.bfloat16
    assert layer.scales_and_zeros.shape == (128 // GROUP_SIZE, 192, 2)
    _, sz = quantize(w)
    assert ((unpack(layer) - dequantize(*quantize(w))).abs() <= weight_bound(sz)).all()

    x = torch.randn(2, 5, 128, generator=gen)
    y = layer(x)
    assert y.shape == (2, 5, 192) and y.dtype == torch.float32
    q, sz = quantize(w)
    w_int4 = dequantize(q, sz.bfloat16())
    ref = F.linear(x.bfloat16().float(), w_int4, b)
    tol = {"rtol": 1e-2, "atol": 1e-2 * float(ref.abs().max())}
    torch.testing.assert_close(y, ref, **tol)
    # the tolerance tells a correct kernel layout from a wrong one
    swapped = F.linear(x.bfloat16().float(), dequantize(q, sz.flip(-1).bfloat16()), b)
    assert not torch.allclose(y, swapped, **tol)
    torch.testing.assert_close(layer(x[0, :1]), ref[0, :1], **tol)  # batch-1 decode shape
    assert layer(torch.empty(0, 128)).shape == (0, 192)


@pytest.mark.parametrize("n,k", [(64, 48), (40, 64)])
def test_unpackable_shapes_keep_the_float_weight(n, k):
    """in_features % 32 != 0 (group) or out_features % 16 != 0 (packing): plain F.linear."""
    gen = torch.Generator().manual_seed(2)
    w, x = torch.randn(n, k, generator=gen), torch.randn(3, k, generator=gen)
    layer = make_linear(w)
    assert layer.weight is not None and not hasattr(layer, "qweight")
    torch.testing.assert_close(layer(x), F.linear(x, w), rtol=0, atol=0)


# ---- selection ---------------------------------------------------------------------------------------
def test_selection():
    from jackfield.plugins import load_plugins
    from jackfield.registry import build_registry
    from jackfield.selection import SelectionError, choose

    registry = build_registry(*load_plugins(env={}))
    cpu = SelectionContext(device="cpu", dtype="float32")
    assert choose(registry, "quantization", "auto", cpu).name == "unquantized"
    assert choose(registry, "quantization", "int4_weight_only", cpu).name == "int4_weight_only"
    with pytest.raises(SelectionError, match="device 'cuda' not supported"):
        choose(registry, "quantization", "int4_weight_only", SelectionContext(device="cuda", dtype="bfloat16"))
    with pytest.raises(SelectionError, match="cannot load checkpoints quantized as 'fp8'"):
        choose(registry, "quantization", "int4_weight_only", SelectionContext(quantization="fp8"))


@pytest.mark.skipif(not SMOLLM2, reason="JACKFIELD_TEST_SMOLLM2 is off")
def test_int4_loads_smollm2_gguf_dequantized():
    """The GGUF file is dequantized by the loader for int4_weight_only (a method of plain weights)."""
    from jackfield.config import settings_for
    from jackfield.runtime_setup import setup_runtime

    setup = setup_runtime(settings_for(device="cpu", quantization="int4_weight_only"))
    assert setup.choices["quantization"].name == "int4_weight_only"


# ---- a tiny random Llama whose in_features are partly not multiples of 32 ----------------------------
TINY = ArchSpec("llama_int4", "LlamaConfig", {"intermediate_size": 80, "tie_word_embeddings": False}, seed=11)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """hidden 64 (qkv, o, gate_up packed), intermediate 80 (down_proj falls back); the packable
    weights are snapped to the int4 grid, so only bf16 rounding separates int4 from float32."""
    model = build_hf_model(TINY)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("proj.weight") and p.shape[1] % GROUP_SIZE == 0:
                p.copy_(rtn_reference(p)[0])
    directory = tmp_path_factory.mktemp("tiny-int4")
    model.save_pretrained(str(directory), safe_serialization=True)
    return directory


def test_tiny_model_mixed_layers_close_to_unquantized(tiny_dir):
    prompts = [[5, 17, 33, 2, 99, 100, 7], [42, 8, 150]]
    logits = {}
    for quant in ("unquantized", "int4_weight_only"):
        runner = build_runner(tiny_dir, quantization=quant)
        logits[quant], _ = greedy_run(PagedDriver(runner), prompts, steps=4)
    layer = runner.model.model.layers[0]
    assert layer.mlp.down_proj.weight is not None  # in_features 80: float fallback
    assert layer.mlp.gate_up_proj.weight is None and layer.self_attn.qkv_proj.weight is None
    assert layer.self_attn.o_proj.weight is None
    for ours, ref in zip(logits["int4_weight_only"], logits["unquantized"]):
        assert rel_err(torch.stack(ours), torch.stack(ref)) < 2e-2


def test_dummy_weights_are_quantized(tiny_dir):
    runner = build_runner(tiny_dir, quantization="int4_weight_only", load_format="dummy")
    layer = runner.model.model.layers[0]
    assert layer.self_attn.qkv_proj.weight is None and layer.self_attn.qkv_proj.qweight.numel() > 0
    assert layer.mlp.down_proj.weight is not None


# ---- the embedded SmolLM2 (Q4_1 GGUF, loaded as float32) ---------------------------------------------
@pytest.fixture(scope="module")
def smollm2():
    if not SMOLLM2:
        pytest.skip("JACKFIELD_TEST_SMOLLM2 is off")
    from jackfield import Engine

    with Engine(quantization="int4_weight_only") as engine:
        yield engine


def test_smollm2_keeps_the_q4_1_grid(smollm2):
    """Re-quantizing the dequantized Q4_1 weights finds the file's own grid: the packed qkv_proj
    of layer 0 equals the float32 checkpoint up to bf16 rounding of its scales and zeros."""
    from safetensors import safe_open

    runner = smollm2.loop.scheduler.runner
    model = runner.model
    qkv = model.model.layers[0].self_attn.qkv_proj
    assert qkv.weight is None
    names = [f"model.layers.0.self_attn.{p}_proj.weight" for p in "qkv"]
    with safe_open(str(runner.setup.source.path / "model.safetensors"), framework="pt") as f:
        ref = torch.cat([f.get_tensor(n) for n in names])
    diff = (unpack(qkv) - ref).abs()
    assert (diff <= weight_bound(qkv.scales_and_zeros)).all()
    scale = qkv.scales_and_zeros[..., 0].float().t().repeat_interleave(GROUP_SIZE, 1)
    assert float((diff / scale).max()) < 0.06  # vs up to 0.5 step for weights off the 4-bit grid
    # embedding and lm_head (tied) are not Linear layers: they stay float32
    assert model.model.embed_tokens.weight.dtype == torch.float32
    assert not [n for n, _ in model.named_parameters() if n.endswith("proj.weight")]


def test_smollm2_chat_answers_paris(smollm2):
    out = smollm2.chat([{"role": "user", "content": "What is the capital of France?"}],
                       {"temperature": 0, "max_new_tokens": 16})
    assert "Paris" in out["text"]
