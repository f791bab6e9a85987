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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,k", [(6144, 4096), (4096, 4096), (4096, 14336), (28672, 4096), (1000, 2048)])
def test_gemv_matches_linear(dtype, n, k):
    from jackfield.kernels.gemv import CANDIDATES, fits, gemv

    x = torch.randn(1, k, device="cuda", dtype=dtype)
    w = torch.randn(n, k, device="cuda", dtype=dtype) / k ** 0.5
    b = torch.randn(n, device="cuda", dtype=dtype)
    ref = x.float() @ w.float().t() + b.float()
    for cfg in CANDIDATES:
        if fits(cfg, k):
            assert _rel(gemv(x, w, b, cfg), ref) < 1e-2, cfg
            assert _rel(gemv(x, w, None, cfg), ref - b.float()) < 1e-2, cfg


@pytest.mark.parametrize("n,k", [(6144, 4096), (28672, 4096), (4096, 14336)])
def test_fused_gemv_variants_match_unfused(n, k):
    """RMSNorm (+ residual) and SiLU-and-mul in the GEMV prologue, every config, against the unfused layers."""
    from jackfield.kernels.gemv import CANDIDATES, fits, gemv_rmsnorm, gemv_silu_mul
    from jackfield.sdk.layers.norm import RMSNorm

    dt = torch.bfloat16
    x, res = torch.randn(1, k, device="cuda", dtype=dt), torch.randn(1, k, device="cuda", dtype=dt)
    w = torch.randn(n, k, device="cuda", dtype=dt) / k ** 0.5
    norm = RMSNorm(k, 1e-5, dt, "cuda")
    norm.weight.data.uniform_(0.5, 1.5)
    h, s_ref = norm(x, res)
    ref, ref_plain = h.float() @ w.float().t(), norm(x).float() @ w.float().t()
    gu = torch.randn(1, 2 * k, device="cuda", dtype=dt)
    ref_silu = (torch.nn.functional.silu(gu[:, :k].float()) * gu[:, k:].float()) @ w.float().t()
    for cfg in CANDIDATES:
        if fits(cfg, k):
            y, s = gemv_rmsnorm(x, res, norm.weight, 1e-5, w, None, cfg)
            assert _rel(y, ref) < 1e-2 and torch.equal(s, s_ref), cfg
            y, s = gemv_rmsnorm(x, None, norm.weight, 1e-5, w, None, cfg)
            assert _rel(y, ref_plain) < 1e-2 and s is x, cfg
            assert _rel(gemv_silu_mul(gu, w, None, cfg), ref_silu) < 1e-2, cfg


def test_gemv_dispatch_inside_cuda_graph():
    """The SDK's Gemv times a shape once outside capture, then replays the chosen kernel in a graph."""
    from jackfield.sdk import Gemv

    g = Gemv()
    x = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16) / 64
    ref = torch.nn.functional.linear(x, w)
    assert _rel(g.linear(x, w), ref) < 1e-2
    assert ("linear", 4096, 4096, torch.bfloat16) in g.choices
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = g.linear(x, w)
    x.copy_(torch.randn_like(x))
    graph.replay()
    assert _rel(out, torch.nn.functional.linear(x, w)) < 1e-2
    rows = torch.randn(3, 4096, device="cuda", dtype=torch.bfloat16)
    assert torch.equal(g.linear(rows, w), torch.nn.functional.linear(rows, w))  # more than one row: cuBLAS
    assert g.normed_linear(rows, None, w[0], 1e-5, w) is None and g.silu_mul_linear(rows, w[:, :2048]) is None


def test_fused_gemv_dispatch_inside_cuda_graph():
    """normed_linear / silu_mul_linear: timed once, then either the fused kernel (replayable in a
    graph) or None (the caller runs the unfused pair)."""
    from jackfield.sdk import Gemv
    from jackfield.sdk.layers.norm import RMSNorm

    g, dt = Gemv(), torch.bfloat16
    x, res = torch.randn(1, 4096, device="cuda", dtype=dt), torch.randn(1, 4096, device="cuda", dtype=dt)
    w = torch.randn(6144, 4096, device="cuda", dtype=dt) / 64
    norm = RMSNorm(4096, 1e-5, dt, "cuda")
    out = g.normed_linear(x, res, norm.weight, 1e-5, w)
    assert ("add_rmsnorm_linear", 6144, 4096, dt) in g.choices
    if out is None:
        assert g.choices[("add_rmsnorm_linear", 6144, 4096, dt)] is None
        return
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y, s = g.normed_linear(x, res, norm.weight, 1e-5, w)
    x.copy_(torch.randn_like(x))
    graph.replay()
    h, s_ref = norm(x, res)
    assert torch.equal(s, s_ref) and _rel(y, torch.nn.functional.linear(h, w)) < 1e-2


def _decode_chain(x, res, layers, cfgs):
    """Batch-1 decode layers as the model runs them: qkv with the residual RMSNorm in its prologue,
    a non-Triton kernel (attention's place), o_proj, gate_up with the residual RMSNorm, down with
    SiLU-and-mul; each GEMV reads the output of the kernel just before it."""
    from jackfield.kernels.gemv import gemv, gemv_rmsnorm, gemv_silu_mul

    for g, w_qkv, w_o, w_gu, w_d in layers:
        qkv, res = gemv_rmsnorm(x, res, g, 1e-5, w_qkv, None, cfgs[0])
        o = gemv(qkv[:, :w_o.shape[1]] * 2.0, w_o, None, cfgs[1])
        h, res = gemv_rmsnorm(o, res, g, 1e-5, w_gu, None, cfgs[2])
        x = gemv_silu_mul(h, w_d, None, cfgs[3])
    return x, res


def test_pdl_gemv_chain_matches_plain_launches_in_cuda_graph():
    """Programmatic dependent launch only moves the start of each GEMV's programs: the chain gives
    bit-identical results with and without it, eagerly and replayed from a CUDA graph with new inputs
    (a GEMV that read its input before the previous kernel finished would see stale values)."""
    from dataclasses import replace

    from jackfield.kernels import pdl_available
    from jackfield.kernels.gemv import GemvConfig

    if not pdl_available(torch.device("cuda")):
        pytest.skip("programmatic dependent launch needs compute capability 9.0+ and a Triton with gdc_wait "
                    "(and JACKFIELD_DISABLE_PDL unset)")
    dt, hid, inter = torch.bfloat16, 1024, 2816
    pdl = [GemvConfig(4, 512, 4, 4), GemvConfig(4, 1024, 4, 3), GemvConfig(8, 512, 4, 3), GemvConfig(4, 256, 4, 3)]
    plain = [replace(c, pdl=False) for c in pdl]
    layers = [(torch.empty(hid, device="cuda", dtype=dt).uniform_(0.5, 1.5),
               torch.randn(3 * hid, hid, device="cuda", dtype=dt) / hid ** 0.5,
               torch.randn(hid, hid, device="cuda", dtype=dt) / hid ** 0.5,
               torch.randn(2 * inter, hid, device="cuda", dtype=dt) / hid ** 0.5,
               torch.randn(hid, inter, device="cuda", dtype=dt) / inter ** 0.5) for _ in range(6)]
    x, res = torch.randn(1, hid, device="cuda", dtype=dt), torch.randn(1, hid, device="cuda", dtype=dt)
    ref = _decode_chain(x, res, layers, plain)
    got = _decode_chain(x, res, layers, pdl)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = _decode_chain(x, res, layers, pdl)
    for _ in range(5):
        x.copy_(torch.randn_like(x))
        res.copy_(torch.randn_like(res))
        graph.replay()
        ref = _decode_chain(x, res, layers, plain)
        assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])


def test_store_kv_matches_indexed_copy():
    from jackfield.sdk import KVPool

    pool = KVPool(8, 16, 2, 8, 128, torch.bfloat16, "cuda")
    qkv = torch.randn(5, (32 + 16) * 128, device="cuda", dtype=torch.bfloat16)
    k, v = qkv[:, 32 * 128:40 * 128], qkv[:, 40 * 128:]
    loc = torch.tensor([16, 40, 41, 127, 99], device="cuda")
    pool.set_kv(1, loc, k, v)
    assert torch.equal(pool.k_buffer(1)[loc].view(5, -1), k) and torch.equal(pool.v_buffer(1)[loc].view(5, -1), v)
    untouched = torch.ones(pool.k_buffer(1).shape[0], dtype=torch.bool, device="cuda")
    untouched[loc] = False
    assert pool.k_buffer(0).abs().sum() == 0 and pool.k_buffer(1)[untouched].abs().sum() == 0


def test_rope_inplace_and_store():
    from jackfield.kernels.rotary import rope_inplace_and_store
    from jackfield.sdk.layers.rotary import RotaryEmbedding
    from jackfield.sdk.model_config import RopeConfig

    d, hq, hk, t = 128, 32, 8, 9
    rot = RotaryEmbedding(d, RopeConfig(theta=500000.0, rotary_dim=d), 4096, torch.bfloat16, "cuda")
    qkv = torch.randn(t, (hq + 2 * hk) * d, device="cuda", dtype=torch.bfloat16)
    q, k, v = qkv.split([hq * d, hk * d, hk * d], dim=-1)
    pos = torch.randint(0, 4096, (t,), device="cuda")
    cos, sin = rot.cos_sin_cache[pos].chunk(2, dim=-1)
    q_ref, k_ref = rot._rotate(q.clone(), cos, sin), rot._rotate(k.clone(), cos, sin)
    kc = torch.zeros(64, hk, d, device="cuda", dtype=torch.bfloat16)
    vc = torch.zeros_like(kc)
    loc = torch.randperm(63, device="cuda")[:t] + 1
    rope_inplace_and_store(pos, q, k, v, rot.cos_sin_cache, d, loc, kc, vc)
    assert _rel(q, q_ref) < 1e-2 and _rel(k, k_ref) < 1e-2
    assert torch.equal(kc[loc].view(t, -1), k) and torch.equal(vc[loc].view(t, -1), v)


@pytest.mark.parametrize("t", [1, 9])
def test_qk_norm_rope_and_store_matches_the_unfused_kernels(t):
    """Qwen3's per-head q/k RMSNorm inside the rope-and-store kernel: the same bf16 values as the
    rmsnorm kernel followed by rope_inplace_and_store (at most a rounding step of the sum of squares)."""
    from jackfield.kernels.norm import rmsnorm
    from jackfield.kernels.rotary import QKNorm, rope_inplace_and_store
    from jackfield.sdk.layers.rotary import RotaryEmbedding
    from jackfield.sdk.model_config import RopeConfig

    d, hq, hk = 128, 32, 4
    rot = RotaryEmbedding(d, RopeConfig(theta=1000000.0, rotary_dim=d), 4096, torch.bfloat16, "cuda")
    qkv = torch.randn(t, (hq + 2 * hk) * d, device="cuda", dtype=torch.bfloat16) * 4
    qw, kw = (torch.rand(d, device="cuda", dtype=torch.bfloat16) + 0.5 for _ in range(2))
    pos = torch.randint(0, 4096, (t,), device="cuda")
    loc = torch.randperm(63, device="cuda")[:t] + 1
    ref = qkv.clone()
    q, k, v = ref.split([hq * d, hk * d, hk * d], dim=-1)
    q_ref = rmsnorm(q.reshape(t, hq, d), qw, 1e-6).reshape(t, -1)
    k_ref = rmsnorm(k.reshape(t, hk, d), kw, 1e-6).reshape(t, -1)
    kc_ref = torch.zeros(64, hk, d, device="cuda", dtype=torch.bfloat16)
    vc_ref = torch.zeros_like(kc_ref)
    rope_inplace_and_store(pos, q_ref, k_ref, v, rot.cos_sin_cache, d, loc, kc_ref, vc_ref)
    q, k, v = qkv.split([hq * d, hk * d, hk * d], dim=-1)
    kc, vc = torch.zeros_like(kc_ref), torch.zeros_like(vc_ref)
    rope_inplace_and_store(pos, q, k, v, rot.cos_sin_cache, d, loc, kc, vc, qk_norm=QKNorm(qw, kw, 1e-6))
    assert _rel(q, q_ref) < 1e-3 and _rel(k, k_ref) < 1e-3 and _rel(kc, kc_ref) < 1e-3 and torch.equal(vc, vc_ref)


@pytest.mark.parametrize("hidden,experts,router_dtype", [(2048, 128, torch.bfloat16), (7168, 256, torch.float32)])
def test_rmsnorm_router_matches_rmsnorm_then_linear(hidden, experts, router_dtype):
    """The MoE block's add + RMSNorm + router kernel against the rmsnorm kernel and F.linear
    (Qwen3-30B-A3B's bf16 router; DeepSeek-V3's float32 one)."""
    import torch.nn.functional as F

    from jackfield.kernels.norm import rmsnorm
    from jackfield.kernels.router import rmsnorm_router

    x, r = (torch.randn(1, hidden, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    nw = torch.rand(hidden, device="cuda", dtype=torch.bfloat16) + 0.5
    gw = (torch.randn(experts, hidden, device="cuda") / hidden ** 0.5).to(router_dtype)
    h, s, logits = rmsnorm_router(x, r, nw, 1e-6, gw)
    h_ref, s_ref = rmsnorm(x, nw, 1e-6, r)
    assert torch.equal(s, s_ref) and _rel(h, h_ref) < 1e-3
    assert logits.dtype == router_dtype and _rel(logits, F.linear(h_ref.to(router_dtype), gw)) < 1e-2
