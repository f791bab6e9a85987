"""The `cpu` attention backend's decode operator against a float32 reference computed from the same
pool rows: GQA, ragged batches with padded slot lists, strided pool rows, sliding window, soft-cap."""
from __future__ import annotations

import math

import pytest
import torch

from jackfield.sdk import cpu_attention_unavailable, cpu_decode_attention

pytestmark = pytest.mark.skipif(cpu_attention_unavailable() is not None, reason=str(cpu_attention_unavailable()))


def reference(q, k_buf, v_buf, slots, lens, scale, window=0, cap=0.0):
    """Per request and head: softmax(q . k * scale) @ v over its last `window` (all) keys, in float64."""
    bs, h, _ = q.shape
    group = h // k_buf.shape[1]
    out = torch.zeros(bs, h, v_buf.shape[2], dtype=torch.float64)
    for b in range(bs):
        rows = slots[b, max(0, int(lens[b]) - window) if window else 0:int(lens[b])]
        k, v = k_buf[rows].double(), v_buf[rows].double()  # [L, Hkv, D]
        for i in range(h):
            s = k[:, i // group] @ q[b, i].double() * scale
            if cap > 0:
                s = cap * torch.tanh(s / cap)
            out[b, i] = torch.softmax(s, 0) @ v[:, i // group]
    return out


@pytest.mark.parametrize("heads, kv_heads, dim, window, cap", [
    (9, 3, 64, 0, 0.0), (8, 8, 128, 0, 0.0), (8, 1, 32, 0, 0.0), (4, 2, 64, 5, 0.0), (4, 2, 64, 0, 30.0)])
def test_decode_matches_the_float64_reference(heads, kv_heads, dim, window, cap):
    torch.manual_seed(0)
    rows, lens = 300, torch.tensor([1, 37, 120], dtype=torch.int64)
    k_pool = torch.randn(rows, kv_heads, dim + 16)[..., :dim]  # rows strided: dense only in the last dim
    v_pool = torch.randn(rows, kv_heads, dim)
    slots = torch.stack([torch.randperm(rows)[:int(lens.max())] for _ in lens])  # padded past each length
    q = torch.randn(len(lens), heads, dim)
    scale = 1 / math.sqrt(dim)
    got = cpu_decode_attention.decode(q, k_pool, v_pool, slots, lens, scale, window, cap)
    want = reference(q, k_pool, v_pool, slots, lens, scale, window, cap)
    assert torch.allclose(got.double(), want, atol=2e-5, rtol=1e-5), (got.double() - want).abs().max()


def test_the_backend_decodes_through_the_operator(monkeypatch):
    """A float32 pool's decode reaches the operator, not torch_native's gather and SDPA."""
    from jackfield.testing import certify
    from jackfield_plugins.attention import torch_native
    from jackfield_plugins.attention.cpu import CpuBackend

    def no_fallback(*args, **kwargs):
        raise AssertionError("decode fell back to torch_native's path")

    monkeypatch.setattr(torch_native.TorchNativeBackend, "forward_decode", no_fallback)
    report = certify(CpuBackend, "cpu")
    decodes = [r for r in report.results if "decode match the reference" in r.behaviour]
    assert len(decodes) >= 5, report.format()
    float32 = [r for r in decodes if "dtype" not in r.behaviour]  # float16/bfloat16 pools take the fallback
    assert float32 and all(r.outcome == "passed" for r in float32), report.format()
