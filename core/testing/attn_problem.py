"""A paged-attention problem built by hand: KV pool, request table, ForwardBatch, and its reference.

An `AttnProblem` owns a KV pool whose requests hold randomly scattered pages (page 0 stays
reserved), a `req_to_token` table with the requests in shuffled rows (row 0 is the padding row of
CUDA-graph batches), and random cached K/V for every request's prefix. `extend_batch` /
`decode_batch` / `verify_batch` (speculative decoding: each request's new tokens are a draft tree)
build the matching ForwardBatch together with the new q/k/v; `reference` / `tree_reference` compute
attention from the pool in float32 (`jackfield.sdk.reference.attention`), request by request; an FP8
pool (`kv_dtype`, with `kv_scales`) is read dequantized.

The attention suite of the kit is built on it, and a backend's own tests can use it directly.
Works on any device.
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch

from jackfield.sdk import AttentionLayerInfo, AttentionRuntime, ForwardBatch, ForwardMode, KVPool
from jackfield.sdk.reference import attention as reference_attention


class AttnProblem:
    """Requests with `prefix_lens[i]` cached tokens and room for `new_lens[i]` more."""

    def __init__(self, prefix_lens: list[int], new_lens: list[int], num_heads: int, num_kv_heads: int,
                 head_dim: int, page_size: int, dtype: torch.dtype, device: str | torch.device, seed: int = 0,
                 spare_pages: int = 3, kv_dtype: torch.dtype | None = None,
                 kv_scales: tuple[float, float] = (1.0, 1.0)):
        self.prefix_lens, self.new_lens = list(prefix_lens), list(new_lens)
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.page_size, self.dtype, self.device = page_size, dtype, torch.device(device)
        self.gen = torch.Generator().manual_seed(seed)
        totals = [p + n for p, n in zip(prefix_lens, new_lens)]
        pages_per_req = [math.ceil(t / page_size) for t in totals]
        num_pages = sum(pages_per_req) + spare_pages
        self.max_context_len = max(totals) + page_size
        self.pool = KVPool(num_pages, page_size, 1, num_kv_heads, head_dim, kv_dtype or dtype, self.device)
        self.pool.set_scales(0, *kv_scales)  # an FP8 pool (kv_dtype) stores K / k_scale, V / v_scale
        bs = len(totals)
        self.req_to_token = torch.zeros(bs + 2, self.max_context_len, dtype=torch.int32)
        self.rows = (torch.randperm(bs + 1, generator=self.gen)[:bs] + 1).tolist()  # row 0 is padding
        free_pages = (torch.randperm(num_pages, generator=self.gen) + 1).tolist()
        self.slots: list[torch.Tensor] = []
        for row, total, npages in zip(self.rows, totals, pages_per_req):
            pages = torch.tensor([free_pages.pop() for _ in range(npages)], dtype=torch.int64)
            slots = (pages[:, None] * page_size + torch.arange(page_size)).flatten()[:total]
            self.req_to_token[row, :total] = slots.to(torch.int32)
            self.slots.append(slots)
        self.req_to_token = self.req_to_token.to(self.device)
        for slots, p in zip(self.slots, prefix_lens):
            if p:
                k, v = self.randn(p, num_kv_heads * head_dim), self.randn(p, num_kv_heads * head_dim)
                self.pool.set_kv(0, slots[:p].to(self.device), k, v)

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen).to(self.dtype).to(self.device)

    def runtime(self, max_batch_size: int | None = None) -> AttentionRuntime:
        return AttentionRuntime(num_layers=1, num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
                                head_dim=self.head_dim, dtype=self.dtype, device=self.device,
                                page_size=self.page_size, kv_pool=self.pool, req_to_token=self.req_to_token,
                                max_batch_size=max_batch_size or len(self.rows), max_context_len=self.max_context_len)

    def layer(self, sliding_window: int | None = None, logit_cap: float = 0.0,
              scaling: float | None = None) -> AttentionLayerInfo:
        return AttentionLayerInfo(layer_id=0, num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
                                  head_dim=self.head_dim, scaling=scaling or self.head_dim ** -0.5,
                                  sliding_window=sliding_window, logit_cap=logit_cap)

    def _tensor(self, values: list[int], dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=self.device)

    def extend_batch(self, backend, mode: ForwardMode = ForwardMode.EXTEND
                     ) -> tuple[ForwardBatch, torch.Tensor, torch.Tensor, torch.Tensor]:
        """An EXTEND batch: every request adds its `new_lens[i]` tokens after its prefix. With
        `mode=ForwardMode.MIXED` the same batch is labelled mixed: requests adding one token are
        then the decodes that ride along with the prefill chunks."""
        seq_lens = [p + n for p, n in zip(self.prefix_lens, self.new_lens)]
        starts = [sum(self.new_lens[:i]) for i in range(len(self.new_lens))]
        loc = torch.cat([s[p:t] for s, p, t in zip(self.slots, self.prefix_lens, seq_lens)])
        positions = torch.cat([torch.arange(p, t) for p, t in zip(self.prefix_lens, seq_lens)])
        fb = ForwardBatch(
            mode=mode, batch_size=len(self.rows),
            input_ids=torch.zeros(len(loc), dtype=torch.int64, device=self.device),
            positions=positions.to(self.device), req_pool_indices=self._tensor(self.rows, torch.int64),
            seq_lens=self._tensor(seq_lens, torch.int32), out_cache_loc=loc.to(self.device),
            req_to_token=self.req_to_token, kv_pool=self.pool, attn_backend=backend,
            seq_lens_cpu=tuple(seq_lens),
            extend_prefix_lens=self._tensor(self.prefix_lens, torch.int32),
            extend_seq_lens=self._tensor(self.new_lens, torch.int32),
            extend_start_loc=self._tensor(starts, torch.int32),
            extend_prefix_lens_cpu=tuple(self.prefix_lens), extend_seq_lens_cpu=tuple(self.new_lens))
        return fb, *self.new_qkv(len(loc))

    def decode_batch(self, backend, seq_lens: list[int] | None = None, with_cpu_lens: bool = True
                     ) -> tuple[ForwardBatch, torch.Tensor, torch.Tensor, torch.Tensor]:
        """A DECODE batch: request i's token at position seq_lens[i]-1 (default: its last slot) is new."""
        seq_lens = seq_lens or [p + n for p, n in zip(self.prefix_lens, self.new_lens)]
        loc = torch.stack([s[t - 1] for s, t in zip(self.slots, seq_lens)])
        fb = ForwardBatch(
            mode=ForwardMode.DECODE, batch_size=len(self.rows),
            input_ids=torch.zeros(len(loc), dtype=torch.int64, device=self.device),
            positions=self._tensor([t - 1 for t in seq_lens], torch.int64),
            req_pool_indices=self._tensor(self.rows, torch.int64), seq_lens=self._tensor(seq_lens, torch.int32),
            out_cache_loc=loc.to(self.device), req_to_token=self.req_to_token, kv_pool=self.pool,
            attn_backend=backend, seq_lens_cpu=tuple(seq_lens) if with_cpu_lens else ())
        return fb, *self.new_qkv(len(loc))

    def verify_batch(self, backend, parents: list[list[int]]) -> tuple[ForwardBatch, torch.Tensor, torch.Tensor,
                                                                      torch.Tensor]:
        """A TARGET_VERIFY batch: request i's `new_lens[i]` new tokens form a tree, node j's parent
        `parents[i][j]` (-1 for the root, which is node 0; parents come before their children)."""
        fb, q, k, v = self.extend_batch(backend)
        flat, indptr, positions = [], [0], []
        for p, par in zip(self.prefix_lens, parents):
            n, rows, depth = len(par), [], []
            for j, up in enumerate(par):
                row = list(rows[up]) if up >= 0 else [False] * n
                row[j] = True
                rows.append(row)
                depth.append(depth[up] + 1 if up >= 0 else 0)
            flat += [b for row in rows for b in row]
            indptr.append(indptr[-1] + n * n)
            positions += [p + d for d in depth]
        fb = replace(fb, mode=ForwardMode.TARGET_VERIFY, positions=self._tensor(positions, torch.int64),
                     tree_mask=self._tensor(flat, torch.bool), tree_mask_indptr=self._tensor(indptr, torch.int64))
        return fb, q, k, v

    def tree_reference(self, q: torch.Tensor, fb: ForwardBatch, layer: AttentionLayerInfo,
                       parents: list[list[int]]) -> torch.Tensor:
        """float32 attention of every draft-tree node over its request's prefix and its own path."""
        out, start = torch.empty(q.shape, dtype=torch.float32, device=q.device), 0
        k_buf, v_buf = self.pool.k_buffer(0), self.pool.v_buffer(0)
        for i, (p, par) in enumerate(zip(self.prefix_lens, parents)):
            row = self.req_to_token[fb.req_pool_indices[i]].long()
            for j in range(len(par)):
                path, node = [], j
                while node >= 0:
                    path.append(node)
                    node = par[node]
                slots = torch.cat([row[:p], row[p + torch.tensor(path[::-1], device=row.device)]])
                k, v = self.pool.dequantize(0, k_buf[slots], v_buf[slots])
                out[start + j] = reference_attention(q[start + j:start + j + 1], k, v, layer)[0]
            start += len(par)
        return out

    def new_qkv(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        kv = self.num_kv_heads * self.head_dim
        return self.randn(n, self.num_heads * self.head_dim), self.randn(n, kv), self.randn(n, kv)

    def reference(self, q: torch.Tensor, fb: ForwardBatch, layer: AttentionLayerInfo) -> torch.Tensor:
        """float32 attention of `q` (rows laid out as in `fb`) over the K/V now in the pool."""
        seq_lens = fb.seq_lens.tolist()
        new = [1] * len(seq_lens) if fb.mode.is_decode() else fb.extend_seq_lens.tolist()
        out, start = torch.empty(q.shape, dtype=torch.float32, device=q.device), 0
        k_buf, v_buf = self.pool.k_buffer(0), self.pool.v_buffer(0)
        for i, (t, n) in enumerate(zip(seq_lens, new)):
            slots = self.req_to_token[fb.req_pool_indices[i], :t].long()
            rows = slice(start, start + n)
            k, v = self.pool.dequantize(0, k_buf[slots], v_buf[slots])
            out[rows] = reference_attention(q[rows], k, v, layer)
            start += n
        return out


def row_strided(q: torch.Tensor) -> torch.Tensor:
    """q's values as a column slice of a wider, NaN-padded tensor: rows strided, as the model passes q
    to a backend (a view of the fused qkv output). A kernel that ignores the row stride reads NaN."""
    wide = torch.cat([q, torch.full_like(q[:, : max(1, q.shape[1] // 2)], float("nan"))], dim=1)
    return wide[:, : q.shape[1]]


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float32."""
    return ((out.float() - ref).norm() / ref.norm().clamp_min(1e-12)).item()
