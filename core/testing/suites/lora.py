"""The LoRA suite: `apply` adds exactly the unmerged update scaling * (x A^T) B^T of each token's slot.

Layers are built the way the core's adapter pool builds them (`LoRAWeights`: A and B padded to
max_rank with zeros, per-slot per-slice ranks, slices of a fused layer), filled with random adapters
of several ranks, and batches come from `jackfield.sdk.lora_batch`, as the core makes them. Every
result is compared with `jackfield.sdk.reference.lora` (float32, token by token): single adapters
over ranks, a fused qkv layer with only some slices adapted, prefill batches mixing adapters and
base-model requests, decode batches (grouped by slot in tiles where the backend's `decode_tile` asks
for them), per-slot scaling, and, for a backend that declares `supports_cuda_graph`, decode replayed
in a CUDA graph with new slots (`LoRAGraphSlots`, as the core captures them).
"""
from __future__ import annotations

import math

import torch

from jackfield.sdk import LoRARuntime, LoRAWeights, ModelConfig, lora_batch
from jackfield.sdk.reference import lora as reference_lora
from jackfield.testing.kit import Check, KitTarget, expect
from jackfield.testing.suites.common import base_dtype, cannot_serve, runs_on_device

MAX_LORAS, MAX_RANK, IN_FEATURES = 4, 16, 544  # 544: K in several chunks, the last partial
QKV = ((0, 64), (64, 32), (96, 32))   # a fused layer: q, k, v output columns
SINGLE = ((0, 72),)                    # an o_proj-like layer (72: not a multiple of 64)
TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 3e-2}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def kit_runtime(dtype: torch.dtype, device: str) -> LoRARuntime:
    config = ModelConfig.from_hf({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 256,
                                  "hidden_size": IN_FEATURES, "intermediate_size": 192, "num_hidden_layers": 2,
                                  "num_attention_heads": 4, "num_key_value_heads": 2})
    return LoRARuntime(config, MAX_LORAS, MAX_RANK, MAX_LORAS, dtype, torch.device(device))


def make_weights(slices, ranks: list[list[int]], dtype: torch.dtype, device: str, seed: int) -> LoRAWeights:
    """A layer whose slot s holds a random adapter of rank ranks[s][j] on slice j (0: slice not
    adapted), zero past each rank, as the core's pool writes them."""
    n, out_f = len(slices), sum(size for _, size in slices)
    g = _gen(seed)
    a = torch.zeros(MAX_LORAS, n * MAX_RANK, IN_FEATURES)
    b = torch.zeros(MAX_LORAS, out_f, MAX_RANK)
    for s, slot_ranks in enumerate(ranks):
        for j, ((offset, size), r) in enumerate(zip(slices, slot_ranks)):
            a[s, j * MAX_RANK:j * MAX_RANK + r] = torch.randn(r, IN_FEATURES, generator=g) / math.sqrt(IN_FEATURES)
            b[s, offset:offset + size, :r] = torch.randn(size, r, generator=g) / math.sqrt(max(r, 1))
    return LoRAWeights(a=a.to(dtype).to(device), b=b.to(dtype).to(device),
                       ranks=torch.tensor(ranks, dtype=torch.int32, device=device), slices=tuple(slices),
                       max_rank=MAX_RANK, name="kit.layer")


def _scalings(device: str, seed: int = 7) -> torch.Tensor:
    # lora_alpha / r for a few (alpha, r) pairs, and one rsLoRA alpha / sqrt(r)
    return torch.tensor([32 / 16, 16 / 8, 1.0, 8 / math.sqrt(4)], dtype=torch.float32, device=device)


def _run(t: KitTarget, dtype: str, weights: LoRAWeights, lens: list[int], slots: list[int], decode: bool,
         what: str, scalings: torch.Tensor | None = None) -> None:
    dt = getattr(torch, dtype)
    backend = t.cls(kit_runtime(dt, t.device))
    scalings = _scalings(t.device) if scalings is None else scalings
    tokens = sum(lens)
    batch = lora_batch(lens, slots, scalings, decode=decode, tile=backend.decode_tile(tokens) if decode else 0)
    g = _gen(len(what))
    x = torch.randn(tokens, IN_FEATURES, generator=g).to(dt).to(t.device)
    out_f = sum(size for _, size in weights.slices)
    base = torch.randn(tokens, out_f, generator=g).to(dt).to(t.device)
    ref = reference_lora(x, base, weights, batch.token_slots.cpu(), scalings.cpu())
    backend.prepare(batch)
    got = backend.apply(weights, x, base.clone())
    _compare(got, ref, base, dtype, what)


def _compare(got, ref: torch.Tensor, base: torch.Tensor, dtype: str, what: str) -> None:
    expect(isinstance(got, torch.Tensor) and tuple(got.shape) == tuple(ref.shape),
           f"{what}: output shape {tuple(getattr(got, 'shape', ()))}, expected {tuple(ref.shape)}")
    expect(got.dtype == base.dtype, f"{what}: output dtype {got.dtype}, expected the base output's {base.dtype}")
    expect(bool(torch.isfinite(got).all()), f"{what}: output has NaN or inf")
    delta_ref = ref - base.float()
    err = ((got.float() - ref).norm() / delta_ref.norm().clamp_min(1e-6)).item()
    tol = TOLERANCE[dtype]
    expect(err <= tol, f"{what}: error {err:.3g} relative to the update's size exceeds {tol} (vs the unmerged "
                       "float32 reference scaling * (x A^T) B^T)")


def _single_adapter_ranks(t: KitTarget) -> None:
    dtype = base_dtype(t)
    ranks = [[1], [4], [8], [16]]
    w = make_weights(SINGLE, ranks, getattr(torch, dtype), t.device, seed=1)
    for slot, (r,) in enumerate(ranks):
        _run(t, dtype, w, [5], [slot], False, f"one request, rank {r} (slot {slot}), one slice of 72 columns, {dtype}")


def _fused_slices(t: KitTarget) -> None:
    dtype = base_dtype(t)
    ranks = [[8, 0, 8], [16, 16, 16], [0, 4, 0], [0, 0, 0]]
    w = make_weights(QKV, ranks, getattr(torch, dtype), t.device, seed=2)
    for slot, r in enumerate(ranks):
        _run(t, dtype, w, [6], [slot], False, f"qkv layer with slice ranks {r} (slot {slot}), {dtype}")


def _mixed_prefill(t: KitTarget, dtype: str) -> None:
    ranks = [[8, 0, 8], [16, 16, 16], [4, 4, 0], [2, 2, 2]]
    w = make_weights(QKV, ranks, getattr(torch, dtype), t.device, seed=3)
    lens, slots = [7, 1, 70, 3, 3, 1, 33], [0, -1, 1, 3, 3, 2, -1]
    _run(t, dtype, w, lens, slots, False, f"prefill of 7 requests over 4 adapters and the base model, {dtype}")
    lens, slots = [9, 1, 1, 1, 1], [2, 0, -1, 2, 1]  # a mixed forward: a prefill chunk, then decodes
    _run(t, dtype, w, lens, slots, False, f"a prefill chunk followed by 4 length-1 decode rows, {dtype}")


def _decode(t: KitTarget, dtype: str) -> None:
    w = make_weights(QKV, [[8, 0, 8], [16, 16, 16], [4, 4, 0], [1, 1, 1]], getattr(torch, dtype), t.device, seed=4)
    # the last: 40 tokens (a backend may group them by slot; slot 1's 20 fill more than one tile of 16)
    for slots in ([1], [3, -1, 0, 2, 2, 1, -1, 0], [-1] * 3 + [0] * 9, [1] * 20 + [0, -1, 3, 2] * 5):
        _run(t, dtype, w, [1] * len(slots), slots, True, f"decode of {len(slots)} tokens, slots {slots}, {dtype}")


def _prologues(t: KitTarget, dtype: str) -> None:
    """apply_normed / apply_silu_mul: the update on RMSNorm(h) * w and on silu(gate) * up."""
    dt = getattr(torch, dtype)
    w = make_weights(QKV, [[8, 0, 8], [16, 16, 16], [4, 4, 0], [1, 1, 1]], dt, t.device, seed=10)
    scalings = _scalings(t.device)
    many = [(i * 3) % 5 - 1 for i in range(34)]
    for lens, slots, decode in (([1], [1], True), ([1] * 5, [3, -1, 0, 2, 1], True), ([1] * 34, many, True),
                                ([4, 3], [2, -1], False)):
        backend = t.cls(kit_runtime(dt, t.device))
        batch = lora_batch(lens, slots, scalings, decode=decode, tile=backend.decode_tile(sum(lens)) if decode else 0)
        backend.prepare(batch)
        g = _gen(11 + len(lens))
        tokens = sum(lens)
        h = (torch.randn(tokens, IN_FEATURES, generator=g) * 3).to(dt).to(t.device)
        norm_w = (torch.rand(IN_FEATURES, generator=g) + 0.5).to(dt).to(t.device)
        gate_up = torch.randn(tokens, 2 * IN_FEATURES, generator=g).to(dt).to(t.device)
        base = torch.randn(tokens, sum(size for _, size in QKV), generator=g).to(dt).to(t.device)
        hf = h.float()
        normed = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + 1e-5) * norm_w.float()
        gate, up = gate_up.float().chunk(2, dim=-1)
        what = f"{'decode' if decode else 'prefill'} of slots {slots}, {dtype}"
        for name, x, run in (
                ("RMSNorm(h) * w", normed, lambda: backend.apply_normed(w, h, norm_w, 1e-5, base.clone())),
                ("silu(gate) * up", torch.nn.functional.silu(gate) * up,
                 lambda: backend.apply_silu_mul(w, gate_up, base.clone()))):
            ref = reference_lora(x, base, w, batch.token_slots.cpu(), scalings.cpu())
            _compare(run(), ref, base, dtype, f"the update on the input {name}: {what}")


def _base_only(t: KitTarget) -> None:
    dtype = base_dtype(t)
    w = make_weights(SINGLE, [[8]] * MAX_LORAS, getattr(torch, dtype), t.device, seed=5)
    _run(t, dtype, w, [4, 2], [-1, -1], False, f"prefill with only base-model requests, {dtype}")
    _run(t, dtype, w, [1, 1, 1], [-1, -1, -1], True, f"decode with only base-model requests, {dtype}")


def _scaling(t: KitTarget) -> None:
    dtype = base_dtype(t)
    w = make_weights(SINGLE, [[8]] * MAX_LORAS, getattr(torch, dtype), t.device, seed=6)
    for values in ([0.0, 0.5, 4.0, 1 / math.sqrt(8)], [3.0, 0.0, 0.25, 2.0]):
        scalings = torch.tensor(values, dtype=torch.float32, device=t.device)
        _run(t, dtype, w, [3, 2, 4, 1], [0, 1, 2, 3], False, f"per-slot scalings {values}, {dtype}", scalings)
        _run(t, dtype, w, [1, 1, 1, 1], [3, 2, 1, 0], True, f"decode with per-slot scalings {values}, {dtype}",
             scalings)


def _cuda_graph(t: KitTarget) -> None:
    """Capture decode for 6 and for 40 tokens over the static slot buffer the core uses, then replay
    each with other slots (fewer real tokens than the graph's size included)."""
    from jackfield.sdk import LoRAGraphSlots

    dtype = base_dtype(t)
    dt = getattr(torch, dtype)
    w = make_weights(QKV, [[8, 0, 8], [16, 16, 16], [4, 4, 0], [1, 1, 1]], dt, t.device, seed=8)
    backend = t.cls(kit_runtime(dt, t.device))
    scalings = _scalings(t.device)
    static = LoRAGraphSlots(backend, 40, MAX_LORAS, scalings)
    g = _gen(9)
    for n, replays in ((6, ([2, -1, 0, 1, 3, 3], [-1, 1, 1, -1, 0])),
                       (40, ([(i * 7) % 5 - 1 for i in range(40)], [2] * 25 + [0, 1] * 6 + [-1, 3]))):
        x = torch.zeros(n, IN_FEATURES, dtype=dt, device=t.device)
        out_buf = torch.zeros(n, sum(size for _, size in QKV), dtype=dt, device=t.device)
        static.write([-1] * n, n)
        backend.prepare(static.batch(n))
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            backend.apply(w, x, out_buf)  # warm-up (compiles kernels outside the capture)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = backend.apply(w, x, out_buf)
        for new in replays:
            padded = new + [-1] * (n - len(new))
            x.copy_(torch.randn(n, IN_FEATURES, generator=g).to(dt))
            fresh = torch.randn(out_buf.shape, generator=g).to(dt).to(t.device)
            out_buf.copy_(fresh)
            static.write(new, n)
            graph.replay()
            torch.cuda.synchronize()
            ref = reference_lora(x, fresh, w, torch.tensor(padded), scalings.cpu())
            _compare(out, ref, fresh, dtype, f"decode of {n} tokens replayed in a CUDA graph with slots {new}, {dtype}")


def _graph_requires(t: KitTarget) -> str | None:
    why = runs_on_device(t)
    if why:
        return why
    if not t.cls.supports_cuda_graph:
        return f"'{t.name}' does not declare supports_cuda_graph"
    if t.device != "cuda":
        return "CUDA graphs need the cuda device"
    return None


def _runs_in(dtype: str | None = None):
    def requires(t: KitTarget) -> str | None:
        return runs_on_device(t) or cannot_serve(t, dtype or base_dtype(t))
    return requires


def checks(target: KitTarget) -> list[Check]:
    out = [Check("one adapter per request matches the unmerged reference at ranks 1, 4, 8 and 16",
                 _single_adapter_ranks, _runs_in()),
           Check("a fused qkv layer applies each slice's rank and leaves unadapted slices alone", _fused_slices,
                 _runs_in()),
           Check("a batch of base-model requests only leaves the output unchanged", _base_only, _runs_in()),
           Check("each slot's scaling (lora_alpha / r, rsLoRA) multiplies its update", _scaling, _runs_in())]
    for dtype in target.cls.capabilities.dtypes:
        out += [Check(f"prefill and mixed batches over several adapters and the base model match, in {dtype}",
                      lambda t, d=dtype: _mixed_prefill(t, d), _runs_in(dtype)),
                Check(f"decode batches with any slot per token match, in {dtype}",
                      lambda t, d=dtype: _decode(t, d), _runs_in(dtype)),
                Check(f"the update on an RMSNorm or SiLU-and-mul input (apply_normed, apply_silu_mul) matches, "
                      f"in {dtype}", lambda t, d=dtype: _prologues(t, d), _runs_in(dtype))]
    out.append(Check("CUDA-graph capture: decode replays read the new slots", _cuda_graph, _graph_requires))
    return out
