"""The `gguf` quantization method: ggml's CPU kernels on GGUF blocks, the GGUF loader, selection,
the kit, and the embedded SmolLM2 (a Q4_1 GGUF with a Q8_0 embedding) kept quantized.

Kernel tolerance: ggml quantizes the activations to int8 blocks (Q8_0 / Q8_1 / Q8_K, one scale per
32 or 256 values), so an output moves from the float32 product with the dequantized weights by
about 0.5% relative (Frobenius); 2e-2 leaves room and still tells any wrong block layout (that is
off by the size of the weights themselves, a relative error near 1).
Set JACKFIELD_TEST_SMOLLM2=0 to skip the tests that load the embedded SmolLM2.
"""
from __future__ import annotations

import os

import pytest
import torch
from gguf import GGMLQuantizationType as T

from jackfield.sdk import GGUFWeight, ggml_mm, ggml_quantize
from jackfield.sdk.layers.linear import Linear
from jackfield.sdk.model import ModelBuildContext
from jackfield_plugins.quant.gguf import GGUF

pytestmark = pytest.mark.skipif(not GGUF.availability().ok, reason=GGUF.availability().reason)
SMOLLM2 = os.environ.get("JACKFIELD_TEST_SMOLLM2", "1").lower() not in ("0", "off", "false", "no")
TYPES = [T.Q4_0, T.Q4_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K, T.F16]
KERNEL_TOL = 2e-2


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def blocks_of(w: torch.Tensor, ggml_type) -> GGUFWeight:
    return GGUFWeight(ggml_quantize(w, int(ggml_type)), int(ggml_type), w.shape[1])


@pytest.mark.parametrize("ggml_type", TYPES, ids=lambda t: t.name)
def test_kernel_matches_dequantized_reference(ggml_type):
    """ggml's matmul on the blocks vs float32 x @ W^T with W dequantized by gguf-py (an independent
    implementation of the block formats), at decode (1 row) and prefill-like (9 rows) shapes."""
    gen = torch.Generator().manual_seed(int(ggml_type))
    w = torch.randn(80, 512, generator=gen) / 512 ** 0.5
    weight = blocks_of(w, ggml_type)
    w_ref = weight.dequantize()
    assert rel(w_ref, w) < 0.15  # the blocks hold this weight (4-bit types ~0.1, 8-bit ~0.005)
    for rows in (1, 9):
        x = torch.randn(rows, 512, generator=gen)
        y = ggml_mm(x, weight.blocks, weight.ggml_type)
        assert y.shape == (rows, 80) and y.dtype == torch.float32
        assert rel(y, x @ w_ref.T) < KERNEL_TOL
        assert rel(y, x @ w_ref.flip(0).T) > 0.5  # the tolerance tells a wrong row order


@pytest.mark.parametrize("rows", [12, 24, 40])
@pytest.mark.parametrize("ggml_type", TYPES, ids=lambda t: t.name)
def test_batched_kernel_agrees_with_the_one_row_path(ggml_type, rows):
    """From 32 rows of x (8 for Q4_0, Q4_1, Q8_0 with AVX2) the weight is dequantized tile by tile
    and multiplied in float32, x rounded as the one-row path's int8 blocks round it: every row of the
    product equals that row multiplied alone to float rounding (so a token's logits do not depend on
    its batch), over an odd number of weight rows (a partial last tile). Up to 32 rows the tiles go
    through small_gemm.h (12: one block of 16 rows, 4 of them padding; 24: 16 + 8), above through sgemm."""
    gen = torch.Generator().manual_seed(int(ggml_type) + 100)
    w = torch.randn(133, 512, generator=gen) / 512 ** 0.5
    weight = blocks_of(w, ggml_type)
    x = torch.randn(rows, 512, generator=gen)
    y = ggml_mm(x, weight.blocks, weight.ggml_type)
    alone = torch.cat([ggml_mm(x[i:i + 1], weight.blocks, weight.ggml_type) for i in range(rows)])
    assert rel(y, alone) < 1e-5
    assert rel(y, x @ weight.dequantize().T) < KERNEL_TOL


def test_operator_splits_rows_over_torchs_threads():
    """The operator's at::parallel_for runs on torch's intra-op threads (built without OpenMP it
    would run every row on one thread)."""
    from jackfield.kernels.ggml_cpu import build

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert build().parallel_threads(64) == 2
    finally:
        torch.set_num_threads(before)


def test_kernel_rejects_blocks_of_another_shape():
    weight = blocks_of(torch.randn(16, 256), T.Q4_0)
    with pytest.raises(RuntimeError, match="row of type"):
        ggml_mm(torch.randn(1, 512), weight.blocks, weight.ggml_type)


def make_linear(shards: list[GGUFWeight], bias: torch.Tensor | None = None, method=None) -> Linear:
    method = method or GGUF(None)
    ctx = ModelBuildContext(quant=method, dtype=torch.float32, device=torch.device("cpu"))
    ids = tuple(range(len(shards))) if len(shards) > 1 else (None,)
    layer = Linear(shards[0].in_features, tuple(s.shape[0] for s in shards), ctx, "test.proj", bias=bias is not None,
                   shard_ids=ids)
    offset = 0
    for sid, shard in zip(ids, shards):
        layer.weight_loader("weight", shard, sid)
        if bias is not None:
            layer.weight_loader("bias", bias[offset:offset + shard.shape[0]], sid)
        offset += shard.shape[0]
    layer.process_weights_after_loading()
    return layer


def test_fused_layer_with_mixed_types_keeps_each_shard_in_its_type():
    """A Q4_K_M-style qkv (q Q4_K, k Q4_K, v Q6_K): q and k merge into one segment, v stays apart."""
    gen = torch.Generator().manual_seed(7)
    ws = [torch.randn(n, 256, generator=gen) / 16 for n in (128, 64, 64)]
    shards = [blocks_of(w, t) for w, t in zip(ws, (T.Q4_K, T.Q4_K, T.Q6_K))]
    bias = torch.randn(256, generator=gen)
    layer = make_linear(shards, bias)
    assert layer.weight is None
    assert [(off, size, t) for off, size, t, _ in layer.method.segments] == [(0, 192, T.Q4_K), (192, 64, T.Q6_K)]
    x = torch.randn(2, 3, 256, generator=gen)
    ref = x @ torch.cat([s.dequantize() for s in shards]).T + bias
    y = layer(x)
    assert y.shape == (2, 3, 256) and rel(y, ref) < KERNEL_TOL
    assert layer(x.bfloat16()).dtype == torch.bfloat16


def test_load_rejects_plain_tensors_and_wrong_shapes():
    method = GGUF(None)
    ctx = ModelBuildContext(quant=method, dtype=torch.float32, device=torch.device("cpu"))
    layer = Linear(256, (64,), ctx, "test.proj")
    with pytest.raises(ValueError, match="loads GGUF blocks"):
        layer.weight_loader("weight", torch.randn(64, 256))
    with pytest.raises(ValueError, match="does not fit"):
        layer.weight_loader("weight", blocks_of(torch.randn(64, 512), T.Q8_0))


def test_kit_certifies_gguf():
    from jackfield.testing import certify

    report = certify(GGUF, "cpu")
    assert report.ok, report


def test_selection():
    from jackfield.plugins import load_plugins
    from jackfield.registry import build_registry
    from jackfield.sdk import SelectionContext
    from jackfield.selection import SelectionError, choose

    registry = build_registry(*load_plugins(env={}))
    gguf_file = SelectionContext(device="cpu", dtype="float32", quantization="gguf")
    assert choose(registry, "quantization", "auto", gguf_file).name == "gguf"
    for plain in ("unquantized", "int4_weight_only"):  # the loader dequantizes the file for them
        assert choose(registry, "quantization", plain, gguf_file).name == plain
    assert choose(registry, "quantization", "auto", SelectionContext(device="cpu", dtype="float32")).name == "unquantized"
    with pytest.raises(SelectionError, match="loads only checkpoints quantized as 'gguf'"):
        choose(registry, "quantization", "gguf", SelectionContext(device="cpu", dtype="float32"))
    gguf_on_cuda = SelectionContext(device="cuda", dtype="bfloat16", quantization="gguf")
    assert choose(registry, "quantization", "auto", gguf_on_cuda).name == "gguf"  # Triton kernels there


# ---- the embedded SmolLM2 ------------------------------------------------------------------------------
needs_smollm2 = pytest.mark.skipif(not SMOLLM2, reason="JACKFIELD_TEST_SMOLLM2 is off")


@needs_smollm2
def test_loader_blocks_equal_the_float_conversion():
    """The blocks the loader hands over dequantize to exactly the float32 checkpoint the converter
    wrote (q/k row permutation undone on block rows); the tied lm_head gets the Q8_0 embedding."""
    from safetensors import safe_open

    from jackfield.loader.default_model import default_model_path
    from jackfield.loader.gguf import convert_gguf
    from jackfield.loader.gguf_weights import iter_gguf_quantized

    path = default_model_path()
    wanted = {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
              "model.layers.0.mlp.down_proj.weight", "model.embed_tokens.weight", "lm_head.weight"}
    got = {}
    for name, tensor in iter_gguf_quantized(path, progress=False):
        if name in wanted:
            got[name] = tensor
        if len(got) == len(wanted):
            break
    with safe_open(str(convert_gguf(path) / "model.safetensors"), framework="pt") as f:
        for name in wanted - {"lm_head.weight"}:
            ref = f.get_tensor(name)
            value = got[name].dequantize() if isinstance(got[name], GGUFWeight) else got[name]
            assert torch.equal(value, ref), name
        embedding = f.get_tensor("model.embed_tokens.weight")
    assert got["model.layers.0.self_attn.q_proj.weight"].ggml_type == T.Q4_1
    head = got["lm_head.weight"]
    assert isinstance(head, GGUFWeight) and head.ggml_type == T.Q8_0 and torch.equal(head.dequantize(), embedding)


@needs_smollm2
def test_auto_picks_gguf_for_the_embedded_model():
    from jackfield.config import settings_for
    from jackfield.runtime_setup import setup_runtime

    assert setup_runtime(settings_for(device="cpu")).choices["quantization"].name == "gguf"
    assert setup_runtime(settings_for(device="cpu", quantization="unquantized")).choices["quantization"].name == "unquantized"


def test_mixed_type_gguf_model_matches_the_dequantized_path(tmp_path, monkeypatch):
    """A tiny Llama GGUF whose projections use Q4_0, Q4_1, Q4_K, Q5_K, Q6_K (mixed inside qkv and
    gate_up) and a tied Q8_0 embedding: the gguf method's teacher-forced logits against the same file
    dequantized (float32); int8 activations move them ~2%."""
    from gguf_blocks import write_mixed_gguf
    from quant_harness import forced_logits, rel_err

    monkeypatch.setenv("JACKFIELD_CACHE_DIR", str(tmp_path / "cache"))
    path = write_mixed_gguf(tmp_path / "mixed.gguf")
    assert rel_err(forced_logits(path), forced_logits(path, quantization="unquantized")) < 0.05
