"""The attention suite of backends that read the latent KV layout (`kv_layout_kind == "latent"`, MLA).

The attention suite hands such a backend to `checks(target)` here (per-head checks do not apply to it).
Each check builds a latent pool with scattered pages and shuffled request rows, random cached
latents, and compares against a float32 reference written here: every head's absorbed query
[q_lat | q_pe] attends causally over the request's latents c = [c_kv | k_pe], values c_kv.
Behaviours: the stored latent and the value view; decode (page sizes 1 and 16, lengths with and
without host copies); extends over cached prefixes, with new requests and decode rows alongside;
decode with CUDA-graph metadata on a batch padded with dummy rows; the expanded ragged prefill
where the backend declares it. Shapes: DeepSeek's real latent (512 + 64, 16 heads) on CUDA, a small
one (64 + 16, 8 heads) on CPU. Tolerance: 1e-4 relative error in float32, 2e-2 in half types.
"""
from __future__ import annotations

import math

import torch

from jackfield.sdk.attention import AttentionLayerInfo, AttentionRuntime
from jackfield.sdk.forward_batch import ForwardBatch, ForwardMode
from jackfield.sdk.kv_cache import KVLayout, KVPool
from jackfield.testing.kit import Check, KitTarget, expect
from jackfield.testing.suites.common import runs_on_device

TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 2e-2}


class LatentProblem:
    """Requests with `prefix[i]` cached latents and room for `new[i]` more, in a one-layer pool."""

    def __init__(self, target: KitTarget, prefix: list[int], new: list[int], page_size: int, seed: int):
        self.device = torch.device(target.device)
        self.dtype = torch.float32 if target.device == "cpu" else torch.bfloat16
        self.heads, self.lora, self.rope = (8, 64, 16) if target.device == "cpu" else (16, 512, 64)
        self.prefix, self.new, self.page = list(prefix), list(new), page_size
        self.gen = torch.Generator().manual_seed(seed)
        totals = [p + n for p, n in zip(prefix, new)]
        pages = [math.ceil(t / page_size) for t in totals]
        num_pages = sum(pages) + 3
        self.max_len = max(totals) + page_size
        self.pool = KVPool(num_pages, page_size, 1, 1, self.lora + self.rope, self.dtype, self.device,
                           layout=KVLayout.latent(self.lora + self.rope, self.lora))
        bs = len(totals)
        self.table = torch.zeros(bs + 2, self.max_len, dtype=torch.int32)
        self.rows = (torch.randperm(bs + 1, generator=self.gen)[:bs] + 1).tolist()  # row 0: padding rows
        free = (torch.randperm(num_pages, generator=self.gen) + 1).tolist()
        self.slots = []
        for row, total, n in zip(self.rows, totals, pages):
            page_ids = torch.tensor([free.pop() for _ in range(n)])
            slots = (page_ids[:, None] * page_size + torch.arange(page_size)).flatten()[:total]
            self.table[row, :total] = slots.to(torch.int32)
            self.slots.append(slots)
        self.table = self.table.to(self.device)
        for slots, p in zip(self.slots, prefix):
            if p:
                self.pool.set_kv(0, slots[:p].to(self.device), self.randn(p, self.lora + self.rope), None)

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen).to(self.dtype).to(self.device)

    def runtime(self, max_bs: int | None = None) -> AttentionRuntime:
        return AttentionRuntime(1, self.heads, 1, self.lora + self.rope, self.dtype, self.device, self.page,
                                self.pool, self.table, max_bs or len(self.rows), self.max_len)

    def layer(self) -> AttentionLayerInfo:
        return AttentionLayerInfo(0, self.heads, 1, self.lora + self.rope, scaling=0.7 / math.sqrt(self.lora),
                                  v_head_dim=self.lora)

    def _t(self, values, dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=self.device)

    def extend_batch(self, backend) -> tuple[ForwardBatch, torch.Tensor, torch.Tensor]:
        seq = [p + n for p, n in zip(self.prefix, self.new)]
        starts = [sum(self.new[:i]) for i in range(len(self.new))]
        loc = torch.cat([s[p:t] for s, p, t in zip(self.slots, self.prefix, seq)]).to(self.device)
        mode = ForwardMode.EXTEND if any(n > 1 for n in self.new) or not any(self.prefix) else ForwardMode.MIXED
        fb = ForwardBatch(mode=mode, batch_size=len(self.rows), input_ids=torch.zeros_like(loc),
                          positions=torch.cat([torch.arange(p, t) for p, t in zip(self.prefix, seq)]).to(self.device),
                          req_pool_indices=self._t(self.rows, torch.int64), seq_lens=self._t(seq, torch.int32),
                          out_cache_loc=loc, req_to_token=self.table, kv_pool=self.pool, attn_backend=backend,
                          seq_lens_cpu=tuple(seq), extend_prefix_lens=self._t(self.prefix, torch.int32),
                          extend_seq_lens=self._t(self.new, torch.int32), extend_start_loc=self._t(starts, torch.int32),
                          extend_prefix_lens_cpu=tuple(self.prefix), extend_seq_lens_cpu=tuple(self.new))
        n = len(loc)
        return fb, self.randn(n, self.heads * (self.lora + self.rope)), self.randn(n, self.lora + self.rope)

    def decode_batch(self, backend, with_cpu_lens: bool = True, pad_to: int = 0):
        seq = [p + n for p, n in zip(self.prefix, self.new)]
        loc = torch.stack([s[t - 1] for s, t in zip(self.slots, seq)]).to(self.device)
        rows, lens = list(self.rows), list(seq)
        extra = max(0, pad_to - len(rows))
        rows, lens = rows + [0] * extra, lens + [1] * extra  # padded rows: request row 0, slot 0, one key
        loc = torch.cat([loc, torch.zeros(extra, dtype=loc.dtype, device=self.device)])
        fb = ForwardBatch(mode=ForwardMode.DECODE, batch_size=len(rows), input_ids=torch.zeros_like(loc),
                          positions=self._t([t - 1 for t in lens], torch.int64),
                          req_pool_indices=self._t(rows, torch.int64), seq_lens=self._t(lens, torch.int32),
                          out_cache_loc=loc, req_to_token=self.table, kv_pool=self.pool, attn_backend=backend,
                          seq_lens_cpu=tuple(lens) if with_cpu_lens else ())
        return fb, self.randn(len(rows), self.heads * (self.lora + self.rope)), self.randn(len(rows), self.lora + self.rope)

    def reference(self, q: torch.Tensor, fb: ForwardBatch, rows: int | None = None) -> torch.Tensor:
        """float32 absorbed attention of q's rows over the latents now in the pool."""
        layer, kv = self.layer(), self.pool.k_buffer(0)[:, 0].float()
        new = [1] * len(self.rows) if fb.mode.is_decode() else list(self.new)
        seq = [p + n for p, n in zip(self.prefix, self.new)]
        out, start = [], 0
        for i, (t, n) in enumerate(zip(seq, new)):
            c = kv[self.table[self.rows[i], :t].long()]                                      # [t, D]
            qi = q[start:start + n].float().view(n, self.heads, -1)                            # [n, H, D]
            scores = torch.einsum("nhd,td->hnt", qi, c) * layer.scaling
            visible = torch.arange(t, device=q.device)[None, :] <= torch.arange(t - n, t, device=q.device)[:, None]
            p = scores.masked_fill(~visible, float("-inf")).softmax(-1)
            out.append(torch.einsum("hnt,td->nhd", p, c[:, :self.lora]).reshape(n, -1))
            start += n
        return torch.cat(out)


def _err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref).norm() / ref.norm().clamp_min(1e-12))


def _expect_close(out, ref, dtype, what: str) -> None:
    expect(tuple(out.shape) == tuple(ref.shape), f"{what}: output shape {tuple(out.shape)}, expected {tuple(ref.shape)}")
    err = _err(out, ref)
    expect(err < TOLERANCE[dtype], f"{what}: relative error {err:.2e} vs the float32 reference "
                                   f"(tolerance {TOLERANCE[dtype]:.0e})")


def _stores(target: KitTarget) -> None:
    p = LatentProblem(target, [5, 0], [3, 4], 4, seed=1)
    backend = target.cls(p.runtime())
    fb, q, latent = p.extend_batch(backend)
    backend.init_forward_metadata(fb)
    backend.forward(q, latent, None, p.layer(), fb)
    stored = p.pool.k_buffer(0)[fb.out_cache_loc][:, 0]
    expect(torch.equal(stored, latent), "forward(save_kv=True) did not store the new latents at out_cache_loc")
    expect(torch.equal(p.pool.v_buffer(0)[fb.out_cache_loc][:, 0], latent[:, :p.lora]),
           "the pool's value view is not the latent's first kv_lora_rank columns")


def _decode(target: KitTarget) -> None:
    for page, lens, host in ((1, [7, 300, 33], True), (16, [1, 129, 64, 5], True), (16, [40, 2], False)):
        p = LatentProblem(target, [n - 1 for n in lens], [1] * len(lens), page, seed=sum(lens))
        backend = target.cls(p.runtime())
        fb, q, latent = p.decode_batch(backend, with_cpu_lens=host)
        backend.init_forward_metadata(fb)
        out = backend.forward(q, latent, None, p.layer(), fb)
        _expect_close(out, p.reference(q, fb), p.dtype, f"decode, page {page}, lengths {lens}"
                      + ("" if host else ", no host lengths"))


def _extend(target: KitTarget) -> None:
    for page, prefix, new in ((1, [0, 9, 40], [6, 3, 17]), (16, [70, 0], [33, 20]), (4, [10, 25, 3], [1, 1, 1])):
        p = LatentProblem(target, prefix, new, page, seed=sum(prefix) + sum(new))
        backend = target.cls(p.runtime())
        fb, q, latent = p.extend_batch(backend)
        backend.init_forward_metadata(fb)
        out = backend.forward(q, latent, None, p.layer(), fb)
        _expect_close(out, p.reference(q, fb), p.dtype, f"{fb.mode.name.lower()} over prefixes {prefix}, "
                                                        f"new {new}, page {page}")


def _graph_decode(target: KitTarget) -> None:
    p = LatentProblem(target, [20, 200, 3], [1, 1, 1], 16, seed=7)
    backend = target.cls(p.runtime(max_bs=8))
    backend.init_cuda_graph_state(8, 8)
    fb, q, latent = p.decode_batch(backend, pad_to=8)
    backend.init_forward_metadata_replay(fb)
    out = backend.forward(q, latent, None, p.layer(), fb)
    _expect_close(out[:3], p.reference(q[:3], fb), p.dtype, "decode with CUDA-graph metadata, padded to 8 rows")


def _ragged(target: KitTarget) -> None:
    p = LatentProblem(target, [0, 0, 0], [5, 37, 12], 1, seed=9)
    backend = target.cls(p.runtime())
    fb, _, _ = p.extend_batch(backend)
    backend.init_forward_metadata(fb)
    heads, dqk, dv, n = p.heads, 24, 16, sum(p.new)
    q, k, v = p.randn(n, heads * dqk), p.randn(n, heads * dqk), p.randn(n, heads * dv)
    layer = AttentionLayerInfo(0, heads, heads, dqk, scaling=dqk ** -0.5, v_head_dim=dv)
    out = backend.forward_ragged(q, k, v, layer, fb)
    ref, start = [], 0
    for ext in p.new:
        qi, ki, vi = (x[start:start + ext].float().view(ext, heads, -1).transpose(0, 1) for x in (q, k, v))
        scores = (qi @ ki.transpose(1, 2)) * layer.scaling
        scores = scores.masked_fill(torch.ones(ext, ext, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
        ref.append((scores.softmax(-1) @ vi).transpose(0, 1).reshape(ext, -1))
        start += ext
    _expect_close(out, torch.cat(ref), p.dtype, f"ragged prefill of new tokens {p.new}")


def _needs_graphs(target: KitTarget) -> str | None:
    return runs_on_device(target) or (None if target.cls.supports_cuda_graph else "declares no CUDA-graph support")


def _needs_ragged(target: KitTarget) -> str | None:
    return runs_on_device(target) or (None if target.cls.supports_ragged_prefill else "declares no ragged prefill")


def checks(target: KitTarget) -> list[Check]:
    return [
        Check("stores the new latents; values are the latent's first kv_lora_rank columns", _stores, runs_on_device),
        Check("latent decode matches the float32 reference (pages 1 and 16, with and without host lengths)",
              _decode, runs_on_device),
        Check("latent extend over cached prefixes (new requests and decode rows alongside)", _extend,
              runs_on_device),
        Check("decode with CUDA-graph metadata on a padded batch", _graph_decode, _needs_graphs),
        Check("ragged (expanded) causal prefill of new tokens", _ragged, _needs_ragged),
    ]
