"""The scheduler: continuous batching over a running batch, chunked prefill, RadixAttention,
admission control with retraction, and abort. One `step()` is one forward pass.

Inputs are io_struct messages (`handle`); outputs are BatchOutput messages returned by `step`. The
same class runs in-process for the offline Engine and inside the scheduler subprocess of the server.
"""
from __future__ import annotations

import logging

import torch

from jackfield.io_struct import (AbortReq, BatchOutput, FinishReason, FlushCacheOut, FlushCacheReq, GetStatsReq,
                                 ReqOutput, StatsOut, TokenizedGenerateReq, TokenLogprob)
from jackfield.mem.chunk_cache import ChunkCache
from jackfield.mem.radix_cache import RadixCache
from jackfield.model_runner import ModelRunner
from jackfield.sampling.batch import SamplingBatch
from jackfield.scheduler.admission import Admission
from jackfield.scheduler.policy import SchedulePolicy
from jackfield.scheduler.req import Req
from jackfield.scheduler.schedule_batch import ScheduleBatch, build_decode_batch, build_extend_batch
from jackfield.scheduler.stats import SchedulerStats

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, runner: ModelRunner, tokenizer=None):
        s = runner.setup.settings
        self.runner, self.tokenizer, self.settings = runner, tokenizer, s
        self.device = runner.device
        cache_cls = ChunkCache if s.disable_radix_cache else RadixCache
        self.tree_cache = cache_cls(runner.req_to_token_pool, runner.allocator, runner.page_size)
        self.policy = SchedulePolicy(s.schedule_policy, self.tree_cache, not s.disable_radix_cache)
        self.admission = Admission(self, s)
        self.eos_ids = tuple(tokenizer.eos_token_ids) if tokenizer is not None else runner.config.eos_token_ids
        self.vocab_size = runner.config.vocab_size
        self.waiting: list[Req] = []
        self.running: ScheduleBatch | None = None
        self.chunked_req: Req | None = None
        self.stats = SchedulerStats()
        self._arrivals = 0
        self._last_was_prefill = False
        self.mixed_ok = s.enable_mixed_chunk and runner.attn_backend.supports_mixed

    # ---- inputs -------------------------------------------------------------------------------
    def handle(self, msg) -> list:
        """Apply one input message; returns any immediate outputs (aborted/finished requests, stats)."""
        if isinstance(msg, TokenizedGenerateReq):
            return self._add_request(msg)
        if isinstance(msg, AbortReq):
            return self._abort(msg.rid)
        if isinstance(msg, FlushCacheReq):
            return [self._flush_cache()]
        if isinstance(msg, GetStatsReq):
            return [self.get_stats()]
        raise TypeError(f"scheduler cannot handle {type(msg).__name__}")

    def _add_request(self, msg: TokenizedGenerateReq) -> list:
        req = Req(msg, self._arrivals)
        self._arrivals += 1
        if len(req.origin_input_ids) + req.sampling_params.max_new_tokens > self.runner.context_len:
            total = len(req.origin_input_ids) + req.sampling_params.max_new_tokens
            return [self._finish_now(req, FinishReason("abort", message=(
                f"prompt ({len(req.origin_input_ids)} tokens) + max_new_tokens exceeds the context length "
                f"{self.runner.context_len} ({total} requested)")))]
        if not req.origin_input_ids:
            return [self._finish_now(req, FinishReason("abort", message="the prompt is empty"))]
        if req.sampling_params.max_new_tokens == 0:
            return [self._finish_now(req, FinishReason("length"))]
        self.waiting.append(req)
        return []

    def _finish_now(self, req: Req, reason: FinishReason) -> BatchOutput:
        req.finished_reason = reason
        return BatchOutput([self._req_output(req)])

    # ---- the loop body ------------------------------------------------------------------------
    def has_work(self) -> bool:
        return bool(self.waiting) or self.chunked_req is not None or bool(self.running and len(self.running))

    def step(self) -> list[BatchOutput]:
        """Schedule and run one forward; returns the outputs it produced."""
        finished: list[Req] = []
        want_decode = self.running is not None and len(self.running) > 0
        prefill = None
        if not (want_decode and self._last_was_prefill and not self.mixed_ok):
            prefill = self.admission.schedule_prefill(len(self.running) if want_decode else 0)
        if prefill is not None:
            reqs, slots = prefill
            decode = self.running if (want_decode and self.mixed_ok and self.admission.reserve_decode(self.running, finished)) else None
            fb = build_extend_batch(reqs, decode, self.runner, slots)
            self._run_extend(reqs, decode, fb, finished)
            self._last_was_prefill = decode is None
        elif want_decode:
            if self.admission.reserve_decode(self.running, finished) and len(self.running):
                fb = build_decode_batch(self.running, self.runner)
                self._run_decode(fb, finished)
            self._last_was_prefill = False
        else:
            return []
        return [BatchOutput(self._collect_outputs(finished))]

    def _sample(self, fb, sampling: SamplingBatch, output_lens: torch.Tensor, counted: torch.Tensor | None = None):
        logits = self.runner.forward(fb)
        return self.runner.sampler.sample(logits, sampling, output_lens, counted)

    def _run_extend(self, reqs: list[Req], decode: ScheduleBatch | None, fb, finished: list[Req]) -> None:
        slots = [r.req_pool_idx for r in reqs]
        for r in reqs:
            if r.kv_len == 0:
                self.runner.sampler.start_request(r.req_pool_idx, r.origin_input_ids, r.sampling_params.needs_penalties)
                self._restore_penalty_counts(r)
        new_sampling = SamplingBatch.from_params([r.sampling_params for r in reqs], slots, self.vocab_size,
                                                 self.eos_ids, self.device)
        out_lens = torch.tensor([len(r.output_ids) for r in reqs], dtype=torch.int64, device=self.device)
        sampling, lens = new_sampling, out_lens
        counted = torch.tensor([len(r.prefix_indices) + r.extend_len == len(r.all_ids) for r in reqs], device=self.device)
        if decode is not None:
            sampling, lens = new_sampling.merge(decode.sampling), torch.cat([out_lens, decode.output_lens])
            counted = torch.cat([counted, torch.ones(len(decode), dtype=torch.bool, device=self.device)])
        out = self._sample(fb, sampling, lens, counted)
        n_new = len(reqs)
        self.stats.record_step(sum(r.extend_len for r in reqs), len(decode) if decode else 0)
        token_list = out.next_token_ids.tolist()
        logprobs = _logprob_rows(out)
        done_prefill, keep = [], []
        for i, r in enumerate(reqs):
            r.kv_len = len(r.prefix_indices) + r.extend_len
            if r.kv_len < len(r.all_ids):  # a chunk of a longer prompt: no token yet
                self.tree_cache.cache_unfinished_req(r, r.kv_len)
                continue
            self.chunked_req = None if self.chunked_req is r else self.chunked_req
            self._append_token(r, token_list[i], logprobs, i)
            if r.finished or r.to_abort:
                self._release(r, finished)
            else:
                self.tree_cache.cache_unfinished_req(r, r.kv_len)
                done_prefill.append(i)
                keep.append(r)
        if decode is not None:
            self._after_decode(decode, out.next_token_ids[n_new:], token_list[n_new:], logprobs, n_new, finished)
        if keep:
            idx = torch.tensor(done_prefill, dtype=torch.int64)
            batch = ScheduleBatch(keep, self.device, new_sampling.filter(idx))
            batch.next_input_ids = out.next_token_ids[:n_new][idx.to(self.device)]
            if self.running is None or len(self.running) == 0:
                self.running = batch
            else:
                self.running.merge(batch)

    def _run_decode(self, fb, finished: list[Req]) -> None:
        batch = self.running
        out = self._sample(fb, batch.sampling, batch.output_lens)
        self.stats.record_step(0, len(batch))
        self._after_decode(batch, out.next_token_ids, out.next_token_ids.tolist(), _logprob_rows(out), 0, finished)

    def _after_decode(self, batch: ScheduleBatch, next_ids: torch.Tensor, tokens: list[int], logprobs, offset: int,
                      finished: list[Req]) -> None:
        keep = []
        for i, r in enumerate(batch.reqs):
            r.kv_len += 1
            batch.seq_lens_cpu[i] = r.kv_len
            self._append_token(r, tokens[i], logprobs, offset + i)
            if r.finished or r.to_abort:
                self._release(r, finished)
            else:
                keep.append(i)
        batch.output_lens = batch.output_lens + 1
        batch.next_input_ids = next_ids
        batch.filter(keep)

    def _append_token(self, r: Req, token: int, logprobs, row: int) -> None:
        r.output_ids.append(token)
        self.stats.generated_tokens += 1
        if r.return_logprob and logprobs is not None:
            chosen, top_ids, top_vals = logprobs
            top = list(zip(top_ids[row], top_vals[row])) if top_ids is not None else []
            r.logprobs.append(TokenLogprob(token, chosen[row], top[:r.sampling_params.top_logprobs_num]))
        r.check_finished(self.eos_ids, self.tokenizer, self.vocab_size)

    def _restore_penalty_counts(self, r: Req) -> None:
        counts = self.runner.sampler.output_counts
        if counts is not None and r.output_ids:
            ids = torch.tensor(r.output_ids, dtype=torch.int64, device=self.device)
            counts[r.req_pool_idx].index_add_(0, ids, torch.ones_like(ids, dtype=torch.float32))

    # ---- releasing requests -------------------------------------------------------------------
    def _release(self, r: Req, finished: list[Req]) -> None:
        """Give back a request's KV (its computed prefix stays in the tree) and its table row."""
        if r.to_abort and not r.finished:
            r.finished_reason = FinishReason("abort", message="aborted")
        self.tree_cache.cache_finished_req(r, r.kv_len)
        self.runner.sampler.release_request(r.req_pool_idx)
        self.runner.req_to_token_pool.free(r.req_pool_idx)
        r.req_pool_idx = None
        finished.append(r)

    def retract(self, r: Req) -> None:
        """Free a running request's KV without caching it and requeue it; it resumes by recomputing."""
        self.tree_cache.release_req(r, r.kv_len)
        self.runner.sampler.release_request(r.req_pool_idx)
        self.runner.req_to_token_pool.free(r.req_pool_idx)
        r.req_pool_idx, r.kv_len, r.last_node, r.cache_protected_len = None, 0, None, 0
        r.prefix_indices = torch.empty(0, dtype=torch.int64)
        r.retractions += 1
        self.stats.retractions += 1
        self.waiting.insert(0, r)

    def _abort(self, rid: str) -> list:
        for i, r in enumerate(self.waiting):
            if r.rid == rid:
                self.waiting.pop(i)
                return [self._finish_now(r, FinishReason("abort", message="aborted"))]
        finished: list[Req] = []
        if self.chunked_req is not None and self.chunked_req.rid == rid:
            r, self.chunked_req = self.chunked_req, None
            r.to_abort = True
            self._release(r, finished)
        elif self.running is not None:
            for i, r in enumerate(self.running.reqs):
                if r.rid == rid:
                    r.to_abort = True
                    self._release(r, finished)
                    self.running.filter([j for j in range(len(self.running)) if j != i])
                    break
        return [BatchOutput(self._collect_outputs(finished))] if finished else []

    def abort_all(self, message: str) -> list:
        """Fail every request (after an internal error); all KV is returned."""
        rids = [r.rid for r in self.waiting] + ([self.chunked_req.rid] if self.chunked_req else [])
        rids += [r.rid for r in self.running.reqs] if self.running is not None else []
        outs = []
        for rid in rids:
            for batch in self._abort(rid):
                for ro in batch.outputs:
                    ro.finished.message = message
                outs.append(batch)
        return outs

    def _flush_cache(self) -> FlushCacheOut:
        if self.has_work():
            return FlushCacheOut(False, "cannot flush the cache while requests are running")
        self.tree_cache.reset()
        return FlushCacheOut(True)

    # ---- outputs ------------------------------------------------------------------------------
    def _req_output(self, r: Req) -> ReqOutput:
        new = r.output_ids[r.sent_len:]
        lps = r.logprobs[r.sent_len:] if r.return_logprob else None
        r.sent_len = len(r.output_ids)
        return ReqOutput(r.rid, new, r.finished_reason, len(r.origin_input_ids), len(r.output_ids),
                         max(r.cached_tokens, 0), lps)

    def _collect_outputs(self, finished: list[Req]) -> list[ReqOutput]:
        outs = [self._req_output(r) for r in finished]
        if self.running is not None:
            interval = self.settings.stream_interval
            for r in self.running.reqs:
                if r.stream and len(r.output_ids) - r.sent_len >= interval:
                    outs.append(self._req_output(r))
        return outs

    def get_stats(self) -> StatsOut:
        pre, dec = self.stats.rates()
        total = self.runner.max_total_tokens
        used = total - self.runner.allocator.available_size() - self.tree_cache.evictable_size()
        return StatsOut(num_running=len(self.running) if self.running else 0, num_waiting=len(self.waiting),
                        kv_used_tokens=used, kv_total_tokens=total, cache_hit_rate=self.stats.cache_hit_rate,
                        prefill_tokens_per_s=pre, decode_tokens_per_s=dec, total_prompt_tokens=self.stats.prompt_tokens,
                        total_cached_tokens=self.stats.cached_tokens, total_generated_tokens=self.stats.generated_tokens)


def _logprob_rows(out):
    if out.logprobs is None:
        return None
    ids = out.top_logprob_ids.tolist() if out.top_logprob_ids is not None else None
    vals = out.top_logprob_vals.tolist() if out.top_logprob_vals is not None else None
    return out.logprobs.tolist(), ids, vals
