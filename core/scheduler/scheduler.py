"""The scheduler: continuous batching over a running batch, chunked prefill, RadixAttention,
admission control with retraction, abort, overlap scheduling, and grammar-constrained requests
(`jackfield.constrained`: compiled off the critical path, masked per step, jump-forward). One
`step()` is one forward pass.

Inputs are io_struct messages (`handle`); outputs are BatchOutput messages returned by `step` (and by
`handle` when an abort had to wait for a running forward). The same class runs in-process for the
offline Engine and inside the scheduler subprocess of the server.

A step plans a ForwardJob (`batch_planner.py`), runs it (`forward_job.py`), commits it (its prefill
KV enters the radix tree) and processes its tokens. With overlap (the default on CUDA; `overlap.py`)
step N does: plan N+1 (while N runs) -> launch N+1 (queued behind N) -> wait for N -> commit N ->
process N (while N+1 runs), so the device always has the next forward queued. N+1 is planned one
step behind: a request that finished at N also decodes in N+1; that token is dropped and its slot
freed. KV that commit N frees can only be reused by N+2 or later, which run after N+1. Retraction
and abort first `sync()` (wait for and process the running forward), so they never touch a request
whose forward is still running. A job with grammar rows samples only once its mask is filled, after
the previous job's tokens are processed (delayed sampling): the mask of N+1 is built on the CPU
while N+1's forward runs. A server plans N+1 late (`launch_deadline`, launch_clock.py): its loop
waits for new requests until just before the running decode step ends, so that they join N+1.
"""
from __future__ import annotations

import functools
import logging
import time

import torch

from jackfield.constrained.bitmask import mask_buffer
from jackfield.constrained.jump_forward import jump
from jackfield.constrained.manager import GrammarManager
from jackfield.io_struct import (AbortReq, BatchOutput, FinishReason, FlushCacheOut, FlushCacheReq, GetStatsReq,
                                 LoadLoRAReq, LoRAUpdateOut, ReqOutput, StatsOut, TokenizedEmbeddingReq,
                                 TokenizedGenerateReq, TokenLogprob, UnloadLoRAReq)
from jackfield.mem.chunk_cache import ChunkCache
from jackfield.mem.radix_cache import RadixCache
from jackfield.model_runner import ModelRunner
from jackfield.scheduler.adapters import AdapterScheduling
from jackfield.scheduler.admission import Admission, reject_reason
from jackfield.scheduler.batch_planner import plan_batch
from jackfield.scheduler.forward_job import ForwardJob, StepResult, forward_logits, run_forward_job, sample_job
from jackfield.scheduler.isolation import recover_from_failure
from jackfield.scheduler.launch_clock import LaunchClock
from jackfield.scheduler.outputs import collect_outputs, req_output, stats_out
from jackfield.scheduler.overlap import make_launcher
from jackfield.scheduler.policy import SchedulePolicy
from jackfield.scheduler.prompt_readout import take_readout
from jackfield.scheduler.release import KVReleaser
from jackfield.scheduler.req import Req
from jackfield.scheduler.schedule_batch import ScheduleBatch
from jackfield.scheduler.spec_step import SpecController
from jackfield.scheduler.stats import SchedulerStats

log = logging.getLogger(__name__)
GRAMMAR_POLL_S = 0.005


class Scheduler:
    def __init__(self, runner: ModelRunner, tokenizer=None, decoder=None):
        s = runner.setup.settings
        self.runner, self.tokenizer, self.settings = runner, tokenizer, s
        self.device = runner.device
        cache_cls = ChunkCache if s.disable_radix_cache else RadixCache
        self.tree_cache = cache_cls(runner.req_to_token_pool, runner.allocator, runner.page_size)
        self.policy = SchedulePolicy(s.schedule_policy, self.tree_cache, not s.disable_radix_cache)
        self.admission = Admission(self, s)
        self.adapters = AdapterScheduling(self, runner.lora) if runner.lora is not None else None
        self.releaser = KVReleaser(runner, self.tree_cache, on_leave=decoder.release if decoder else None)
        self.spec = SpecController(self, decoder, s) if decoder is not None else None
        self.eos_ids = tuple(tokenizer.eos_token_ids) if tokenizer is not None else runner.config.eos_token_ids
        self.vocab_size = runner.config.vocab_size
        self.waiting: list[Req] = []
        self.running: ScheduleBatch | None = None
        self.chunked_req: Req | None = None
        self.building: list[Req] = []      # admitted into the job being planned, not yet in running
        self.finished_out: list[Req] = []  # finished requests whose outputs are not sent yet
        self.leaving: list[Req] = []       # left the running batch, last token in flight (for abort_all)
        self.stats = SchedulerStats()
        self.last_was_prefill = False
        self._arrivals = 0
        self.mixed_ok = s.enable_mixed_chunk and runner.attn_backend.supports_mixed
        self.future_ids = torch.zeros(runner.max_running_requests + 1, dtype=torch.int64, device=self.device)
        self._run_job = functools.partial(run_forward_job, runner, self.future_ids)
        # On a CPU device there is no device time to hide host work behind: the worker thread would
        # only compete with torch's own threads. Unset means overlap on CUDA, serial on CPU.
        disabled = s.disable_overlap_schedule
        self.overlap = runner.device.type == "cuda" if disabled is None else not disabled
        self.worker = make_launcher(self.device, functools.partial(forward_logits, runner, self.future_ids),
                                    functools.partial(sample_job, runner, self.future_ids),
                                    self._run_job) if self.overlap else None
        if self.worker is not None:
            self.worker.close_with(self)
        # late launch (launch_clock.py): under overlap, a server's loop waits for new requests until
        # just before the running decode step ends, then plans the next one
        self.clock = LaunchClock() if self.overlap and not s.disable_late_launch and decoder is None else None
        self.inflight: tuple[ForwardJob, object] | None = None  # the running job and its pending result
        self.grammars = GrammarManager.from_setup(runner.setup, tokenizer, self.vocab_size, self.eos_ids)
        self.jump_forward = not s.disable_jump_forward
        self.jump_candidates: list[Req] = []  # constrained requests whose grammar forces text now
        self.mask_rows = mask_buffer(runner.max_running_requests + 1, self.vocab_size, self.device)
        self.fatal: str | None = None  # why the engine cannot go on (recover); its loop then stops

    # ---- inputs -------------------------------------------------------------------------------
    def handle(self, msg) -> list:
        """Apply one input message; returns any immediate outputs (aborted/finished requests, stats)."""
        if isinstance(msg, (TokenizedGenerateReq, TokenizedEmbeddingReq)):
            return self._add_request(msg)
        if isinstance(msg, AbortReq):
            return self._abort(msg.rid) + (self.adapters.finish_unloads() if self.adapters is not None else [])
        if isinstance(msg, FlushCacheReq):
            return [self._flush_cache()]
        if isinstance(msg, GetStatsReq):
            return [self.get_stats()]
        if isinstance(msg, (LoadLoRAReq, UnloadLoRAReq)):
            return self._lora_update(msg)
        raise TypeError(f"scheduler cannot handle {type(msg).__name__}")

    def _lora_update(self, msg) -> list:
        if self.adapters is None:
            return [LoRAUpdateOut(msg.request_id, False, 400, "LoRA is off: start with lora_paths, lora_dir or "
                                                               "enable_lora to serve adapters")]
        return [self.adapters.load(msg)] if isinstance(msg, LoadLoRAReq) else self.adapters.unload(msg)

    def _add_request(self, msg: TokenizedGenerateReq | TokenizedEmbeddingReq) -> list:
        req = Req(msg, self._arrivals)
        self._arrivals += 1
        reason = reject_reason(req, self.runner)
        if reason is None and req.lora_name is not None:
            reason = (self.adapters.resolve(req) if self.adapters is not None else
                      FinishReason("abort", message=f"unknown LoRA adapter '{req.lora_name}' (LoRA is off)"))
        if reason is None and req.sampling_params.constraint is not None:
            reason = self.grammars.submit(req)
            if reason is None and req.grammar is None:
                return []  # compiling: the request waits in the grammar queue
        if reason is not None:
            return [self._finish_now(req, reason)]
        self.waiting.append(req)
        return []

    def _finish_now(self, req: Req, reason: FinishReason) -> BatchOutput:
        req.finished_reason = reason
        return BatchOutput([self._req_output(req)])

    def start_sampling(self, r: Req) -> None:
        """Reset r's sampler slot at admission; a retracted request gets its output counts back."""
        self.runner.sampler.start_request(r.req_pool_idx, r.origin_input_ids, r.sampling_params.needs_penalties)
        counts = self.runner.sampler.output_counts
        if counts is not None and r.output_ids:
            ids = torch.tensor(r.output_ids, dtype=torch.int64, device=self.device)
            counts[r.req_pool_idx].index_add_(0, ids, torch.ones_like(ids, dtype=torch.float32))

    # ---- the loop body ------------------------------------------------------------------------
    def holds_kv(self) -> bool:
        return self.chunked_req is not None or bool(self.running and len(self.running))

    def has_work(self) -> bool:
        return bool(self.waiting) or self.holds_kv() or self.inflight is not None or bool(self.grammars.queue)

    def step(self) -> list[BatchOutput]:
        """Plan and launch one forward; returns the outputs produced (under overlap, those of the
        previous forward). With a speculative decoder, a decode step may instead be a speculative
        step (spec_step.py), which runs serially."""
        self._admit_compiled()
        if self.spec is not None:
            ran = self.spec.wants_step() and self.spec.step()
            self.spec.last_was_spec = ran
            if ran:
                self.last_was_prefill = False
                self._after_step(idle=False)
                return self._step_outputs()
        t0, prev = time.perf_counter(), self.inflight
        job = plan_batch(self)
        self._run_planned(job, t0)
        if self.spec is not None and job is not None and not job.extend_reqs and self._steady_decode(prev):
            self.spec.policy.record_plain(len(job.decode_reqs), time.perf_counter() - t0)
        self._after_step(idle=job is None and self.inflight is None)
        return self._step_outputs()

    def _steady_decode(self, prev) -> bool:
        """Whether a plain decode step's wall time is its own forward's: always when serial; under
        overlap only when the forward it waited for was a decode step too (after a prefill it waited
        for the prefill, after a speculative step or an idle loop for nothing), so the load policy
        compares speculative steps with decode steps and not with prefills."""
        return not self.overlap or (prev is not None and not prev[0].extend_reqs)

    def _step_outputs(self):
        """What a step returns: the finished and streamed outputs, and the answers of LoRA unloads
        that the step completed."""
        return self._emit() + (self.adapters.finish_unloads() if self.adapters is not None else [])

    def launch_deadline(self) -> float | None:
        """The `time.monotonic()` until which the caller may wait for new requests before the next
        `step()` without the device running dry (late launch, launch_clock.py); None: step now."""
        if self.clock is None or self.inflight is None or self.waiting or self.chunked_req is not None:
            return None
        if self.grammars.queue or self.jump_candidates:
            return None
        return self.clock.launch_at()

    def _run_planned(self, job: ForwardJob | None, planned_at: float) -> None:
        if not self.overlap:
            if job is not None:
                self._fill_mask(job)
                result = self._run_job(job)
                self._commit(job)
                self._process(job, result)
        else:
            prev, self.inflight = self.inflight, None
            if job is not None:  # queued behind prev on the device: the device never waits for the host
                self.inflight = (job, self.worker.launch(job))
                if self.clock is not None:
                    self.clock.launched(time.monotonic(), time.perf_counter() - planned_at, _decode_batch(job))
            if prev is not None:
                result = self._wait(prev)
                self._commit(prev[0])
                self._process(prev[0], result)
            if job is not None:  # prev's tokens are accepted: job's grammar rows can be masked now
                self._fill_mask(job, self.inflight[1])

    def _after_step(self, idle: bool) -> None:
        """Jump-forward of the constrained requests whose grammar forces text, a short sleep when
        only grammar compiles are pending (`idle`), and the KV audit once the batch drains."""
        if self.jump_candidates:
            self._jump_forward()
        if idle and self.grammars.queue:
            self.grammars.wait(GRAMMAR_POLL_S)  # only compiles are pending: sleep until one ends
        self._audit_when_idle()

    # ---- constrained requests -----------------------------------------------------------------
    def _admit_compiled(self) -> None:
        """Requests whose grammar finished compiling join the waiting queue (or fail with its error)."""
        if self.grammars.queue:
            ready, failed = self.grammars.poll()
            self.waiting += ready
            self.finished_out += failed

    def _fill_mask(self, job: ForwardJob, pending=None) -> None:
        """Fill the job's grammar rows (their requests' earlier tokens are all accepted) and let its
        sampling go on."""
        if job.mask is not None and not job.mask.filled:
            job.mask.fill(self.mask_rows, self.device)
        if pending is not None:
            pending.mask_ready()

    def _advance_grammar(self, r: Req, token: int) -> None:
        """Accept the sampled token; a refused token aborts the request, termination stops it."""
        if not r.grammar.accept_token(token):
            text = self.tokenizer.decode([token], skip_special_tokens=False) if self.tokenizer else ""
            r.finished_reason = FinishReason("abort", message=(
                f"constrained decoding failed: the {r.sampling_params.constraint.kind} constraint refused the "
                f"sampled token {token} ({text!r}); no allowed token was left for it"))
        elif r.grammar.is_terminated() and not r.finished:
            r.finished_reason = FinishReason("stop", token)
        elif self.jump_forward and not r.finished and not r.return_logprob and r.grammar.jump_forward_string():
            self.jump_candidates.append(r)

    def _jump_forward(self) -> None:
        """Append each candidate's forced continuation and park it for a one-forward extend
        (jackfield.constrained.jump_forward). Under overlap the running forward already holds
        the candidates' next decode, so it is waited for first."""
        if self.inflight is not None:
            self.sync()
        cands, self.jump_candidates = self.jump_candidates, []
        running = set(map(id, self.running.reqs)) if self.running is not None else set()
        vocab = self.grammars.vocab
        jumped = []
        for r in dict.fromkeys(cands):
            if r.finished or id(r) not in running:
                continue
            new = jump(r.grammar, vocab.tokens, vocab.encode, r.output_ids[-1],
                       r.sampling_params.max_new_tokens - len(r.output_ids))
            if new:
                jumped.append((r, new))
        if not jumped:
            return
        out = {id(r) for r, _ in jumped}
        self.running.filter([i for i, r in enumerate(self.running.reqs) if id(r) not in out])
        for r, new in jumped:
            self.releaser.park(r)
            r.output_ids += new
            self.stats.generated_tokens += len(new)
            self.stats.jump_forward_tokens += len(new)
            r.check_finished(self.eos_ids, self.tokenizer, new_tokens=len(new))
            if r.finished:
                self.finished_out.append(r)
            else:
                self.waiting.insert(0, r)

    def _audit_when_idle(self) -> None:
        """Once the last request has left: frees of already-free KV pages, counted without a wait
        while the batch ran (CUDA), are read now and logged; the allocator repairs its free list."""
        if not self.has_work():
            n = self.runner.allocator.audit()
            if n:
                log.error("%d KV page(s) were freed while already free; the free list was repaired "
                          "(a bug in the KV release path)", n)

    def sync(self) -> bool:
        """Wait for the running forward and process its results (overlap only); False if none ran."""
        if self.inflight is None:
            return False
        (job, pending), self.inflight = self.inflight, None
        result = self._wait((job, pending))
        self._commit(job)
        self._process(job, result)
        self.stats.syncs += 1
        return True

    def _wait(self, launched: tuple[ForwardJob, object]) -> StepResult:
        job, pending = launched
        result = pending.wait()
        if self.clock is not None:
            self.clock.finished(time.monotonic(), pending.device_seconds, _decode_batch(job))
        return result

    def _commit(self, job: ForwardJob) -> None:
        """After a forward: its prefill KV joins the tree; rows held back for it are freed; a
        suspect whose prefill completed is cleared (isolation.py)."""
        for r, kv, final in zip(job.extend_reqs, job.extend_kv, job.extend_final):
            if r.req_pool_idx is not None:
                self.tree_cache.cache_unfinished_req(r, kv)
            if final:
                r.suspect = False
        self.releaser.flush()

    def _process(self, job: ForwardJob, result: StepResult) -> None:
        """Record prompt readouts, append the sampled tokens, finish requests, release the finished ones."""
        if job.readout is not None:
            take_readout(job.extend_reqs, job.readout, result.prompt)
        touched = [(i, r) for i, (r, f) in enumerate(zip(job.extend_reqs, job.extend_final)) if f]
        n = len(job.extend_reqs)
        touched += [(n + j, r) for j, r in enumerate(job.decode_reqs)]
        busy = self.inflight[0].rows if self.inflight is not None else frozenset()
        if self.spec is not None and self.spec.decoder.needs_hidden_states:
            self.spec.observe_job(job)
        finished = []
        for row, r in touched:
            if r.finished or r.req_pool_idx is None:
                continue  # finished one step earlier: this token is the overlap's extra one
            if r.prefill_only:
                r.finished_reason = FinishReason("stop" if r.pooling else "length")
            else:
                self._append_token(r, result.tokens[row], result.logprobs, row)
            if r.finished:
                self.releaser.release(r, busy)
                finished.append(r)
        if finished and self.running is not None:
            self.running.filter([i for i, r in enumerate(self.running.reqs) if not r.finished])
        if finished and self.leaving:
            self.leaving = [r for r in self.leaving if not r.finished]
        self.finished_out += finished

    def _append_token(self, r: Req, token: int, logprobs, row: int) -> None:
        r.output_ids.append(token)
        self.stats.generated_tokens += 1
        if r.return_logprob and logprobs is not None:
            chosen, top_ids, top_vals = logprobs
            top = list(zip(top_ids[row], top_vals[row])) if top_ids is not None else []
            r.logprobs.append(TokenLogprob(token, chosen[row], top[:r.sampling_params.top_logprobs_num]))
        r.check_finished(self.eos_ids, self.tokenizer)
        if r.grammar is not None:
            self._advance_grammar(r, token)

    # ---- retraction and abort -----------------------------------------------------------------
    def retract(self, r: Req) -> None:
        """Free a running request's KV without caching it and requeue it; it resumes by recomputing.
        The caller removed it from the running batch and no running forward reads it."""
        self.releaser.drop(r, frozenset())
        r.retractions += 1
        self.stats.retractions += 1
        self.waiting.insert(0, r)

    def _abort(self, rid: str) -> list:
        queued = self.grammars.abort(rid)
        if queued is not None:
            return [self._finish_now(queued, FinishReason("abort", message="aborted"))]
        for i, r in enumerate(self.waiting):
            if r.rid == rid:
                self.waiting.pop(i)
                return [self._finish_now(r, FinishReason("abort", message="aborted"))]
        if not any(r.rid == rid for r in self._holders()):
            return []
        self.sync()
        if self.chunked_req is not None and self.chunked_req.rid == rid:
            r, self.chunked_req = self.chunked_req, None
        else:
            hits = [i for i, r in enumerate(self.running.reqs) if r.rid == rid] if self.running else []
            if not hits:
                return self._emit()  # it finished in the forward we waited for
            r = self.running.reqs[hits[0]]
            self.running.filter([i for i in range(len(self.running)) if i != hits[0]])
        r.finished_reason = FinishReason("abort", message="aborted")
        self.releaser.release(r, frozenset())
        self.finished_out.append(r)
        return self._emit()

    def recover(self, exc: Exception) -> list:
        """After `step()` raised: abort the request at fault (naming the plugin that raised) and
        requeue the others (isolation.py); returns the outputs to send. Under tensor parallelism
        every request is aborted and `fatal` set: the loop running this scheduler then stops."""
        from jackfield.plugin_faults import describe

        message = f"internal error: {describe(exc, getattr(self, 'pm', None))}"
        if self.runner.ranks is not None:
            # tensor parallelism: a rank may be gone or out of step (its forward failed too), and the
            # ranks cannot retry a forward together; every request fails and the engine stops
            self.fatal = f"{message} (tp_size {self.runner.tp.size}: the ranks cannot go on; the engine stops)"
            log.error("%s", self.fatal)
            self.runner.abandon_ranks()
            return self.abort_all(self.fatal, status=500)
        return recover_from_failure(self, message)

    def abort_all(self, message: str, status: int | None = None) -> list:
        """Fail every request (after an internal error); all KV is returned, none is cached."""
        done = self.drop_holders() + [r for r in self.waiting + self.grammars.drain() if not r.finished]
        for r in done:
            r.finished_reason = FinishReason("abort", message=message, status=status)
        self.waiting = []
        self.finished_out += done
        return self._emit()

    def drop_holders(self) -> list[Req]:
        """After a failed forward: wait out the running one, free the KV of every request holding some
        (none is cached) and empty the running state; returns those requests (unfinished, once each)."""
        holders = self._holders() + [r for r in self.leaving if not r.finished] + self.building
        if self.inflight is not None:
            (job, pending), self.inflight = self.inflight, None
            try:
                if job.mask is not None:
                    job.mask.release()  # its forward may wait for a mask that will never be filled
                pending.wait()
            except Exception:
                log.debug("the running forward failed too", exc_info=True)
        self.releaser.flush()
        reqs = [r for r in {id(r): r for r in holders}.values() if not r.finished]
        for r in reqs:
            if r.req_pool_idx is not None:
                self.releaser.drop(r, frozenset())
        self.running, self.chunked_req, self.building, self.leaving = None, None, [], []
        self.jump_candidates = []
        return reqs

    def _holders(self) -> list[Req]:
        """Requests holding KV in the scheduler's state: the chunked one and the running batch."""
        return ([self.chunked_req] if self.chunked_req else []) + (list(self.running.reqs) if self.running else [])

    def _flush_cache(self) -> FlushCacheOut:
        if self.has_work():
            return FlushCacheOut(False, "cannot flush the cache while requests are running")
        self.tree_cache.reset()
        return FlushCacheOut(True)

    def close(self) -> None:
        """Stop the forward worker (overlap); the scheduler cannot step afterwards."""
        if self.worker is not None:
            self.worker.close()
        self.grammars.close()
        self.runner.close()  # tensor parallelism: releases the follower ranks

    # ---- outputs ------------------------------------------------------------------------------
    def _req_output(self, r: Req) -> ReqOutput:
        return req_output(r)

    def _emit(self) -> list[BatchOutput]:
        finished, self.finished_out = self.finished_out, []
        return collect_outputs(finished, self.running, self.settings.stream_interval)

    def get_stats(self) -> StatsOut:
        return stats_out(self)


def _decode_batch(job: ForwardJob) -> int | None:
    """The batch size of a plain decode job; None for a job that extends (prefills) any request."""
    return None if job.extend_reqs else len(job.decode_reqs)
