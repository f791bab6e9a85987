"""ScheduleBatch: the running batch, and the ForwardBatches built from it and from new prefills.

Request-level tensors (`req_pool_indices`, `output_lens`) live on the device; `filter` and `merge`
keep them (and the SamplingBatch) in step when requests finish or join, always building new tensors
so a batch already handed to the forward worker never sees a later change.

Lengths are "launched" lengths: `Req.kv_len` and `output_lens` already count the forwards that were
launched but whose results are not processed yet (one step ahead under overlap scheduling).

Decode inputs are not in the ForwardBatch: each request's next input token is the token its previous
forward sampled, which the forward worker keeps in the future map (`forward_job.py`). The builders
leave the decode part of `input_ids` out and the worker appends it right before the forward.
"""
from __future__ import annotations

import torch

from jackfield.mem.device_copy import to_device
from jackfield.sampling.batch import SamplingBatch
from jackfield.scheduler.req import Req
from jackfield.sdk.forward_batch import ForwardBatch, ForwardMode


class ScheduleBatch:
    def __init__(self, reqs: list[Req], device: torch.device, sampling: SamplingBatch, output_lens: torch.Tensor):
        self.reqs = reqs
        self.device = device
        self.sampling = sampling
        self.req_pool_indices = to_device([r.req_pool_idx for r in reqs], torch.int64, device)
        self.output_lens = output_lens  # [B] int64: tokens generated once every launched forward finishes

    def __len__(self) -> int:
        return len(self.reqs)

    @property
    def seq_lens_cpu(self) -> list[int]:
        """KV length of each request after every launched forward."""
        return [r.kv_len for r in self.reqs]

    def filter(self, keep: list[int]) -> None:
        if len(keep) == len(self.reqs):
            return
        idx_cpu = torch.tensor(keep, dtype=torch.int64)
        idx = to_device(idx_cpu, torch.int64, self.device)
        self.reqs = [self.reqs[i] for i in keep]
        self.req_pool_indices = self.req_pool_indices[idx]
        self.output_lens = self.output_lens[idx]
        self.sampling = self.sampling.filter(idx_cpu)

    def merge(self, other: "ScheduleBatch") -> None:
        self.reqs = self.reqs + other.reqs
        self.req_pool_indices = torch.cat([self.req_pool_indices, other.req_pool_indices])
        self.output_lens = torch.cat([self.output_lens, other.output_lens])
        self.sampling = self.sampling.merge(other.sampling)

    def advance(self) -> None:
        """Account for one launched decode forward: one more KV token and one more output each."""
        for r in self.reqs:
            r.kv_len += 1
        self.output_lens = self.output_lens + 1


def build_extend_batch(prefill: list[Req], decode: ScheduleBatch | None, runner, slots: torch.Tensor) -> ForwardBatch:
    """Prefill requests (each computing `extend_len` tokens after its `kv_len` cached ones, into the
    allocated `slots`, in order), optionally followed by a running batch's decodes as length-1
    extends (MIXED mode). `input_ids` holds the prefill tokens only."""
    dev, table = runner.device, runner.req_to_token_pool.req_to_token
    ids, positions, prefix_lens, ext_lens, pool_idx = [], [], [], [], []
    offset = 0
    for r in prefill:
        prefix = r.kv_len
        table[r.req_pool_idx, prefix:prefix + r.extend_len] = slots[offset:offset + r.extend_len].to(torch.int32)
        offset += r.extend_len
        ids.extend(r.all_ids[prefix:prefix + r.extend_len])
        positions.extend(range(prefix, prefix + r.extend_len))
        prefix_lens.append(prefix)
        ext_lens.append(r.extend_len)
        pool_idx.append(r.req_pool_idx)
    input_ids = to_device(ids, torch.int64, dev)
    pos = to_device(positions, torch.int64, dev)
    pool = to_device(pool_idx, torch.int64, dev)
    out_loc = slots
    mode = ForwardMode.EXTEND
    if decode is not None and len(decode):
        dec_lens = decode.seq_lens_cpu
        dec_pos = to_device(dec_lens, torch.int64, dev)
        dec_loc = alloc_decode_slots(decode, runner, dec_pos)
        pos = torch.cat([pos, dec_pos])
        pool = torch.cat([pool, decode.req_pool_indices])
        out_loc = torch.cat([out_loc, dec_loc])
        prefix_lens += dec_lens
        ext_lens += [1] * len(decode)
        mode = ForwardMode.MIXED
    seq_cpu = tuple(p + e for p, e in zip(prefix_lens, ext_lens))
    ext_t = to_device(ext_lens, torch.int32, dev)
    start = torch.zeros_like(ext_t)
    start[1:] = torch.cumsum(ext_t, 0)[:-1]
    return ForwardBatch(
        mode=mode, batch_size=len(ext_lens), input_ids=input_ids, positions=pos, req_pool_indices=pool,
        seq_lens=to_device(seq_cpu, torch.int32, dev), out_cache_loc=out_loc,
        req_to_token=table, kv_pool=runner.kv_pool, attn_backend=runner.attn_backend, seq_lens_cpu=seq_cpu,
        extend_prefix_lens=to_device(prefix_lens, torch.int32, dev), extend_seq_lens=ext_t,
        extend_start_loc=start, extend_prefix_lens_cpu=tuple(prefix_lens), extend_seq_lens_cpu=tuple(ext_lens))


def alloc_decode_slots(batch: ScheduleBatch, runner, kv: torch.Tensor) -> torch.Tensor:
    """One KV slot per request for its next token (at position kv[i], the request's KV length on the
    device); writes it into req_to_token. The caller checked memory."""
    page = runner.page_size
    lens = batch.seq_lens_cpu
    table = runner.req_to_token_pool.req_to_token
    if page == 1:
        loc = runner.allocator.alloc(len(batch))
    else:
        last = table[batch.req_pool_indices, (kv - 1).clamp(min=0)].long()  # stays on the device
        loc = runner.allocator.alloc_decode([n + 1 for n in lens], last)
    if loc is None:
        raise RuntimeError("decode slot allocation failed after the memory check")
    table[batch.req_pool_indices, kv] = loc.to(torch.int32)
    return loc


def build_decode_batch(batch: ScheduleBatch, runner) -> ForwardBatch:
    """One decode token per request of `batch`; `input_ids` is left empty (filled by the worker)."""
    dev = batch.device
    lens = batch.seq_lens_cpu
    positions = to_device(lens, torch.int64, dev)  # asynchronous: the host does not wait
    loc = alloc_decode_slots(batch, runner, positions)
    return ForwardBatch(
        mode=ForwardMode.DECODE, batch_size=len(batch), input_ids=torch.empty(0, dtype=torch.int64, device=dev),
        positions=positions, req_pool_indices=batch.req_pool_indices, seq_lens=positions.to(torch.int32) + 1,
        out_cache_loc=loc, req_to_token=runner.req_to_token_pool.req_to_token, kv_pool=runner.kv_pool,
        attn_backend=runner.attn_backend, seq_lens_cpu=tuple(n + 1 for n in lens))
