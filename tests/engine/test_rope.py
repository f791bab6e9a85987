"""Rotary embeddings: our inverse frequencies, attention scaling and rotation equal transformers'.

Each case is a transformers LlamaConfig; jackfield sees it the way it sees a checkpoint, through
`ModelConfig.from_hf(config.to_dict())`, so the config parsing is tested along with the maths.
"""
from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb
from transformers.models.stablelm.modeling_stablelm import StableLmRotaryEmbedding

from jackfield.sdk.layers.rotary import RotaryEmbedding, rope_inv_freq
from jackfield.sdk.model_config import ModelConfig, RopeConfig

SMALL = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_hidden_layers=1,
             vocab_size=32, intermediate_size=64, max_position_embeddings=256)
LLAMA31 = dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, head_dim=128, num_hidden_layers=1,
               vocab_size=32, intermediate_size=64, max_position_embeddings=131072)

CASES = {
    "default": (SMALL, {"rope_type": "default", "rope_theta": 10000.0}),
    "default_theta_1e6": (SMALL, {"rope_type": "default", "rope_theta": 1e6}),
    "linear": (SMALL, {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}),
    "llama3_small": (SMALL, {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    "llama3_llama31": (LLAMA31, {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 8192}),
    "llama3_no_original_len": (SMALL, {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                       "low_freq_factor": 1.0, "high_freq_factor": 4.0}),
    "yarn": (SMALL, {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                     "original_max_position_embeddings": 64}),
    "yarn_qwen_style": (dict(SMALL, max_position_embeddings=4096),
                        {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
                         "original_max_position_embeddings": 1024}),
    "yarn_betas": (SMALL, {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0, "beta_fast": 16.0,
                           "beta_slow": 2.0, "original_max_position_embeddings": 128}),
    "yarn_attention_factor": (SMALL, {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                      "attention_factor": 0.75, "original_max_position_embeddings": 64}),
    "yarn_mscale_ratio": (SMALL, {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0, "mscale": 1.0,
                                  "mscale_all_dim": 0.707, "original_max_position_embeddings": 64}),
    "yarn_mscale_all_dim_only": (SMALL, {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                         "mscale_all_dim": 1.0, "original_max_position_embeddings": 64}),
    "yarn_no_truncate": (SMALL, {"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0, "truncate": False,
                                 "original_max_position_embeddings": 64}),
    "yarn_no_original_len": (SMALL, {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}),
    "partial_rotary": (SMALL, {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}),
}


def _hf_config(case: str) -> LlamaConfig:
    base, rope = CASES[case]
    return LlamaConfig(**base, rope_parameters=dict(rope))


def _hf_rotary_cls(config: LlamaConfig):
    # Llama's own rotary ignores partial_rotary_factor; StableLM's is the same maths with it
    return StableLmRotaryEmbedding if "partial_rotary_factor" in config.rope_parameters else LlamaRotaryEmbedding


def _hf_inv_freq(config: LlamaConfig) -> tuple[torch.Tensor, float]:
    kind = config.rope_parameters["rope_type"]
    if kind == "default":
        return _hf_rotary_cls(config).compute_default_rope_parameters(config, device=torch.device("cpu"))
    return ROPE_INIT_FUNCTIONS[kind](config, device=torch.device("cpu"))


def _ours(config: LlamaConfig, rope: dict | None = None) -> RopeConfig:
    """Our RopeConfig for `config`; `rope` replaces its rope_parameters with the dict as a
    config.json may hold it (transformers fills in defaults, such as the original length)."""
    hf = config.to_dict()
    if rope is not None:
        hf["rope_parameters"] = dict(rope)
    return ModelConfig.from_hf(hf).rope


@pytest.mark.parametrize("case", sorted(CASES))
def test_inv_freq_and_attention_scaling_equal_transformers(case):
    config = _hf_config(case)
    ref_inv, ref_scale = _hf_inv_freq(config)
    # the model runner builds its tables for context_len + 1 positions, not max_position_embeddings
    inv, scale = rope_inv_freq(_ours(config, CASES[case][1]), max_pos=1000)
    assert inv.shape == ref_inv.shape
    torch.testing.assert_close(inv, ref_inv.float(), rtol=1e-6, atol=0)
    assert scale == pytest.approx(float(ref_scale), rel=1e-6, abs=1e-6)


def test_scaled_cases_really_differ_from_default():
    """Guards the cases above: each scaling changes the frequencies or the magnitude."""
    default, _ = rope_inv_freq(_ours(_hf_config("default")), 1000)
    for case in ("linear", "llama3_small", "yarn", "yarn_no_truncate"):
        inv, scale = rope_inv_freq(_ours(_hf_config(case)), 1000)
        assert not torch.allclose(inv, default, rtol=1e-3) or scale != 1.0, case
    _, scale = rope_inv_freq(_ours(_hf_config("yarn")), 1000)
    assert scale == pytest.approx(0.1 * math.log(4.0) + 1.0)


@pytest.mark.parametrize("case", ["default", "linear", "llama3_small", "yarn", "yarn_mscale_ratio", "partial_rotary"])
def test_rotary_embedding_rotates_q_and_k_like_transformers(case):
    config = _hf_config(case)
    hd, hq, hk = config.head_dim, config.num_attention_heads, config.num_key_value_heads
    gen = torch.Generator().manual_seed(0)
    positions = torch.tensor([0, 1, 2, 7, 63, 64, 100, 255])
    t = positions.numel()
    q = torch.randn(t, hq * hd, generator=gen)
    k = torch.randn(t, hk * hd, generator=gen)

    ours = RotaryEmbedding(hd, _ours(config, CASES[case][1]), 300, torch.float32, "cpu")
    oq, ok = ours(positions, q, k)

    hf = _hf_rotary_cls(config)(config)
    cos, sin = hf(q, positions[None])
    rot = cos.shape[-1]
    # transformers rotates the first `rot` dims of each head (all of them for Llama unless partial)
    qh, kh = q.view(1, t, hq, hd).transpose(1, 2), k.view(1, t, hk, hd).transpose(1, 2)
    rq, rk = apply_rotary_pos_emb(qh[..., :rot], kh[..., :rot], cos, sin)
    rq = torch.cat([rq, qh[..., rot:]], dim=-1).transpose(1, 2).reshape(t, -1)
    rk = torch.cat([rk, kh[..., rot:]], dim=-1).transpose(1, 2).reshape(t, -1)
    torch.testing.assert_close(oq, rq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ok, rk, rtol=1e-5, atol=1e-5)
    if case == "partial_rotary":
        assert rot == hd // 2
        torch.testing.assert_close(oq.view(t, hq, hd)[..., rot:], q.view(t, hq, hd)[..., rot:], rtol=0, atol=0)


@pytest.mark.parametrize("legacy, modern", [
    ({"rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 2.0}},
     {"rope_type": "linear", "rope_theta": 500000.0, "factor": 2.0}),
    ({"rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}},
     {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
      "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    ({"rope_theta": 1e6, "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}},
     {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0, "original_max_position_embeddings": 64}),
    ({"rope_theta": 20000.0, "rope_scaling": None}, {"rope_type": "default", "rope_theta": 20000.0}),
])
def test_legacy_rope_scaling_configs(legacy, modern):
    """Older config.json files put rope_theta at the top level and the scaling under rope_scaling."""
    old = ModelConfig.from_hf({**SMALL, "architectures": ["LlamaForCausalLM"], **legacy}).rope
    new = _ours(LlamaConfig(**SMALL, rope_parameters=dict(modern)))
    assert old == new
    ref_inv, ref_scale = _hf_inv_freq(LlamaConfig(**SMALL, rope_parameters=dict(modern)))
    inv, scale = rope_inv_freq(old, 1000)
    torch.testing.assert_close(inv, ref_inv.float(), rtol=1e-6, atol=0)
    assert scale == pytest.approx(float(ref_scale), rel=1e-6)


def test_unsupported_rope_type_is_named():
    rope = RopeConfig(rotary_dim=16, scaling_type="longrope", factor=2.0)
    with pytest.raises(ValueError, match="longrope"):
        rope_inv_freq(rope, 64)
