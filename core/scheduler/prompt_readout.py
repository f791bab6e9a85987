"""Prompt readouts: what an extend forward reads from the prompt's hidden states besides the next token.

Two readouts, both planned on the scheduler thread (`plan_readout`) and computed right after the
model's forward from the hidden states of the rows it computed (`read_prompt`):

* prompt logprobs: for a request with `logprob_start_len` >= 0, the log-softmax at prompt position q
  gives the logprob of token q + 1 (and its top-k alternatives). Each chunk of a chunked prefill
  reads the positions it computes. The rows go through the LM head in slices of at most
  `SLICE_BYTES` of float32 logits, so a long prompt never materializes [prompt, vocab] logits.
* pooled hidden states (embeddings): the final hidden state of the prompt's last token ("last", read
  by the forward that completes the prompt) or the sum over the prompt ("mean", summed per chunk;
  the scheduler divides by the prompt length).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from jackfield.io_struct import TokenLogprob
from jackfield.mem.device_copy import to_device

SLICE_BYTES = 64 << 20  # float32 logits of one slice of prompt positions


@dataclass(frozen=True)
class PromptReadout:
    logprob_rows: torch.Tensor       # [P] int64: rows of the forward's tokens whose next-token logprob is read
    logprob_targets: torch.Tensor    # [P] int64: the prompt token that follows each of those rows
    top_k: int                       # alternatives per row (the largest top_logprobs_num among the requests)
    logprob_counts: tuple[int, ...]  # per extend request, in order: how many of the P rows are its
    pool_spans: tuple[tuple[int, int, bool], ...]  # per pooled request: (first row, end row, sum them)
    pool_reqs: tuple[int, ...]       # the extend-request index of each pool span


@dataclass(frozen=True)
class PromptResult:
    """A readout's values: device tensors after the forward, host lists after `to_lists`."""

    chosen: torch.Tensor | list | None = None    # [P] float32 logprob of each target
    top_ids: torch.Tensor | list | None = None   # [P, k] int64, best first
    top_vals: torch.Tensor | list | None = None  # [P, k] float32
    pooled: torch.Tensor | list | None = None    # [R, hidden] float32

    def to_lists(self) -> PromptResult:
        return PromptResult(*(t.tolist() if isinstance(t, torch.Tensor) else t
                              for t in (self.chosen, self.top_ids, self.top_vals, self.pooled)))


def plan_readout(reqs: list, device: torch.device) -> PromptReadout | None:
    """The readout of an extend forward over `reqs` (each computing positions [kv_len, kv_len +
    extend_len), in batch order), or None when no request needs one. Advances each request's
    `next_input_logprob` past the positions this forward reads: under overlap the next forward is
    planned before this one's values are recorded."""
    rows, targets, counts, spans, pool_reqs = [], [], [], [], []
    top_k, offset = 0, 0
    for i, r in enumerate(reqs):
        kv, ext = r.kv_len, r.extend_len
        count = 0
        nxt = r.next_input_logprob
        if nxt is not None:
            ids = r.origin_input_ids
            first, end = max(nxt - 1, kv), min(kv + ext, len(ids) - 1)
            if first != nxt - 1 and first < end:
                raise RuntimeError(f"request {r.rid}: prompt logprob position {nxt - 1} was not computed")
            for q in range(first, end):
                rows.append(offset + q - kv)
                targets.append(ids[q + 1])
            count = max(end - first, 0)
            if count:
                r.next_input_logprob = end + 1 if end + 1 < len(ids) else None
            top_k = max(top_k, r.sampling_params.top_logprobs_num)
        counts.append(count)
        if r.pooling == "mean":
            spans.append((offset, offset + ext, True))
            pool_reqs.append(i)
        elif r.pooling == "last" and kv + ext == len(r.origin_input_ids):
            spans.append((offset + ext - 1, offset + ext, False))
            pool_reqs.append(i)
        offset += ext
    if not rows and not spans:
        return None
    return PromptReadout(to_device(rows, torch.int64, device), to_device(targets, torch.int64, device),
                         top_k, tuple(counts), tuple(spans), tuple(pool_reqs))


def read_prompt(model, hidden: torch.Tensor, readout: PromptReadout) -> PromptResult:
    """Compute `readout` from the forward's final hidden states [tokens, hidden] (device tensors)."""
    chosen = top_ids = top_vals = pooled = None
    total = readout.logprob_rows.numel()
    if total:
        step = max(1, SLICE_BYTES // (4 * model.config.vocab_size))
        parts = []
        for s in range(0, total, step):
            rows = readout.logprob_rows[s:s + step]
            logprobs = torch.log_softmax(model.compute_logits(hidden.index_select(0, rows)).float(), dim=-1)
            picked = logprobs.gather(1, readout.logprob_targets[s:s + step].unsqueeze(1)).squeeze(1)
            parts.append((picked, *(logprobs.topk(readout.top_k, dim=-1)[::-1] if readout.top_k else ())))
            del logprobs
        chosen = torch.cat([p[0] for p in parts])
        if readout.top_k:
            top_ids, top_vals = torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])
    if readout.pool_spans:
        pooled = torch.stack([hidden[a:b].float().sum(0) if mean else hidden[a].float()
                              for a, b, mean in readout.pool_spans])
    return PromptResult(chosen, top_ids, top_vals, pooled)


def take_readout(reqs: list, readout: PromptReadout, values: PromptResult) -> None:
    """Record a forward's readout `values` (host lists) on its extend requests `reqs`."""
    row = 0
    for r, count in zip(reqs, readout.logprob_counts):
        if not count:
            continue
        k, ids = r.sampling_params.top_logprobs_num, r.origin_input_ids
        first = r.logprob_start_len + len(r.input_logprobs)  # forwards are recorded in launch order
        for j in range(count):
            top = list(zip(values.top_ids[row + j][:k], values.top_vals[row + j][:k])) if k else []
            r.input_logprobs.append(TokenLogprob(ids[first + j], values.chosen[row + j], top))
        row += count
    for i, vec in zip(readout.pool_reqs, values.pooled or ()):
        r = reqs[i]
        part = torch.tensor(vec, dtype=torch.float32)
        r.embedding = part if r.embedding is None else r.embedding + part
