"""Loading quantized checkpoints of every format, written by our own quantizers (quant_checkpoints.py)
from a tiny random Qwen2 (its qkv projection has a bias): the loaded model's logits against the same model with the dequantized
weights in float32 (teacher-forced prefill + decode), and what each layer holds afterwards.

Weight-only formats must match to float32 rounding; FP8 W8A8 also quantizes activations per token,
which moves the logits of this tiny random model by 6-7% relative (tolerance 0.12; a misplaced
scale or row would be off by far more).
"""
from __future__ import annotations

import pytest
import torch

from quant_checkpoints import write_quantized
from quant_harness import forced_logits, rel_err

from model_harness import ArchSpec, build_hf_model

SPEC = ArchSpec("qwen2_quant", "Qwen2Config", {"tie_word_embeddings": False}, seed=21)  # qkv with bias
EXACT, FP8_W8A8 = 2e-5, 0.12
CASES = {  # name: (format, options, tolerance, method auto picks)
    "fp8_per_tensor_static": ("fp8", {"scheme": "tensor", "static": True}, FP8_W8A8, "fp8"),
    "fp8_per_channel": ("fp8", {"scheme": "channel"}, FP8_W8A8, "fp8"),
    "fp8_block": ("fp8", {"scheme": "block", "block": (32, 32)}, FP8_W8A8, "fp8"),
    "awq": ("awq", {"group": 32}, EXACT, "awq"),
    "gptq": ("gptq", {"group": 32}, EXACT, "gptq"),
    "gptq_desc_act_asym": ("gptq", {"group": 32, "act_order": True, "symmetric": False}, EXACT, "gptq"),
    "gptq_lm_head": ("gptq", {"group": 32, "lm_head": True}, EXACT, "gptq"),
    "gptq_v2_per_channel": ("gptq", {"group": -1, "v2": True, "symmetric": False}, EXACT, "gptq"),
    "ct_fp8_channel": ("ct-fp8", {"scheme": "channel"}, FP8_W8A8, "compressed_tensors"),
    "ct_fp8_tensor_static": ("ct-fp8", {"scheme": "tensor", "static": True}, FP8_W8A8, "compressed_tensors"),
    "ct_fp8_block": ("ct-fp8", {"scheme": "block", "block": (32, 32)}, FP8_W8A8, "compressed_tensors"),
    "ct_int8": ("ct-int8", {}, EXACT, "compressed_tensors"),
    "ct_w4a16": ("ct-w4a16", {"group": 32}, EXACT, "compressed_tensors"),
    "ct_w4a16_asym_actorder": ("ct-w4a16", {"group": 32, "symmetric": False, "act_order": True}, EXACT,
                               "compressed_tensors"),
}


@pytest.fixture(scope="module")
def hf_model():
    return build_hf_model(SPEC)


@pytest.mark.parametrize("name", list(CASES))
def test_checkpoint_matches_dequantized_reference(hf_model, tmp_path, name):
    fmt, opts, tol, method = CASES[name]
    qdir, rdir = write_quantized(hf_model, tmp_path / name, fmt, **opts)
    ours = forced_logits(qdir)
    ref = forced_logits(rdir)
    err = rel_err(ours, ref)
    assert err <= tol, f"{name}: logits differ from the dequantized model by {err:.3e} (tolerance {tol})"


def test_auto_selection_and_layer_contents(hf_model, tmp_path):
    """`auto` picks the method of the checkpoint's quant_method; after loading, FP8 layers hold
    e4m3 codes with per-row scales, INT4 layers the packed internal layout (and no float weight)."""
    from quant_harness import build_runner

    for name in ("fp8_per_tensor_static", "gptq_desc_act_asym", "ct_w4a16"):
        fmt, opts, _, method = CASES[name]
        qdir, _ = write_quantized(hf_model, tmp_path / name, fmt, **opts)
        runner = build_runner(qdir)
        assert runner.setup.choices["quantization"].name == method
        qkv = runner.model.model.layers[0].self_attn.qkv_proj
        if fmt == "fp8":
            assert qkv.weight.dtype == torch.float8_e4m3fn and qkv.weight_scale.shape == (qkv.out_features,)
            assert not hasattr(qkv, "input_scale")  # read from the checkpoint, then dropped
        else:
            assert qkv.weight is None and qkv.qweight.dtype == torch.int32
            assert qkv.qweight.shape == (qkv.out_features, qkv.in_features // 8)
            assert qkv.scales.shape == (qkv.out_features, qkv.in_features // 32)
            assert (qkv.perm is not None) == (name == "gptq_desc_act_asym")
        assert qkv.bias is not None and qkv.bias.dtype == torch.float32


def test_lm_head_quantized(hf_model, tmp_path):
    """A GPTQ checkpoint with `lm_head: true` loads its head as INT4 codes; on a plain checkpoint
    `quantize_lm_head` gives fp8 and int8_wo heads of codes and per-row scales, and a method that
    cannot quantize the head on load refuses the setting by name."""
    from quant_harness import build_runner

    fmt, opts, _, _ = CASES["gptq_lm_head"]
    head = build_runner(write_quantized(hf_model, tmp_path / "gptq", fmt, **opts)[0]).model.lm_head
    assert head.weight is None and head.qweight.dtype == torch.int32
    assert head.qweight.shape == (hf_model.config.vocab_size, hf_model.config.hidden_size // 8)
    _, plain = write_quantized(hf_model, tmp_path / "plain", "awq")
    for method, dtype in (("fp8", torch.float8_e4m3fn), ("int8_wo", torch.int8)):
        head = build_runner(plain, quantization=method, quantize_lm_head=True).model.lm_head
        assert head.weight.dtype == dtype and head.weight_scale.shape == (hf_model.config.vocab_size,)
        assert build_runner(plain, quantization=method).model.lm_head.method is None
    with pytest.raises(ValueError, match="quantize_lm_head.*'unquantized'"):
        build_runner(plain, quantize_lm_head=True)


def test_tied_quantized_head_reads_its_own_tensor_else_the_embedding(hf_model, tmp_path):
    """Tied embeddings and a quantized head (quantize_lm_head): a checkpoint that also stores
    lm_head.weight (a GGUF file yields the head's own blocks) loads that; one without it loads the
    embedding's table into the head."""
    import json

    from safetensors.torch import load_file, save_file
    from quant_harness import build_runner

    _, plain = write_quantized(hf_model, tmp_path / "plain", "awq")
    state = load_file(str(plain / "model.safetensors"))
    config = json.loads((plain / "config.json").read_text())
    config["tie_word_embeddings"] = True
    for name, keep_head in (("with_head", True), ("without_head", False)):
        d = tmp_path / name
        d.mkdir()
        save_file({k: v for k, v in state.items() if keep_head or k != "lm_head.weight"}, str(d / "model.safetensors"))
        (d / "config.json").write_text(json.dumps(config))
        head = build_runner(d, quantization="int8_wo", quantize_lm_head=True).model.lm_head
        loaded = head.weight.float() * head.weight_scale[:, None]
        source = state["lm_head.weight" if keep_head else "model.embed_tokens.weight"].float()
        assert rel_err(loaded, source) < 1e-2, name


def test_fused_per_tensor_scales_become_rows(hf_model, tmp_path):
    """A per-tensor FP8 checkpoint has one scale per q/k/v tensor: each fills its shard's rows."""
    from safetensors import safe_open

    from quant_harness import build_runner

    qdir, _ = write_quantized(hf_model, tmp_path / "pt", "fp8", scheme="tensor")
    runner = build_runner(qdir)
    qkv = runner.model.model.layers[1].self_attn.qkv_proj
    with safe_open(str(qdir / "model.safetensors"), framework="pt") as f:
        for sid, (off, size) in qkv.shards.items():
            scale = f.get_tensor(f"model.layers.1.self_attn.{sid}_proj.weight_scale")
            assert torch.equal(qkv.weight_scale[off:off + size], scale.expand(size))


def test_ignored_layers_stay_plain(hf_model, tmp_path):
    """Modules on the checkpoint's ignore list are loaded as plain float weights."""
    import json

    from quant_harness import build_runner

    qdir, _ = write_quantized(hf_model, tmp_path / "ign", "ct-int8")
    cfg = json.loads((qdir / "config.json").read_text())
    cfg["quantization_config"]["ignore"] = ["lm_head", "re:.*layers\\.0\\.mlp\\.down_proj$"]
    (qdir / "config.json").write_text(json.dumps(cfg))
    # the ignored layer must then hold a float weight in the checkpoint
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(qdir / "model.safetensors"))
    q = tensors.pop("model.layers.0.mlp.down_proj.weight")
    s = tensors.pop("model.layers.0.mlp.down_proj.weight_scale")
    tensors["model.layers.0.mlp.down_proj.weight"] = q.float() * s
    save_file(tensors, str(qdir / "model.safetensors"))
    layers = build_runner(qdir).model.model.layers
    assert layers[0].mlp.down_proj.weight.dtype == torch.float32
    assert layers[1].mlp.down_proj.weight.dtype == torch.int8
