"""The fused Triton layers (jackfield.kernels) run by Triton's CPU interpreter, against the torch path.

TRITON_INTERPRET must be set before triton kernels are defined, so the checks run in a child
process. Skipped where triton is not installed; the GPU versions are in tests/gpu/test_fused_kernels.py.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import json, torch
    import torch.nn.functional as F
    from jackfield.kernels.norm import rmsnorm
    from jackfield.kernels.activation import silu_and_mul
    from jackfield.kernels.rotary import rope_inplace
    from jackfield.sdk.layers.norm import RMSNorm
    from jackfield.sdk.layers.rotary import RotaryEmbedding
    from jackfield.sdk.model_config import RopeConfig
    torch.manual_seed(0)
    out = {}
    x, r, w = torch.randn(5, 96), torch.randn(5, 96), torch.randn(96)
    norm = RMSNorm(96, 1e-6, torch.float32, "cpu"); norm.weight.data = w
    a, b = rmsnorm(x, w, 1e-6, r); ra, rb = norm._norm(x + r), x + r
    out["rmsnorm_residual"] = max((a - ra).abs().max().item(), (b - rb).abs().max().item())
    out["rmsnorm"] = (rmsnorm(x, w, 1e-6) - norm._norm(x)).abs().max().item()
    g = torch.randn(7, 2 * 80)
    out["silu_and_mul"] = (silu_and_mul(g) - F.silu(g[:, :80]) * g[:, 80:]).abs().max().item()
    rot = RotaryEmbedding(16, RopeConfig(theta=10000.0, rotary_dim=16), 64, torch.float32, "cpu")
    pos = torch.tensor([0, 3, 7, 9, 63])
    qkv = torch.randn(5, (6 + 2 * 2) * 16)
    q, k, _ = qkv.split([96, 32, 32], dim=-1)
    cos, sin = rot.cos_sin_cache[pos].chunk(2, dim=-1)
    rq, rk = rot._rotate(q.clone(), cos, sin), rot._rotate(k.clone(), cos, sin)
    rope_inplace(pos, q, k, rot.cos_sin_cache, 16, 16)
    out["rope"] = max((q - rq).abs().max().item(), (k - rk).abs().max().item())
    from jackfield.kernels.rotary import rope_inplace_and_store
    qkv = torch.randn(5, (6 + 2 * 2) * 16)
    q, k, v = qkv.split([96, 32, 32], dim=-1)
    rq, rk = rot._rotate(q.clone(), cos, sin), rot._rotate(k.clone(), cos, sin)
    kc, vc = torch.zeros(12, 2, 16), torch.zeros(12, 2, 16)
    loc = torch.tensor([3, 11, 0, 7, 5])
    rope_inplace_and_store(pos, q, k, v, rot.cos_sin_cache, 16, loc, kc, vc)
    out["rope_store"] = max((q - rq).abs().max().item(), (k - rk).abs().max().item(),
                            (kc[loc].view(5, 32) - rk).abs().max().item(), (vc[loc].view(5, 32) - v).abs().max().item())
    from jackfield.kernels.rotary import QKNorm
    qkv = torch.randn(5, (6 + 2 * 2) * 16) * 3
    q, k, v = qkv.split([96, 32, 32], dim=-1)
    qn, kn = RMSNorm(16, 1e-6, torch.float32, "cpu"), RMSNorm(16, 1e-6, torch.float32, "cpu")
    qn.weight.data, kn.weight.data = torch.randn(16), torch.randn(16)
    rq = rot._rotate(qn._norm(q.reshape(5, 6, 16)).reshape(5, 96), cos, sin)
    rk = rot._rotate(kn._norm(k.reshape(5, 2, 16)).reshape(5, 32), cos, sin)
    kc, vc = torch.zeros(12, 2, 16), torch.zeros(12, 2, 16)
    rope_inplace_and_store(pos, q, k, v, rot.cos_sin_cache, 16, loc, kc, vc, qk_norm=QKNorm(qn.weight, kn.weight, 1e-6))
    out["qknorm_rope_store"] = max((q - rq).abs().max().item(), (k - rk).abs().max().item(),
                                   (kc[loc].view(5, 32) - rk).abs().max().item(),
                                   (vc[loc].view(5, 32) - v).abs().max().item())
    from jackfield.kernels.router import rmsnorm_router
    errs = []
    for rows, e in ((1, 12), (3, 64)):
        x, r, gw = torch.randn(rows, 2048), torch.randn(rows, 2048), torch.randn(e, 2048) / 40
        norm = RMSNorm(2048, 1e-6, torch.float32, "cpu"); norm.weight.data = torch.randn(2048)
        h, s, logits = rmsnorm_router(x, r, norm.weight, 1e-6, gw)
        errs += [(h - norm._norm(x + r)).abs().max().item(), (s - (x + r)).abs().max().item(),
                 (logits - F.linear(norm._norm(x + r), gw)).abs().max().item()]
    out["rmsnorm_router"] = max(errs)
    from jackfield.kernels.gemv import CANDIDATES, gemv
    w, b, xr = torch.randn(37, 2048), torch.randn(37), torch.randn(1, 2048)
    out["gemv"] = max((gemv(xr, w, bias, cfg) - F.linear(xr, w, bias)).abs().max().item()
                      for cfg in CANDIDATES for bias in (None, b))
    from jackfield.kernels.gemv import gemv_rmsnorm, gemv_silu_mul
    cfg, xr, res = CANDIDATES[0], torch.randn(1, 2048), torch.randn(1, 2048)
    norm = RMSNorm(2048, 1e-5, torch.float32, "cpu"); norm.weight.data = torch.randn(2048)
    y, s = gemv_rmsnorm(xr, res, norm.weight, 1e-5, w, b, cfg)
    out["gemv_add_rmsnorm"] = max((y - F.linear(norm._norm(xr + res), w, b)).abs().max().item(),
                                  (s - (xr + res)).abs().max().item())
    y, s = gemv_rmsnorm(xr, None, norm.weight, 1e-5, w, None, cfg)
    out["gemv_rmsnorm"] = max((y - F.linear(norm._norm(xr), w)).abs().max().item(), float(s is not xr))
    gu = torch.randn(1, 2 * 2048)
    out["gemv_silu_mul"] = (gemv_silu_mul(gu, w, b, cfg) - F.linear(F.silu(gu[:, :2048]) * gu[:, 2048:], w, b)
                            ).abs().max().item()
    from jackfield.kernels.kv_store import store_kv
    kc, vc = torch.zeros(20, 2, 8), torch.zeros(20, 2, 8)
    kv = torch.randn(3, 48)
    loc = torch.tensor([5, 0, 17])
    store_kv(kc, vc, loc, kv[:, 16:32], kv[:, 32:])
    out["store_kv"] = max((kc[loc].view(3, 16) - kv[:, 16:32]).abs().max().item(),
                          (vc[loc].view(3, 16) - kv[:, 32:]).abs().max().item(),
                          kc.abs().sum().item() - kc[loc].abs().sum().item())
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def errors():
    pytest.importorskip("triton", reason="triton is not installed")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["rmsnorm_residual", "rmsnorm", "silu_and_mul", "rope", "rope_store",
                                  "qknorm_rope_store", "rmsnorm_router", "gemv",
                                  "gemv_add_rmsnorm", "gemv_rmsnorm", "gemv_silu_mul", "store_kv"])
def test_fused_kernel_matches_torch(errors, name):
    assert errors[name] < 2e-4 if name.startswith(("gemv", "rmsnorm_router")) else errors[name] < 1e-5, errors
