"""Block-wise FP8 routed experts (the `fp8` method's expert method, format "fp8_block") on CPU:
the method quantizes a plain checkpoint's experts on load and loads a block-wise checkpoint's codes
and `weight_scale_inv` per expert and shard; torch_native runs them dequantized. Tiny Mixtral,
Qwen3-MoE and DeepSeek-V3 models with `--quantization fp8` stay within the FP8 error bound of the
plain float32 model, and a block-wise FP8 checkpoint (codes written by our quantizer) computes what
its dequantized float checkpoint computes. (The
Triton kernels on FP8 experts: tests/plugins/test_moe_triton_interpret.py and tests/gpu/test_moe_gpu.py.)"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from jackfield.sdk import ExpertWeights, MoEConfig, RoutingConfig, route
from jackfield_plugins.moe.torch_native import TorchNativeMoE
from jackfield_plugins.quant import fp8_numerics as fp8
from jackfield_plugins.quant.fp8 import Fp8
from jackfield_plugins.quant.fp8_experts import Fp8BlockExpertMethod
from quant_harness import forced_logits, rel_err

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from moe_harness import MOE, save_tiny_moe  # noqa: E402


def _experts(method, e, h, i, w13, w2):
    layer = nn.Module()
    method.create_weights(layer, e, h, i, torch.float32, "cpu")
    method.load(layer, "w13_weight", w13, None, None)
    method.load(layer, "w2_weight", w2, None, None)
    method.process_weights_after_loading(layer)
    return method.weights(layer)


def test_experts_quantized_on_load_stay_within_the_fp8_bound():
    e, k, h, i = 8, 2, 256, 128
    gen = torch.Generator().manual_seed(0)
    w13, w2 = torch.randn(e, 2 * i, h, generator=gen) / h ** 0.5, torch.randn(e, h, i, generator=gen) / i ** 0.5
    w = _experts(Fp8BlockExpertMethod(None, False), e, h, i, w13, w2)
    assert w.format == "fp8_block" and w.w13.dtype == fp8.FP8 and w.block == (128, 128)
    assert w.w13_scale.shape == (e, 2, 2) and w.w2_scale.shape == (e, 2, 1)
    cfg = MoEConfig(e, h, i, RoutingConfig(top_k=k))
    x = torch.randn(64, h, generator=gen)
    tw, ti = route(torch.randn(64, e, generator=gen), cfg.routing)
    ours = TorchNativeMoE(cfg).experts(x, tw, ti, w)
    plain = TorchNativeMoE(cfg).experts(x, tw, ti, ExpertWeights(w13, w2))
    assert 1e-3 < rel_err(ours, plain) < Fp8.max_relative_error


def test_small_experts_get_blocks_that_divide_the_intermediate_size():
    w = _experts(Fp8BlockExpertMethod(None, False), 2, 64, 48, torch.randn(2, 96, 64), torch.randn(2, 64, 48))
    assert w.block == (16, 128) and w.w13_scale.shape == (2, 6, 1)


def test_checkpoint_codes_and_block_scales_load_per_expert_and_shard():
    e, h, i, block = 4, 96, 64, (32, 64)
    gen = torch.Generator().manual_seed(1)
    method = Fp8BlockExpertMethod(block, True)
    layer = nn.Module()
    method.create_weights(layer, e, h, i, torch.float32, "cpu")
    want = {}
    for x in range(e):
        for shard, shape in ((0, (i, h)), (1, (i, h)), (2, (h, i))):
            q, s = fp8.quantize_blockwise(torch.randn(*shape, generator=gen), block)
            name = "w2" if shard == 2 else "w13"
            method.load(layer, f"{name}_weight", q, x, shard)
            method.load(layer, f"{name}_weight_scale_inv", s, x, shard)
            want[x, shard] = fp8.dequantize_weight(q, s, block)
    method.process_weights_after_loading(layer)
    w = method.weights(layer)
    for x in range(e):
        w13, w2 = w.dequantized(x)
        assert torch.equal(w13, torch.cat([want[x, 0], want[x, 1]])) and torch.equal(w2, want[x, 2])


def test_bad_fp8_expert_checkpoints_are_rejected():
    with pytest.raises(ValueError, match="per-channel scales, but FP8 experts run with block-wise scales"):
        Fp8BlockExpertMethod(None, True, "model.layers.0.mlp.experts")
    method = Fp8BlockExpertMethod((128, 128), True)
    with pytest.raises(ValueError, match="not a multiple of the 128-row scale blocks"):
        method.create_weights(nn.Module(), 2, 256, 96, torch.float32, "cpu")
    layer = nn.Module()
    method.create_weights(layer, 2, 256, 128, torch.float32, "cpu")
    with pytest.raises(ValueError, match="must be float8_e4m3fn"):
        method.load(layer, "w13_weight", torch.zeros(128, 256), 0, 0)


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory):
    def make(name):
        directory = tmp_path_factory.mktemp(f"fp8-{name}")
        save_tiny_moe(MOE[name], directory)
        return directory
    return make


@pytest.mark.parametrize("name", ["mixtral", "qwen3_moe", "deepseek_v3"])
def test_moe_models_quantized_on_load(tiny_moe, name):
    """Every expert layer holds the block-wise codes of its float experts, and the logits stay near the
    float model's. (The bound is loose: FP8 noise in a tiny random model flips near-tied router choices;
    the tight check of the experts' numerics is the checkpoint test below.)"""
    from quant_harness import build_runner

    directory = tiny_moe(name)
    quantized, plain = build_runner(directory, quantization="fp8"), build_runner(directory)
    layers = [(m, p) for m, p in zip(quantized.model.modules(), plain.model.modules()) if hasattr(m, "prepared")]
    assert layers
    for ours, theirs in layers:
        w, ref = ours.prepared, theirs.prepared
        assert w.format == "fp8_block" and w.w13.dtype == fp8.FP8
        for x in range(w.w13.shape[0]):
            want = [fp8.dequantize_weight(*fp8.quantize_blockwise(m[x], w.block), w.block) for m in (ref.w13, ref.w2)]
            got = w.dequantized(x)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    ours, ref = forced_logits(directory, quantization="fp8"), forced_logits(directory)
    assert 1e-3 < rel_err(ours, ref) < 0.3


EXPERT = re.compile(r"\.experts\.\d+\.(gate_proj|up_proj|down_proj|w1|w2|w3)\.weight$")
DENSE = ["re:.*\\.self_attn\\..*", "re:.*\\.mlp\\.(gate|up|down)_proj", "re:.*\\.shared_experts?\\..*"]  # left plain: ignored_layers


def write_block_fp8(src: Path, dst: Path, block=(16, 16)) -> Path:
    """`src`'s tiny MoE as a block-wise FP8 checkpoint (DeepSeek-V3's layout: per-expert codes with
    `weight_scale_inv`) whose dense layers are on the ignore list, and next to it in dst/reference the
    float checkpoint of the dequantized weights."""
    tensors = load_file(str(src / "model.safetensors"))
    quant, ref = {}, {}
    for name, t in tensors.items():
        stacked = re.match(r"^(.*\.experts)\.(gate_up_proj|down_proj)$", name)
        if stacked:
            head, proj = stacked.groups()
            for x in range(t.shape[0]):
                parts = t[x].chunk(2) if proj == "gate_up_proj" else (t[x],)
                names = ("gate_proj", "up_proj") if proj == "gate_up_proj" else ("down_proj",)
                for part, p in zip(parts, names):
                    q, s = fp8.quantize_blockwise(part, block)
                    quant[f"{head}.{x}.{p}.weight"], quant[f"{head}.{x}.{p}.weight_scale_inv"] = q, s
                ref.setdefault(name, []).append(torch.cat([fp8.dequantize_weight(*fp8.quantize_blockwise(p_, block),
                                                                                 block) for p_ in parts]))
            ref[name] = torch.stack(ref[name])
        elif EXPERT.search(name):
            q, s = fp8.quantize_blockwise(t, block)
            quant[name], quant[name[:-len("weight")] + "weight_scale_inv"] = q, s
            ref[name] = fp8.dequantize_weight(q, s, block)
        else:
            quant[name] = ref[name] = t
    config = json.loads((src / "config.json").read_text())
    (dst / "reference").mkdir(parents=True)
    (dst / "reference" / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in ref.items()}, str(dst / "reference" / "model.safetensors"))
    config["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic",
                                     "weight_block_size": list(block), "ignored_layers": DENSE}
    (dst / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in quant.items()}, str(dst / "model.safetensors"))
    return dst


@pytest.mark.parametrize("name", ["mixtral", "qwen3_moe", "deepseek_v3"])
def test_block_fp8_checkpoint_computes_its_dequantized_weights(tiny_moe, tmp_path, name):
    from quant_harness import build_runner

    directory = write_block_fp8(tiny_moe(name), tmp_path / "fp8")
    experts = [m.prepared for m in build_runner(directory).model.modules() if hasattr(m, "prepared")]
    assert experts and all(w.format == "fp8_block" and w.block == (16, 16) for w in experts)
    ours, ref = forced_logits(directory), forced_logits(directory / "reference")
    assert rel_err(ours, ref) < 1e-5  # weight-only FP8 experts compute exactly their dequantized weights
