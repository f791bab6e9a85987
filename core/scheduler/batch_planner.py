"""Planning one forward: admission, decode memory, and the ForwardJob with its launched-state update.

`plan_batch(sched)` decides what the next forward computes (SGLang's get_next_batch_to_run):
prefill has priority; with mixed mode the running batch's decodes ride along as length-1 extends,
without it prefill and decode steps alternate while both have work. After building the job it
advances the launched state right away (kv_len, output_lens, the chunked request, the running batch
that finished prefills join), so the next plan can be made before this job's tokens are known.
"""
from __future__ import annotations

import time
from dataclasses import replace

import torch

from jackfield.constrained.bitmask import StepMask
from jackfield.io_struct import FinishReason
from jackfield.mem.device_copy import to_device
from jackfield.sampling.batch import SamplingBatch
from jackfield.scheduler.forward_job import ForwardJob
from jackfield.scheduler.prompt_readout import plan_readout
from jackfield.scheduler.schedule_batch import ScheduleBatch, build_decode_batch, build_extend_batch


def plan_batch(s) -> ForwardJob | None:
    running = s.running if s.running is not None and len(s.running) else None
    prefill = None
    if running is None or s.mixed_ok or not s.last_was_prefill:
        prefill = s.admission.schedule_prefill(len(running) if running else 0)
        if prefill is None and s.chunked_req is not None and running is None:
            _abort_chunked_oom(s)
    decode = None
    if running is not None and s.inflight is not None:
        running = _drop_launched_finishers(s)
    if running is not None and (prefill is None or s.mixed_ok):
        if s.inflight is not None and not s.admission.decode_fits(running):
            s.sync()  # retraction needs the running forward's results; they may also free memory
        running = s.running if s.running is not None and len(s.running) else None
        alone = prefill is None and s.chunked_req is None
        if running is not None and s.admission.reserve_decode(running, s.finished_out, alone):
            decode = running
    if prefill is None and decode is None:
        return None
    s.last_was_prefill = prefill is not None and decode is None
    reqs, slots = prefill if prefill is not None else ([], None)
    s.building = reqs
    job = _build_job(s, reqs, slots, decode)
    s.building = []
    return job


def _drop_launched_finishers(s) -> ScheduleBatch | None:
    """Under overlap: take out of the running batch the requests whose last token (by max_new_tokens)
    is already in the running forward. Their finish is certain, so they need no further decode; the
    running job still holds them and `_process` finishes and releases them in this same step. Should
    that forward fail first, `abort_all` finds them in `s.leaving`."""
    reqs = s.running.reqs
    keep = [i for i, r in enumerate(reqs) if r.kv_len - len(r.origin_input_ids) + 1 < r.sampling_params.max_new_tokens]
    if len(keep) < len(reqs):
        kept = set(keep)
        s.leaving += [r for i, r in enumerate(reqs) if i not in kept]
        s.running.filter(keep)
    return s.running if len(s.running) else None


def _abort_chunked_oom(s) -> None:
    """The chunked request's next chunk does not fit and nothing else holds KV: its prompt is larger
    than the pool can ever give it."""
    s.sync()
    r, s.chunked_req = s.chunked_req, None
    r.finished_reason = FinishReason("abort", message="out of KV cache memory for the prompt")
    s.releaser.release(r, frozenset())
    s.finished_out.append(r)


def _build_job(s, reqs: list, slots: torch.Tensor | None, decode: ScheduleBatch | None) -> ForwardJob:
    dev = s.device
    fb = build_extend_batch(reqs, decode, s.runner, slots) if reqs else build_decode_batch(decode, s.runner)
    final = [r.kv_len + r.extend_len == len(r.origin_input_ids) + len(r.output_ids) for r in reqs]
    new_sampling = None
    samplings, lens = [], []
    if reqs:
        new_sampling = SamplingBatch.from_params([r.sampling_params for r in reqs], [r.req_pool_idx for r in reqs],
                                                 s.vocab_size, s.eos_ids, dev)
        samplings.append(new_sampling)
        lens.append(to_device([len(r.output_ids) for r in reqs], torch.int64, dev))
    if decode is not None:
        samplings.append(decode.sampling)
        lens.append(decode.output_lens)
    sampling = samplings[0] if len(samplings) == 1 else samplings[0].merge(samplings[1])
    decode_reqs = list(decode.reqs) if decode is not None else []
    if s.adapters is not None:
        fb = replace(fb, lora_slots=s.adapters.slots(list(reqs) + decode_reqs))
    kept = [f and not r.prefill_only for r, f in zip(reqs, final)]
    counted = to_device(kept + [True] * len(decode_reqs), torch.bool, dev)
    job = ForwardJob(
        fb=fb, sampling=sampling, output_lens=lens[0] if len(lens) == 1 else torch.cat(lens), counted=counted,
        decode_rows=decode.req_pool_indices if decode is not None else None, extend_reqs=list(reqs),
        extend_kv=[r.kv_len + r.extend_len for r in reqs], extend_final=final, decode_reqs=decode_reqs,
        rows=frozenset(r.req_pool_idx for r in reqs + decode_reqs), mask=_grammar_rows(reqs, kept, decode_reqs),
        readout=plan_readout(reqs, dev) if reqs else None)
    s.stats.record_step(sum(r.extend_len for r in reqs), len(decode_reqs))
    _advance(s, reqs, kept, new_sampling, decode)
    return job


def _grammar_rows(reqs: list, kept: list[bool], decode_reqs: list) -> StepMask | None:
    """The rows whose token a grammar constrains (a non-final prefill chunk's token is thrown away)."""
    rows = [(i, r) for i, (r, f) in enumerate(zip(reqs, kept)) if f and r.grammar is not None]
    rows += [(len(reqs) + j, r) for j, r in enumerate(decode_reqs) if r.grammar is not None]
    return StepMask(rows, len(reqs) + len(decode_reqs)) if rows else None


def _advance(s, reqs: list, joining: list[bool], new_sampling: SamplingBatch | None,
             decode: ScheduleBatch | None) -> None:
    """Move the launched state past this job: KV lengths, output counts, running batch membership.
    `joining`: the extend requests whose prefill this job completes and that go on to decode (a
    prefill-only request completes without joining; `_process` finishes it)."""
    for r in reqs:
        r.kv_len += r.extend_len
        if r.scheduled_at is None:
            r.scheduled_at = time.monotonic()
    if decode is not None:
        decode.advance()
    if s.chunked_req is not None and s.chunked_req.remaining_prefill == 0:
        s.chunked_req = None
    # prefill-only requests whose prompt this job completes: held only by the job until `_process`
    # finishes them; should the forward fail first, `abort_all` finds them in `s.leaving`
    s.leaving += [r for r in reqs if r.prefill_only and r.remaining_prefill == 0]
    done = [i for i, f in enumerate(joining) if f]
    if not done:
        return
    joined = [reqs[i] for i in done]
    out_lens = to_device([len(r.output_ids) + 1 for r in joined], torch.int64, s.device)
    batch = ScheduleBatch(joined, s.device, new_sampling.filter(torch.tensor(done, dtype=torch.int64)), out_lens)
    if s.running is None or len(s.running) == 0:
        s.running = batch
    else:
        s.running.merge(batch)
