"""Fused Triton layers (RMSNorm, residual+RMSNorm, SiLU-and-mul, in-place rotary) vs the torch path."""
import pytest
import torch

pytestmark = pytest.mark.gpu


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,hidden", [(1, 4096), (7, 2048), (130, 576)])
def test_rmsnorm(dtype, rows, hidden):
    from jackfield.kernels.norm import rmsnorm

    x = torch.randn(rows, hidden, device="cuda", dtype=dtype)
    r = torch.randn_like(x)
    w = torch.randn(hidden, device="cuda", dtype=dtype)
    ref_sum = (x.float() + r.float())
    ref = ref_sum * torch.rsqrt(ref_sum.pow(2).mean(-1, keepdim=True) + 1e-5) * w.float()
    out, res = rmsnorm(x, w, 1e-5, r)
    assert _rel(res, ref_sum) < 1e-2 and _rel(out, ref) < 2e-2
    plain = rmsnorm(x, w, 1e-5)
    xf = x.float()
    assert _rel(plain, xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5) * w.float()) < 2e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_silu_and_mul(dtype):
    from jackfield.kernels.activation import silu_and_mul

    x = torch.randn(33, 2 * 14336, device="cuda", dtype=dtype)
    ref = torch.nn.functional.silu(x[:, :14336].float()) * x[:, 14336:].float()
    assert _rel(silu_and_mul(x), ref) < 1e-2


@pytest.mark.parametrize("head_dim,hq,hk", [(128, 32, 8), (64, 9, 3), (256, 8, 8)])
def test_rope_inplace(head_dim, hq, hk):
    from jackfield.kernels.rotary import rope_inplace
    from jackfield.sdk.layers.rotary import RotaryEmbedding
    from jackfield.sdk.model_config import RopeConfig

    rot = RotaryEmbedding(head_dim, RopeConfig(theta=500000.0, rotary_dim=head_dim), 4096, torch.bfloat16, "cuda")
    t = 37
    qkv = torch.randn(t, (hq + 2 * hk) * head_dim, device="cuda", dtype=torch.bfloat16)
    q, k, _ = qkv.split([hq * head_dim, hk * head_dim, hk * head_dim], dim=-1)
    pos = torch.randint(0, 4096, (t,), device="cuda")
    cos, sin = rot.cos_sin_cache[pos].chunk(2, dim=-1)
    q_ref, k_ref = rot._rotate(q.clone(), cos, sin), rot._rotate(k.clone(), cos, sin)
    rope_inplace(pos, q, k, rot.cos_sin_cache, head_dim, head_dim)
    assert _rel(q, q_ref) < 1e-2 and _rel(k, k_ref) < 1e-2
