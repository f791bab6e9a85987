"""INT4 formats: our packers against literal re-implementations of each format's packing loop
(AutoAWQ, AutoGPTQ, compressed-tensors), act-order handling, layers on CPU, config validation."""
from __future__ import annotations

import pytest
import torch

from jackfield_plugins.quant import int4_numerics as int4
from jackfield_plugins.quant.awq import Awq
from jackfield_plugins.quant.compressed_tensors import CompressedTensors
from jackfield_plugins.quant.gptq import Gptq
from quant_harness import LAYER_CONFIGS, make_linear, model_config, rel_err

GEN = torch.Generator().manual_seed(0)
W = torch.randn(48, 256, generator=GEN)


def test_awq_packing_is_autoawq_order():
    q, s, z = int4.quantize(W, 64)
    intweight = q.t().contiguous()  # AutoAWQ packs [in, out]
    expected = torch.zeros(256, 48 // 8, dtype=torch.int32)
    for col in range(48 // 8):  # WQLinear_GEMM.from_linear
        for i, order in enumerate((0, 2, 4, 6, 1, 3, 5, 7)):
            expected[:, col] |= intweight[:, col * 8 + order] << (i * 4)
    tensors = int4.to_awq(q, s, z)
    assert torch.equal(tensors["qweight"], expected)
    q2, s2, z2 = int4.from_awq(**tensors)
    assert torch.equal(q2, q) and torch.equal(z2, z) and torch.equal(s2, s.half())


def test_gptq_packing_and_zero_offset():
    q, s, z = int4.quantize(W, 64)
    intweight = q.t().contiguous()
    expected = torch.zeros(256 // 8, 48, dtype=torch.int32)
    for row in range(256 // 8):  # AutoGPTQ QuantLinear.pack
        for j in range(8):
            expected[row] |= intweight[row * 8 + j] << (4 * j)
    tensors = int4.to_gptq(q, s, z, torch.arange(256) // 64)
    assert torch.equal(tensors["qweight"], expected)
    stored = int4.unpack(tensors["qzeros"], 1)
    assert torch.equal(stored, (z.t() - 1) & 0xF)  # the original format stores zero - 1
    assert torch.equal(int4.from_gptq(tensors["qweight"], tensors["qzeros"], tensors["scales"])[2], z)
    v2 = int4.to_gptq(q, s, z, torch.arange(256) // 64, v2=True)
    assert torch.equal(int4.unpack(v2["qzeros"], 1), z.t())


def test_compressed_tensors_packing():
    q, s, z = int4.quantize(W, 64)
    expected = torch.zeros(48, 256 // 8, dtype=torch.int32)
    for i in range(8):  # compressed_tensors pack_to_int32 (values already offset to 0..15)
        expected |= q[:, i::8] << (4 * i)
    tensors = int4.to_compressed(q, s, z)
    assert torch.equal(tensors["weight_packed"], expected)
    assert tensors["weight_zero_point"].shape == (48 // 8, 4)
    q2, _, z2 = int4.from_compressed(tensors["weight_packed"], tensors["weight_scale"], tensors["weight_zero_point"])
    assert torch.equal(q2, q) and torch.equal(z2, z)


def test_quantize_grids():
    q, s, z = int4.quantize(W, 64, symmetric=True)
    assert bool((z == 8).all()) and torch.allclose(s, W.reshape(48, 4, 64).abs().amax(-1) * 2 / 15)
    q, s, z = int4.quantize(W, 64)
    deq = int4.dequantize(q, s, z, torch.arange(256) // 64)
    assert ((deq - W).abs() <= s.repeat_interleave(64, 1) / 2 + 1e-6).all()  # within half a step


def test_act_order_perm():
    perm = torch.randperm(256, generator=GEN)
    g_idx = torch.empty(256, dtype=torch.long)
    g_idx[perm] = torch.arange(256) // 64
    p = int4.act_order_perm(g_idx, 64)
    assert torch.equal(g_idx[p], torch.arange(256) // 64)
    assert int4.act_order_perm(torch.arange(256) // 64, 64) is None
    with pytest.raises(ValueError, match="does not assign 64 columns to each group"):
        int4.act_order_perm(torch.zeros(256, dtype=torch.long), 64)


@pytest.mark.parametrize("cls", [Awq, Gptq, CompressedTensors], ids=lambda c: c.name)
def test_fused_layer_matches_reference(cls):
    """A fused qkv-like layer (three shards, bias) through load_float: exactly the dequantized weights."""
    gen = torch.Generator().manual_seed(5)
    w, b, x = torch.randn(96, 256, generator=gen), torch.randn(96, generator=gen), torch.randn(5, 256, generator=gen)
    layer = make_linear(cls, w, LAYER_CONFIGS[cls.name], bias=b, out_sizes=(64, 16, 16), shard_ids=("q", "k", "v"),
                        prefix="model.layers.0.self_attn.qkv_proj")
    q, scales, zeros = int4.quantize(w, 128, symmetric=cls is not Awq)
    stored = scales.to(torch.bfloat16 if cls is CompressedTensors else torch.float16)  # as each format keeps them
    ref = int4.reference_linear(x, q, stored, zeros, 128, b)
    torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-5)
    assert rel_err(layer(x), x @ w.t() + b) < cls.max_relative_error


def test_config_validation():
    with pytest.raises(ValueError, match="only 4"):
        Awq(model_config({"quant_method": "awq", "bits": 8}))
    with pytest.raises(ValueError, match="version 'gemv' is not supported"):
        Awq(model_config({"quant_method": "awq", "version": "GEMV"}))
    with pytest.raises(ValueError, match="zero_point: false"):
        Awq(model_config({"quant_method": "awq", "zero_point": False}))
    with pytest.raises(ValueError, match="checkpoint_format 'marlin'"):
        Gptq(model_config({"quant_method": "gptq", "checkpoint_format": "marlin"}))
    with pytest.raises(ValueError, match="2-bit int weights"):
        CompressedTensors(model_config({"quant_method": "compressed-tensors", "config_groups": {
            "g": {"targets": ["Linear"], "weights": {"num_bits": 2, "type": "int", "strategy": "group"}}}}))


def test_shapes_without_an_int4_grid_stay_plain():
    """96 input columns fit no group of 128: the layer is plain, as a checkpoint stores it; its
    checkpoint_tensors say so, and a packed tensor offered to it is refused."""
    w = torch.randn(64, 96, generator=GEN)
    layer = make_linear(Awq, w, LAYER_CONFIGS["awq"])
    assert layer.weight.dtype == torch.float32 and not hasattr(layer, "qweight")
    x = torch.randn(3, 96, generator=GEN)
    torch.testing.assert_close(layer(x), x @ w.t())
    assert set(Awq.checkpoint_tensors(w)) == {"weight"}
    assert set(Gptq.checkpoint_tensors(torch.randn(64, 256))) == {"qweight", "qzeros", "scales", "g_idx"}
    with pytest.raises(ValueError, match="'qweight' is not part of this plain"):
        layer.weight_loader("qweight", torch.zeros(96, 8, dtype=torch.int32))


@pytest.mark.parametrize("qc", [LAYER_CONFIGS["awq"], {**LAYER_CONFIGS["gptq"], "desc_act": True},
                                LAYER_CONFIGS["compressed_tensors"]], ids=["awq", "gptq", "compressed_tensors"])
def test_dummy_weights_for_checkpoint_formats(tmp_path, qc):
    """--load-format dummy with a quantized config (the benchmark path): random weights written in the
    format's own layout, repacked, and a forward that gives finite logits."""
    import json

    from quant_harness import PagedDriver, build_runner

    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 64, "hidden_size": 128,
           "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256,
           "quantization_config": {**qc, "group_size": 64}}
    if "config_groups" in qc:
        cfg["quantization_config"] = qc
        cfg["hidden_size"], cfg["intermediate_size"] = 256, 512
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    runner = build_runner(tmp_path / "config.json", load_format="dummy")
    qkv = runner.model.model.layers[0].self_attn.qkv_proj
    assert qkv.qweight.dtype == torch.int32 and qkv.weight is None
    logits = PagedDriver(runner).extend([[1, 2, 3]])[0]
    assert torch.isfinite(logits).all() and logits.std() > 0
