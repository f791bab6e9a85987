"""The Triton MoE kernels at the Qwen3-30B-A3B and DeepSeek-V3 layer shapes in bf16 against
torch_native, both expert forms (GEMV, with GEMV 2 split by pair or not, and aligned grouped GEMM)
forced, and the fused routing at DeepSeek-V3's shape. (The dispatchers' kit on CUDA is
tests/gpu/test_kit_cuda.py.)"""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("path", ["gemv", "gemv_unsplit", "gemv_atomic", "gemm"])
@pytest.mark.parametrize("tokens", [1, 4, 64, 256])
@pytest.mark.parametrize("shape", [(128, 8, 2048, 768), (256, 8, 1024, 256)])
def test_triton_experts_at_model_shapes(shape, tokens, path):
    from jackfield.sdk import ExpertWeights, MoEConfig, RoutingConfig, route
    from jackfield_plugins.moe.torch_native import TorchNativeMoE
    from jackfield_plugins.moe.triton_kernels import fused_experts
    from jackfield_plugins.moe.triton_kernels.configs import default_config

    e, k, h, i = shape
    gen = torch.Generator(device="cuda").manual_seed(tokens)
    w13 = (torch.randn(e, 2 * i, h, device="cuda", generator=gen) / h ** 0.5).bfloat16()
    w2 = (torch.randn(e, h, i, device="cuda", generator=gen) / i ** 0.5).bfloat16()
    x = torch.randn(tokens, h, device="cuda", generator=gen).bfloat16()
    cfg = MoEConfig(e, h, i, RoutingConfig(top_k=k))
    tw, ti = route(torch.randn(tokens, e, device="cuda", generator=gen), cfg.routing)
    ref = TorchNativeMoE(cfg).experts(x, tw, ti, ExpertWeights(w13, w2)).float()
    config = default_config(4096 if path == "gemm" else 1, e, k)
    if path == "gemv_unsplit":  # GEMV 2 as one program per (token, N-block) over the token's experts
        config = {**config, "SPLIT2": False}
    if path == "gemv_atomic":  # GEMV 2 split by pair, adding into the output GEMV 1 zeroed
        config = {**config, "ATOMIC2": True}
    out = fused_experts(x, w13, w2, tw, ti, config).float()
    err = ((out - ref).norm() / ref.norm()).item()
    assert err < 1e-2, err


def test_fused_routing_at_deepseek_v3_shape():
    from jackfield.sdk import RoutingConfig, route
    from jackfield_plugins.moe.triton_kernels import fused_routing

    r = RoutingConfig(top_k=8, scoring="sigmoid", num_groups=8, topk_groups=4, group_scoring="top2_sum",
                      correction_bias=True, scaling_factor=2.5)
    logits, bias = torch.randn(300, 256, device="cuda"), 0.1 * torch.randn(256, device="cuda")
    (w, i), (rw, ri) = fused_routing(logits, r, bias), route(logits, r, bias)
    assert (i.sort(1).values == ri.sort(1).values).all()
    assert torch.allclose(w.gather(1, i.sort(1).indices), rw.gather(1, ri.sort(1).indices), atol=1e-5)


def _fp8_experts(e, h, i, gen, block=(128, 128)):
    """Random block-wise FP8 experts (codes of Gaussian weights, scales around 1/sqrt(fan-in))."""
    from jackfield.sdk import ExpertWeights

    cdiv = lambda a, b: -(-a // b)  # noqa: E731
    w13 = (torch.randn(e, 2 * i, h, device="cuda", generator=gen) * 4).to(torch.float8_e4m3fn)
    w2 = (torch.randn(e, h, i, device="cuda", generator=gen) * 4).to(torch.float8_e4m3fn)
    s13 = (torch.rand(e, cdiv(2 * i, block[0]), cdiv(h, block[1]), device="cuda", generator=gen) + 0.5) / (4 * h ** 0.5)
    s2 = (torch.rand(e, cdiv(h, block[0]), cdiv(i, block[1]), device="cuda", generator=gen) + 0.5) / (4 * i ** 0.5)
    return ExpertWeights(w13, w2, "fp8_block", s13, s2, block)


@pytest.mark.parametrize("path", ["gemv", "gemv_unsplit", "gemv_atomic", "gemm"])
@pytest.mark.parametrize("tokens", [1, 4, 64, 256])
@pytest.mark.parametrize("shape", [(128, 8, 2048, 768), (256, 8, 1024, 256)])
def test_triton_fp8_block_experts_against_dequantized_reference(shape, tokens, path):
    """Block-wise FP8 experts (128x128 scales) through both kernel forms, bf16 activations, against
    torch_native on the dequantized weights (weight-only FP8: the same numerics up to bf16 rounding)."""
    from jackfield.sdk import MoEConfig, RoutingConfig, route
    from jackfield_plugins.moe.torch_native import TorchNativeMoE
    from jackfield_plugins.moe.triton_kernels import fused_experts
    from jackfield_plugins.moe.triton_kernels.configs import default_config

    e, k, h, i = shape
    gen = torch.Generator(device="cuda").manual_seed(tokens + 7)
    w = _fp8_experts(e, h, i, gen)
    x = torch.randn(tokens, h, device="cuda", generator=gen).bfloat16()
    cfg = MoEConfig(e, h, i, RoutingConfig(top_k=k))
    tw, ti = route(torch.randn(tokens, e, device="cuda", generator=gen), cfg.routing)
    ref = TorchNativeMoE(cfg).experts(x, tw, ti, w).float()
    config = default_config(4096 if path == "gemm" else 1, e, k)
    if path == "gemv_unsplit":
        config = {**config, "SPLIT2": False}
    if path == "gemv_atomic":
        config = {**config, "ATOMIC2": True}
    out = fused_experts(x, w.w13, w.w2, tw, ti, config, (w.w13_scale, w.w2_scale, w.block)).float()
    err = ((out - ref).norm() / ref.norm()).item()
    assert err < 1e-2, err


@pytest.mark.parametrize("tokens", [1, 3, 200])
def test_triton_dispatcher_runs_fp8_experts_with_fused_routing(tokens):
    """The dispatcher's own path (fused top-k into the GEMV at small batches, aligned GEMMs at large)
    with DeepSeek-V3 routing on FP8 experts, against torch_native."""
    from jackfield.sdk import MoEConfig, RoutingConfig
    from jackfield_plugins.moe.torch_native import TorchNativeMoE
    from jackfield_plugins.moe.triton import TritonMoE

    e, h, i = 64, 1024, 256
    r = RoutingConfig(top_k=8, scoring="sigmoid", num_groups=8, topk_groups=4, group_scoring="top2_sum",
                      correction_bias=True, scaling_factor=2.5)
    cfg = MoEConfig(e, h, i, r)
    gen = torch.Generator(device="cuda").manual_seed(tokens)
    w = _fp8_experts(e, h, i, gen)
    x = torch.randn(tokens, h, device="cuda", generator=gen).bfloat16()
    logits, bias = torch.randn(tokens, e, device="cuda", generator=gen), 0.1 * torch.randn(e, device="cuda", generator=gen)
    triton_moe = TritonMoE(cfg)
    out = triton_moe.forward(x, logits, triton_moe.prepare_weights(w), bias).float()
    ref = TorchNativeMoE(cfg).forward(x, logits, w, bias).float()
    err = ((out - ref).norm() / ref.norm()).item()
    assert err < 1e-2, err
