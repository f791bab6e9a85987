"""PagedDriver: runs a ModelRunner over the paged KV cache the way the scheduler does.

KV slots come from the runner's TokenAllocator, request rows from its ReqToTokenPool, and each
forward gets a ForwardBatch describing an extend (a prefill, possibly a chunk over a cached
prefix, several requests at once) or a batched decode step. The model suite of the kit drives
architectures with it; tests use it to compare logits position by position.
"""
from __future__ import annotations

import torch

from jackfield.model_runner import ModelRunner
from jackfield.sdk.forward_batch import ForwardBatch, ForwardMode


class PagedDriver:
    """Drives a ModelRunner over the paged KV cache, one request row per sequence."""

    def __init__(self, runner: ModelRunner):
        self.runner = runner
        self.table = runner.req_to_token_pool.req_to_token
        self.rows: list[int] = []
        self.ids: list[list[int]] = []    # tokens whose KV is cached, per sequence

    def _slot(self, seq: int, pos: int) -> int:
        return int(self.table[self.rows[seq], pos])

    def new_sequence(self) -> int:
        row = self.runner.req_to_token_pool.alloc()
        assert row is not None, "no free request row"
        self.rows.append(row)
        self.ids.append([])
        return len(self.rows) - 1

    def extend(self, new_ids: list[list[int]], seqs: list[int | None] | None = None,
               all_logits: bool = True, lora_slots: tuple[int, ...] = ()) -> list[torch.Tensor]:
        """Compute `new_ids[i]` on top of sequence `seqs[i]`'s cached tokens, all in one EXTEND
        forward; a None entry (or `seqs` None) starts a new sequence. Returns logits per
        sequence: one row per new token with `all_logits`, else the last token's only.
        `lora_slots`: with LoRA on, the adapter pool slot of each sequence (-1: base model)."""
        r, dev = self.runner, self.runner.device
        seqs = [None] * len(new_ids) if seqs is None else list(seqs)
        seqs = [self.new_sequence() if s is None else s for s in seqs]
        prefix = [len(self.ids[s]) for s in seqs]
        ext = [len(x) for x in new_ids]
        last = [self._slot(s, p - 1) if p else -1 for s, p in zip(seqs, prefix)]
        slots = r.allocator.alloc_extend(prefix, ext, last)
        assert slots is not None, "KV pool exhausted"
        off = 0
        positions = []
        for s, p, e in zip(seqs, prefix, ext):
            self.table[self.rows[s], p:p + e] = slots[off:off + e].to(torch.int32)
            positions.extend(range(p, p + e))
            off += e
        ext_t = torch.tensor(ext, dtype=torch.int32, device=dev)
        start = torch.zeros_like(ext_t)
        start[1:] = torch.cumsum(ext_t, 0)[:-1]
        seq_cpu = tuple(p + e for p, e in zip(prefix, ext))
        total = sum(ext)
        logits_idx = torch.arange(total, device=dev) if all_logits else (start + ext_t - 1).long()
        fb = ForwardBatch(
            mode=ForwardMode.EXTEND, batch_size=len(seqs),
            input_ids=torch.tensor([t for x in new_ids for t in x], dtype=torch.int64, device=dev),
            positions=torch.tensor(positions, dtype=torch.int64, device=dev),
            req_pool_indices=torch.tensor([self.rows[s] for s in seqs], dtype=torch.int64, device=dev),
            seq_lens=torch.tensor(seq_cpu, dtype=torch.int32, device=dev), out_cache_loc=slots, req_to_token=self.table,
            kv_pool=r.kv_pool, attn_backend=r.attn_backend, seq_lens_cpu=seq_cpu,
            extend_prefix_lens=torch.tensor(prefix, dtype=torch.int32, device=dev), extend_seq_lens=ext_t,
            extend_start_loc=start, extend_prefix_lens_cpu=tuple(prefix), extend_seq_lens_cpu=tuple(ext),
            logits_indices=logits_idx, lora_slots=tuple(lora_slots))
        logits = r.forward(fb).float()
        for s, x in zip(seqs, new_ids):
            self.ids[s].extend(x)
        if not all_logits:
            return list(logits)
        return list(logits.split(ext))

    def decode(self, tokens: list[int], seqs: list[int] | None = None, lora_slots: tuple[int, ...] = ()) -> torch.Tensor:
        """One DECODE step: token `tokens[i]` appended to sequence `seqs[i]`. Returns [B, vocab]."""
        r, dev = self.runner, self.runner.device
        seqs = list(range(len(self.rows))) if seqs is None else seqs
        kv = [len(self.ids[s]) for s in seqs]
        last = [self._slot(s, n - 1) for s, n in zip(seqs, kv)]
        loc = r.allocator.alloc_decode([n + 1 for n in kv], last)
        assert loc is not None, "KV pool exhausted"
        pool = torch.tensor([self.rows[s] for s in seqs], dtype=torch.int64, device=dev)
        self.table[pool, torch.tensor(kv, device=dev)] = loc.to(torch.int32)
        positions = torch.tensor(kv, dtype=torch.int64, device=dev)
        fb = ForwardBatch(
            mode=ForwardMode.DECODE, batch_size=len(seqs), input_ids=torch.tensor(tokens, dtype=torch.int64, device=dev),
            positions=positions, req_pool_indices=pool, seq_lens=(positions + 1).to(torch.int32),
            out_cache_loc=loc, req_to_token=self.table, kv_pool=r.kv_pool, attn_backend=r.attn_backend,
            seq_lens_cpu=tuple(n + 1 for n in kv), lora_slots=tuple(lora_slots))
        logits = r.forward(fb).float()
        for s, t in zip(seqs, tokens):
            self.ids[s].append(t)
        return logits

    def release(self) -> None:
        """Free every sequence's KV pages and request rows."""
        r = self.runner
        for row, ids in zip(self.rows, self.ids):
            if ids:
                r.allocator.free(self.table[row, :len(ids)].long())
            r.req_to_token_pool.free(row)
        self.rows, self.ids = [], []


def greedy_run(driver: PagedDriver, prompts: list[list[int]], steps: int) -> tuple[list[list[torch.Tensor]], list[list[int]]]:
    """Prefill `prompts` in one extend batch, then `steps` batched greedy decode steps.

    Returns, per prompt, the logits of every computed position (prompt positions, then one per
    decode step) and the full token sequence that was fed (prompt + `steps` generated tokens).
    """
    pre = driver.extend(prompts)
    logits = [[row for row in p] for p in pre]
    seqs = [list(p) for p in prompts]
    nxt = [int(p[-1].argmax()) for p in pre]
    for _ in range(steps):
        for s, t in zip(seqs, nxt):
            s.append(t)
        out = driver.decode(nxt)
        for i, row in enumerate(out):
            logits[i].append(row)
        nxt = [int(row.argmax()) for row in out]
    return logits, seqs
