"""The attention suite: numerics against the float32 reference over the shapes a model produces.

Every case builds a paged KV pool with scattered pages and cached prefixes (`AttnProblem`),
constructs the backend on it, runs an EXTEND (or MIXED) forward and then a DECODE forward through
`AttentionBackend.forward` (so K/V are stored the way the model stores them), and compares each
output with `jackfield.sdk.reference` (relative Frobenius error within the dtype's tolerance).
Every output must also have q's shape and dtype, be finite, and leave q untouched; the new K/V must
be in the pool at `out_cache_loc` afterwards (backends that keep K/V in the pool, the default).

Shape cases run in float32 when the backend declares it (else its first declared dtype); one case
runs in every declared dtype. Sliding-window, logit-cap and mixed cases run when the backend
declares them; CUDA-graph capture/replay runs on CUDA when `supports_cuda_graph` is set. A backend
declaring "spec_verify" must implement `forward_verify`, and its verify forward over draft trees
(chains, branches, a lone root; with a sliding window when declared) must match the reference.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from jackfield.sdk import ForwardBatch, ForwardMode
from jackfield.testing.attn_problem import AttnProblem, relative_error, row_strided
from jackfield.testing.kit import Check, KitTarget, expect
from jackfield.testing.suites.common import base_dtype, cannot_serve, runs_on_device

TOLERANCE = {"float32": 5e-4, "float16": 5e-3, "bfloat16": 3e-2}


@dataclass(frozen=True)
class Case:
    what: str
    prefix_lens: tuple[int, ...]
    new_lens: tuple[int, ...]
    num_heads: int
    num_kv_heads: int
    head_dim: int
    page_size: int
    layer: dict = field(default_factory=dict)  # AttentionLayerInfo extras: sliding_window, logit_cap

    def describe(self) -> str:
        return (f"{self.num_heads} q / {self.num_kv_heads} kv heads, head_dim {self.head_dim}, page {self.page_size}, "
                f"prefixes {list(self.prefix_lens)}, new tokens {list(self.new_lens)}"
                + "".join(f", {k} {v}" for k, v in self.layer.items()))


SHAPES = [
    Case("MHA, head_dim 64, page 1, no cached prefix", (0, 0, 0), (5, 9, 1), 4, 4, 64, 1),
    Case("GQA 2:1, head_dim 128, page 16, prefixes 7 and 33", (7, 33, 0), (12, 3, 17), 4, 2, 128, 16),
    Case("GQA 4:1, head_dim 64, page 4, prefixes not page-aligned", (13, 2, 30), (6, 17, 1), 8, 2, 64, 4),
    Case("MQA 8:1, head_dim 128, page 1, long prefix", (70, 5), (4, 9), 8, 1, 128, 1),
]
STRIDED = Case("GQA 2:1, head_dim 64, page 4", (9, 0), (7, 12), 4, 2, 64, 4)
MIXED = Case("prefill chunks beside one-token decodes", (0, 20, 9), (11, 1, 1), 4, 2, 64, 4)
WINDOW = Case("GQA 2:1, head_dim 64, page 2", (40, 3), (30, 25), 4, 2, 64, 2, {"sliding_window": 9})
LOGIT_CAP = Case("MHA, head_dim 64, page 1", (20, 0), (10, 6), 4, 4, 64, 1, {"logit_cap": 0.5, "scaling": 1.7})
DTYPE_CASE = Case("GQA 4:1, head_dim 128, page 16", (21, 0), (6, 14), 8, 2, 128, 16)


VERIFY_TREES = ([-1, 0, 0, 1, 1, 2, 4, 6], [-1, 0, 1, 2], [-1])  # node j's parent; -1: the root
VERIFY = Case("GQA 4:1, head_dim 128, page 4, draft trees", (37, 60, 5), tuple(map(len, VERIFY_TREES)), 8, 2, 128, 4)


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def _check_forward(t: KitTarget, p: AttnProblem, backend, layer, fb: ForwardBatch, q, k, v, what: str,
                   strided: bool, dtype: str) -> None:
    backend.init_forward_metadata(fb)
    q_in = row_strided(q) if strided else q
    q_before = q_in.clone()
    out = backend.forward(q_in, k, v, layer, fb)
    expect(isinstance(out, torch.Tensor), f"{what}: forward returned {type(out).__name__}, not a tensor")
    expect(tuple(out.shape) == tuple(q.shape), f"{what}: output shape {tuple(out.shape)}, expected q's {tuple(q.shape)}")
    expect(out.dtype == q.dtype, f"{what}: output dtype {out.dtype}, expected q's {q.dtype}")
    expect(torch.equal(q_in, q_before) or (strided and torch.equal(q_in.nan_to_num(), q_before.nan_to_num())),
           f"{what}: forward modified q in place")
    expect(bool(torch.isfinite(out).all()), f"{what}: output has NaN or inf"
           + (" (does the kernel ignore q's row stride?)" if strided else ""))
    if t.cls.kv_stored_by_pool:
        loc = fb.out_cache_loc.long()
        shape = (-1, p.num_kv_heads, p.head_dim)
        stored = (torch.equal(p.pool.k_buffer(0)[loc], k.reshape(shape).to(p.dtype))
                  and torch.equal(p.pool.v_buffer(0)[loc], v.reshape(shape).to(p.dtype)))
        expect(stored, f"{what}: the new K/V are not in the pool at out_cache_loc after forward "
                       "(kv_stored_by_pool = True promises the layout KVPool.set_kv writes)")
    err, tol = relative_error(out, p.reference(q, fb, layer)), TOLERANCE[dtype]
    expect(err <= tol, f"{what}: output differs from the float32 reference: relative error {err:.2e} > {tol:.0e}")


@torch.inference_mode()
def run_case(t: KitTarget, case: Case, dtype: str, mode: ForwardMode = ForwardMode.EXTEND, strided: bool = False,
             seed: int = 0) -> None:
    """One case: an EXTEND (or MIXED) forward, then a DECODE forward of every request's last token."""
    p = AttnProblem(list(case.prefix_lens), list(case.new_lens), case.num_heads, case.num_kv_heads, case.head_dim,
                    case.page_size, _dtype(dtype), t.device, seed=seed)
    backend, layer = t.cls(p.runtime()), p.layer(**case.layer)
    first = "mixed" if mode == ForwardMode.MIXED else "extend"
    where = f"({case.describe()}, {dtype})"
    _check_forward(t, p, backend, layer, *p.extend_batch(backend, mode), f"{first} {where}", strided, dtype)
    _check_forward(t, p, backend, layer, *p.decode_batch(backend), f"decode {where}", strided, dtype)


def _needs_pool_layout(t: KitTarget, dtype: str | None = None, **context) -> str | None:
    why = runs_on_device(t)
    if why:
        return why
    if not t.cls.kv_stored_by_pool:
        return ("stores K/V in its own layout (kv_stored_by_pool = False); the kit's numerics cases seed the "
                "cached prefix through KVPool.set_kv and cover backends that keep the pool's layout")
    return cannot_serve(t, dtype or base_dtype(t), **context)


def _feature(name: str):
    def requires(t: KitTarget) -> str | None:
        if name not in t.cls.capabilities.features:
            return f"does not declare the '{name}' feature"
        return _needs_pool_layout(t, required_features=frozenset({name}))
    return requires


def _verify_declared(t: KitTarget) -> None:
    from jackfield.sdk import AttentionBackend

    declared = "spec_verify" in t.cls.capabilities.features
    expect(not declared or t.cls.forward_verify is not AttentionBackend.forward_verify,
           "declares the 'spec_verify' feature but does not implement forward_verify")


@torch.inference_mode()
def verify_matches_reference(t: KitTarget) -> None:
    """Draft trees after cached prefixes: each node attends to the prefix and its own tree path."""
    dtype = base_dtype(t)
    windows = [None, 9] if "sliding_window" in t.cls.capabilities.features else [None]
    c = VERIFY
    for window in windows:
        p = AttnProblem(list(c.prefix_lens), list(c.new_lens), c.num_heads, c.num_kv_heads, c.head_dim, c.page_size,
                        _dtype(dtype), t.device, seed=17)
        backend, layer = t.cls(p.runtime()), p.layer(sliding_window=window)
        fb, q, k, v = p.verify_batch(backend, [list(tree) for tree in VERIFY_TREES])
        backend.init_forward_metadata(fb)
        out = backend.forward(q, k, v, layer, fb)
        what = f"verify ({c.describe()}, sliding window {window}, {dtype})"
        expect(tuple(out.shape) == tuple(q.shape), f"{what}: output shape {tuple(out.shape)}, expected {q.shape}")
        ref = p.tree_reference(q, fb, layer, [list(x) for x in VERIFY_TREES])
        err, tol = relative_error(out, ref), TOLERANCE[dtype]
        expect(err <= tol, f"{what}: output differs from the float32 tree reference: relative error {err:.2e} "
                           f"> {tol:.0e}")


def _mixed(t: KitTarget) -> str | None:
    return "supports_mixed = False" if not t.cls.supports_mixed else _needs_pool_layout(t)


def _cuda_graph_applies(t: KitTarget) -> str | None:
    if not t.cls.supports_cuda_graph:
        return "does not claim CUDA-graph support (supports_cuda_graph = False)"
    if t.device != "cuda":
        return "CUDA-graph capture needs --device cuda"
    return _needs_pool_layout(t)


def checks(target: KitTarget) -> list[Check]:
    if getattr(target.cls, "kv_layout_kind", "per_head") == "latent":  # MLA backends: their own suite
        from jackfield.testing.suites import attention_mla

        return attention_mla.checks(target)
    dtype = base_dtype(target)
    out = [Check(f"extend then decode match the reference: {c.what}",
                 lambda t, c=c, i=i: run_case(t, c, base_dtype(t), seed=i), _needs_pool_layout)
           for i, c in enumerate(SHAPES)]
    out.append(Check(f"extend then decode with a row-strided q (a view of the fused qkv output): {STRIDED.what}",
                     lambda t: run_case(t, STRIDED, base_dtype(t), strided=True, seed=11), _needs_pool_layout))
    out.append(Check(f"mixed batch matches the reference: {MIXED.what}",
                     lambda t: run_case(t, MIXED, base_dtype(t), mode=ForwardMode.MIXED, seed=12), _mixed))
    out.append(Check("sliding window (declared feature 'sliding_window') matches the reference",
                     lambda t: run_case(t, WINDOW, base_dtype(t), seed=13), _feature("sliding_window")))
    out.append(Check("logit soft-cap (declared feature 'logit_cap') matches the reference",
                     lambda t: run_case(t, LOGIT_CAP, base_dtype(t), seed=14), _feature("logit_cap")))
    for name in target.cls.capabilities.dtypes:
        if name != dtype:
            out.append(Check(f"declared dtype {name}: extend then decode match the reference ({DTYPE_CASE.what})",
                             lambda t, name=name: run_case(t, DTYPE_CASE, name, seed=15),
                             lambda t, name=name: _needs_pool_layout(t, name)))
    out.append(Check("declares the 'spec_verify' feature only with a forward_verify implementation", _verify_declared))
    out.append(Check("speculative verify (declared feature 'spec_verify'): draft trees match the reference",
                     verify_matches_reference, _feature("spec_verify")))
    out.append(Check("decode under CUDA-graph capture and replay (padded batch) matches the reference",
                     cuda_graph_replay, _cuda_graph_applies))
    return out


@torch.inference_mode()
def cuda_graph_replay(t: KitTarget) -> None:
    """Capture one decode forward at batch size 4 with the backend's capture hook, then replay it
    twice for a live batch of 3 (padded to 4) at different sequence lengths, updating metadata
    through `init_forward_metadata_replay`; every replay must match the reference."""
    dtypes = [d for d in t.cls.capabilities.dtypes if cannot_serve(t, d) is None] or list(t.cls.capabilities.dtypes)
    dtype = next((d for d in ("bfloat16", "float16") if d in dtypes), dtypes[0])
    p = AttnProblem([5, 30, 17], [3, 1, 6], 8, 2, 128, 16, _dtype(dtype), "cuda", seed=21)
    bs, live, dev = 4, 3, torch.device("cuda")
    backend, layer = t.cls(p.runtime(max_batch_size=bs)), p.layer()
    backend.init_cuda_graph_state(bs, bs)
    fill = backend.cuda_graph_seq_len_fill_value()
    static = {"input_ids": torch.zeros(bs, dtype=torch.int64, device=dev),
              "positions": torch.zeros(bs, dtype=torch.int64, device=dev),
              "req_pool_indices": torch.zeros(bs, dtype=torch.int64, device=dev),
              "seq_lens": torch.full((bs,), fill, dtype=torch.int32, device=dev),
              "out_cache_loc": torch.zeros(bs, dtype=torch.int64, device=dev)}
    width, kv_width = p.num_heads * p.head_dim, p.num_kv_heads * p.head_dim
    q_s = torch.zeros(bs, width, dtype=p.dtype, device=dev)
    k_s, v_s = (torch.zeros(bs, kv_width, dtype=p.dtype, device=dev) for _ in range(2))

    def static_batch(seq_cpu: tuple[int, ...]) -> ForwardBatch:
        return ForwardBatch(mode=ForwardMode.DECODE, batch_size=bs, req_to_token=p.req_to_token, kv_pool=p.pool,
                            attn_backend=backend, seq_lens_cpu=seq_cpu, **static)

    fb = static_batch((fill,) * bs)
    backend.init_forward_metadata_capture(fb)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            backend.forward(q_s, k_s, v_s, layer, fb)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        out_s = backend.forward(q_s, k_s, v_s, layer, fb)
    for step, seq_lens in enumerate(([8, 31, 23], [6, 25, 12])):
        live_fb, q, k, v = p.decode_batch(backend, seq_lens=seq_lens)
        for name, buf in static.items():
            buf[live:].fill_(fill if name == "seq_lens" else 0)
            buf[:live].copy_(getattr(live_fb, name))
        q_s.zero_(), k_s.zero_(), v_s.zero_()
        q_s[:live].copy_(q), k_s[:live].copy_(k), v_s[:live].copy_(v)
        backend.init_forward_metadata_replay(static_batch(tuple(seq_lens) + (fill,)))
        graph.replay()
        torch.cuda.synchronize()
        out = out_s[:live]
        expect(bool(torch.isfinite(out).all()), f"replay {step + 1}: output has NaN or inf")
        err, tol = relative_error(out, p.reference(q, live_fb, layer)), TOLERANCE[dtype]
        expect(err <= tol, f"replay {step + 1} (seq_lens {seq_lens}, {dtype}): output differs from the float32 "
                           f"reference: relative error {err:.2e} > {tol:.0e} (is metadata written into the static "
                           "buffers captured kernels read, not into new tensors?)")
