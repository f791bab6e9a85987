"""The `triton` MoE dispatcher's kernels under Triton's CPU interpreter: fused routing against the
reference routing, moe_align_block_size's layout, both expert forms (GEMV and aligned grouped GEMM)
against torch_native (plain and block-wise FP8 experts), and the kit's routing, grouped and idle-expert checks on a CPU-declared
subclass. TRITON_INTERPRET must be set before the kernels are defined, so the checks run in a child
process. Skipped where triton is not installed; tests/gpu/test_moe_gpu.py runs them on the GPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

CHILD = textwrap.dedent("""
    import json, torch
    from jackfield.sdk import Availability, Capabilities, ExpertWeights, MoEConfig, RoutingConfig, route
    from jackfield.testing import run_checks, KitTarget
    from jackfield.testing.suites import moe as suite
    from jackfield_plugins.moe.torch_native import TorchNativeMoE
    from jackfield_plugins.moe.triton import TritonMoE
    from jackfield_plugins.moe.triton_kernels import fused_experts, fused_moe_gemv, fused_routing, moe_align_block_size
    torch.manual_seed(0)
    out = {}

    def gemv_tokens(t, config):
        # The interpreter runs one GEMV program per (pair, N-block), seconds for a batch of 20 tokens:
        # the GEMV forms take the batch's first 4 tokens (16 pairs at top-4; the dispatcher gives the
        # GEMV form batches of at most 32 pairs), the same shapes, tiles and masks; the grouped GEMM
        # the whole batch.
        return t if config["path"] == "gemm" else min(t, 4)
    V3 = dict(scoring="sigmoid", num_groups=8, topk_groups=4, group_scoring="top2_sum", correction_bias=True,
              scaling_factor=2.5)
    for name, (r, e) in {"softmax_top8_of_128": (RoutingConfig(top_k=8), 128),
                         "top1_no_renorm": (RoutingConfig(top_k=1, renormalize=False), 16),
                         "v3_top8_of_256": (RoutingConfig(top_k=8, **V3), 256),
                         "v2_groups_max": (RoutingConfig(top_k=2, num_groups=4, topk_groups=2), 8)}.items():
        logits = torch.randn(9, e)
        bias = 0.1 * torch.randn(e) if r.correction_bias else None
        (w, i), (rw, ri) = fused_routing(logits, r, bias), route(logits, r, bias)
        same = all(sorted(a) == sorted(b) for a, b in zip(i.tolist(), ri.tolist()))
        err = max(abs(dict(zip(a, x))[k] - dict(zip(b, y))[k]) for a, x, b, y in
                  zip(i.tolist(), w.tolist(), ri.tolist(), rw.tolist()) for k in b) if same else 1.0
        out["routing_" + name] = err
    layout_ok = True
    for t, k, e, bm in [(5, 2, 8, 4), (33, 8, 128, 16), (1, 8, 128, 16), (100, 4, 16, 64)]:
        ids = torch.stack([torch.randperm(e)[:k] for _ in range(t)]).to(torch.int32)
        s, blocks, n = moe_align_block_size(ids, e, bm)
        n, flat = int(n), ids.view(-1)
        counts = torch.bincount(flat.long(), minlength=e)
        layout_ok &= n == int(((counts + bm - 1) // bm * bm).sum())
        layout_ok &= sorted(s[:n][s[:n] < t * k].tolist()) == list(range(t * k))
        layout_ok &= all(flat[p] == blocks[b] for b in range(n // bm) for p in s[b * bm:(b + 1) * bm].tolist()
                         if p < t * k)
        layout_ok &= bool((blocks[n // bm:] == -1).all() and (s[n:] == t * k).all())
    out["align_layout_wrong"] = 0.0 if layout_ok else 1.0
    for t, e, k, h, i in [(3, 8, 2, 64, 48), (20, 16, 4, 32, 40)]:
        cfg = MoEConfig(e, h, i, RoutingConfig(top_k=k))
        w13, w2 = torch.randn(e, 2 * i, h) / h ** 0.5, torch.randn(e, h, i) / i ** 0.5
        x = torch.randn(t, h)
        tw, ti = route(torch.randn(t, e), cfg.routing)
        for form, c in [("gemv", {"path": "gemv", "BLOCK_N": 16, "BLOCK_K": 32, "BLOCK_N2": 16, "BLOCK_K2": 16}),
                        ("gemv_split", {"path": "gemv", "BLOCK_N": 16, "BLOCK_K": 32, "BLOCK_N2": 16, "BLOCK_K2": 16,
                                        "SPLIT2": True}),
                        ("gemv_atomic", {"path": "gemv", "BLOCK_N": 16, "BLOCK_K": 32, "BLOCK_N2": 16, "BLOCK_K2": 16,
                                         "SPLIT2": True, "ATOMIC2": True}),
                        ("gemm", {"path": "gemm", "BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2})]:
            n = gemv_tokens(t, c)
            ref = TorchNativeMoE(cfg).experts(x[:n], tw[:n], ti[:n], ExpertWeights(w13, w2))
            got = fused_experts(x[:n], w13, w2, tw[:n], ti[:n], c)
            out[f"experts_{form}_T{n}_E{e}"] = ((got - ref).norm() / ref.norm()).item()
    gemv = {"path": "gemv", "BLOCK_N": 16, "BLOCK_K": 32, "BLOCK_N2": 16, "BLOCK_K2": 16}
    for name, r in {"softmax": RoutingConfig(top_k=4), "v3": RoutingConfig(top_k=4, **dict(V3, num_groups=4, topk_groups=2))}.items():
        e, h, i = 16, 32, 24
        w13, w2, x = torch.randn(e, 2 * i, h) / h ** 0.5, torch.randn(e, h, i) / i ** 0.5, torch.randn(3, h)
        logits, bias = torch.randn(3, e), (0.1 * torch.randn(e) if r.correction_bias else None)
        ref = TorchNativeMoE(MoEConfig(e, h, i, r)).forward(x, logits, ExpertWeights(w13, w2), bias)
        for form, extra in {"": {}, "_split": {"SPLIT2": True}, "_atomic": {"SPLIT2": True, "ATOMIC2": True}}.items():
            got = fused_moe_gemv(x, logits, r, bias, w13, w2, {**gemv, **extra})
            out[f"routed_gemv_{name}{form}"] = ((got - ref).norm() / ref.norm()).item()

    from jackfield_plugins.quant import fp8_numerics as fp8
    for t, e, k, h, i, block in [(3, 8, 2, 72, 32, (16, 32)), (20, 16, 4, 64, 48, (16, 16))]:
        r = RoutingConfig(top_k=k)
        w13, w2 = torch.randn(e, 2 * i, h) / h ** 0.5, torch.randn(e, h, i) / i ** 0.5
        (q13, s13), (q2, s2) = [map(torch.stack, zip(*[fp8.quantize_blockwise(m, block) for m in w])) for w in (w13, w2)]
        w = ExpertWeights(q13, q2, "fp8_block", s13, s2, block)
        x, logits = torch.randn(t, h), torch.randn(t, e)
        tw, ti = route(logits, r)
        for form, c in [("gemv", {"path": "gemv", "BLOCK_N": 16, "BLOCK_K": 64, "BLOCK_N2": 16, "BLOCK_K2": 32,
                                  "SPLIT2": True, "ATOMIC2": True}),
                        ("gemm", {"path": "gemm", "BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2})]:
            n = gemv_tokens(t, c)
            ref = TorchNativeMoE(MoEConfig(e, h, i, r)).experts(x[:n], tw[:n], ti[:n], w)
            got = fused_experts(x[:n], q13, q2, tw[:n], ti[:n], c, (s13, s2, block))
            out[f"fp8_{form}_T{n}"] = ((got - ref).norm() / ref.norm()).item()
        n = gemv_tokens(t, gemv)
        got = fused_moe_gemv(x[:n], logits[:n], r, None, q13, q2, {**gemv, "SPLIT2": False}, (s13, s2, block))
        ref = TorchNativeMoE(MoEConfig(e, h, i, r)).forward(x[:n], logits[:n], w)
        out[f"fp8_routed_gemv_T{n}"] = ((got - ref).norm() / ref.norm()).item()

    class CPUTritonMoE(TritonMoE):
        name = "triton_interpreted"
        capabilities = Capabilities(devices=("cpu",), dtypes=("float32",), features=frozenset({"silu"}))

        @classmethod
        def availability(cls):
            return Availability.yes()

    target = KitTarget("moe", CPUTritonMoE, "cpu")
    wanted = [c for c in suite.checks(target) if c.run in (suite._grouped, suite._idle_experts, suite._select)]
    report = run_checks(target, wanted)
    out["kit_failures"] = [f"{r.behaviour}: {r.detail}" for r in report.failures()]
    print("RESULT" + json.dumps(out))
""")


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")), None)
    assert line, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(line[len("RESULT"):])


def test_fused_routing_matches_the_reference(results):
    for name, err in results.items():
        if name.startswith("routing_"):
            assert err < 1e-5, (name, err)


def test_align_lays_out_every_pair_once_per_expert_block(results):
    assert results["align_layout_wrong"] == 0.0


def test_both_expert_forms_match_torch_native(results):
    errs = {k: v for k, v in results.items() if k.startswith("experts_")}
    assert len(errs) == 8 and all(v < 1e-5 for v in errs.values()), errs


def test_gemv_with_routing_fused_matches_torch_native(results):
    errs = {k: v for k, v in results.items() if k.startswith("routed_gemv_")}
    assert len(errs) == 6 and all(v < 1e-5 for v in errs.values()), errs


def test_fp8_block_experts_match_the_dequantized_reference(results):
    """Block-wise FP8 experts (partial edge blocks in K) dequantized in registers by the GEMV, the
    grouped GEMM and the routed GEMV, against torch_native on the dequantized weights."""
    errs = {k: v for k, v in results.items() if k.startswith("fp8_")}
    assert len(errs) == 6 and all(v < 1e-5 for v in errs.values()), errs


def test_kit_routing_grouped_and_idle_expert_checks(results):
    assert results["kit_failures"] == []
