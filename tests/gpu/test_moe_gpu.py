"""The Triton MoE kernels at the Qwen3-30B-A3B and DeepSeek-V3 layer shapes in bf16 against
torch_native, both expert forms (GEMV, with GEMV 2 split by pair or not, and aligned grouped GEMM)
forced, and the fused routing at DeepSeek-V3's shape. (The dispatchers' kit on CUDA is
tests/gpu/test_kit_cuda.py.)"""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("path", ["gemv", "gemv_unsplit", "gemm"])
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
