"""ScheduleBatch: the scheduler's view of one batch, and its conversion into a ForwardBatch.

Request-level tensors (`req_pool_indices`, `seq_lens`, `output_lens`, `next_input_ids`) live on the
device and are updated with tensor ops in decode steps; `filter` and `merge` keep them (and the
SamplingBatch) in step when requests finish or join.
"""
from __future__ import annotations

import torch

from jackfield.sampling.batch import SamplingBatch
from jackfield.scheduler.req import Req
from jackfield.sdk.forward_batch import ForwardBatch, ForwardMode


class ScheduleBatch:
    def __init__(self, reqs: list[Req], device: torch.device, sampling: SamplingBatch):
        self.reqs = reqs
        self.device = device
        self.sampling = sampling
        self.req_pool_indices = torch.tensor([r.req_pool_idx for r in reqs], dtype=torch.int64, device=device)
        self.seq_lens_cpu = [r.kv_len for r in reqs]
        self.output_lens = torch.tensor([len(r.output_ids) for r in reqs], dtype=torch.int64, device=device)
        self.next_input_ids: torch.Tensor | None = None  # [B] decode inputs (sampled by the last step)

    def __len__(self) -> int:
        return len(self.reqs)

    def filter(self, keep: list[int]) -> None:
        if len(keep) == len(self.reqs):
            return
        idx_cpu = torch.tensor(keep, dtype=torch.int64)
        idx = idx_cpu.to(self.device)
        self.reqs = [self.reqs[i] for i in keep]
        self.req_pool_indices = self.req_pool_indices[idx]
        self.seq_lens_cpu = [self.seq_lens_cpu[i] for i in keep]
        self.output_lens = self.output_lens[idx]
        self.next_input_ids = self.next_input_ids[idx] if self.next_input_ids is not None else None
        self.sampling = self.sampling.filter(idx_cpu)

    def merge(self, other: "ScheduleBatch") -> None:
        self.reqs = self.reqs + other.reqs
        self.req_pool_indices = torch.cat([self.req_pool_indices, other.req_pool_indices])
        self.seq_lens_cpu = self.seq_lens_cpu + other.seq_lens_cpu
        self.output_lens = torch.cat([self.output_lens, other.output_lens])
        self.next_input_ids = torch.cat([self.next_input_ids, other.next_input_ids])
        self.sampling = self.sampling.merge(other.sampling)


def build_extend_batch(prefill: list[Req], decode: ScheduleBatch | None, runner, slots: torch.Tensor) -> ForwardBatch:
    """Prefill requests (each with prefix_indices, extend_len and allocated `slots`, in order),
    optionally followed by a running batch's decodes as length-1 extends (MIXED mode)."""
    dev, table = runner.device, runner.req_to_token_pool.req_to_token
    ids, positions, prefix_lens, ext_lens, pool_idx = [], [], [], [], []
    offset = 0
    for r in prefill:
        prefix = len(r.prefix_indices)
        if prefix:
            table[r.req_pool_idx, :prefix] = r.prefix_indices.to(dev, torch.int32)
        table[r.req_pool_idx, prefix:prefix + r.extend_len] = slots[offset:offset + r.extend_len].to(torch.int32)
        offset += r.extend_len
        ids.extend(r.all_ids[prefix:prefix + r.extend_len])
        positions.extend(range(prefix, prefix + r.extend_len))
        prefix_lens.append(prefix)
        ext_lens.append(r.extend_len)
        pool_idx.append(r.req_pool_idx)
    input_ids = torch.tensor(ids, dtype=torch.int64, device=dev)
    pos = torch.tensor(positions, dtype=torch.int64, device=dev)
    pool = torch.tensor(pool_idx, dtype=torch.int64, device=dev)
    out_loc = slots
    mode = ForwardMode.EXTEND
    if decode is not None and len(decode):
        dec_pos = torch.tensor(decode.seq_lens_cpu, dtype=torch.int64, device=dev)
        dec_loc = alloc_decode_slots(decode, runner)
        input_ids = torch.cat([input_ids, decode.next_input_ids])
        pos = torch.cat([pos, dec_pos])
        pool = torch.cat([pool, decode.req_pool_indices])
        out_loc = torch.cat([out_loc, dec_loc])
        prefix_lens += decode.seq_lens_cpu
        ext_lens += [1] * len(decode)
        mode = ForwardMode.MIXED
    seq_cpu = tuple(p + e for p, e in zip(prefix_lens, ext_lens))
    ext_t = torch.tensor(ext_lens, dtype=torch.int32, device=dev)
    start = torch.zeros_like(ext_t)
    start[1:] = torch.cumsum(ext_t, 0)[:-1]
    return ForwardBatch(
        mode=mode, batch_size=len(ext_lens), input_ids=input_ids, positions=pos, req_pool_indices=pool,
        seq_lens=torch.tensor(seq_cpu, dtype=torch.int32, device=dev), out_cache_loc=out_loc,
        req_to_token=table, kv_pool=runner.kv_pool, attn_backend=runner.attn_backend, seq_lens_cpu=seq_cpu,
        extend_prefix_lens=torch.tensor(prefix_lens, dtype=torch.int32, device=dev), extend_seq_lens=ext_t,
        extend_start_loc=start, extend_prefix_lens_cpu=tuple(prefix_lens), extend_seq_lens_cpu=tuple(ext_lens))


def alloc_decode_slots(batch: ScheduleBatch, runner) -> torch.Tensor:
    """One KV slot per request for its next token; writes it into req_to_token. Caller checked memory."""
    page = runner.page_size
    if page == 1:
        loc = runner.allocator.alloc(len(batch))
    else:
        table = runner.req_to_token_pool.req_to_token
        kv = torch.tensor(batch.seq_lens_cpu, dtype=torch.int64, device=batch.device)
        last = table[batch.req_pool_indices, (kv - 1).clamp(min=0)].long()
        last = torch.where(kv > 0, last, torch.full_like(last, -1))
        loc = runner.allocator.alloc_decode([n + 1 for n in batch.seq_lens_cpu], last.tolist())
    if loc is None:
        raise RuntimeError("decode slot allocation failed after the memory check")
    kv = torch.tensor(batch.seq_lens_cpu, dtype=torch.int64, device=batch.device)
    runner.req_to_token_pool.req_to_token[batch.req_pool_indices, kv] = loc.to(torch.int32)
    return loc


def build_decode_batch(batch: ScheduleBatch, runner) -> ForwardBatch:
    dev = batch.device
    loc = alloc_decode_slots(batch, runner)
    positions = torch.tensor(batch.seq_lens_cpu, dtype=torch.int64, device=dev)
    seq_cpu = tuple(n + 1 for n in batch.seq_lens_cpu)
    return ForwardBatch(
        mode=ForwardMode.DECODE, batch_size=len(batch), input_ids=batch.next_input_ids, positions=positions,
        req_pool_indices=batch.req_pool_indices, seq_lens=positions.to(torch.int32) + 1, out_cache_loc=loc,
        req_to_token=runner.req_to_token_pool.req_to_token, kv_pool=runner.kv_pool,
        attn_backend=runner.attn_backend, seq_lens_cpu=seq_cpu)
