"""ForwardJob: everything one forward + sample needs, and the function that runs it.

The scheduler builds a job on its own thread; `run_forward_job` may run inline (normal loop) or on
the forward worker (overlap loop, `overlap.py`). A job only reads tensors the scheduler never changes
in place afterwards, so the scheduler can prepare the next job while this one runs.

The future map `future_ids[req_pool_idx]` holds the token each request sampled last. A forward writes
it after sampling and a later decode reads it right before its forward, on the same thread or stream,
so the token never has to reach the CPU before the next step is launched. Rows whose token is thrown
away (a non-final prefill chunk, a request that finished one step earlier) write harmless values:
the row's next reader is always a later forward of the same request, or the first forward of a new
owner, which writes the row itself before anyone reads it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from jackfield.constrained.bitmask import StepMask
from jackfield.sampling.batch import SamplingBatch
from jackfield.scheduler.prompt_readout import PromptReadout, PromptResult
from jackfield.scheduler.req import Req
from jackfield.sdk.forward_batch import ForwardBatch


@dataclass
class ForwardJob:
    fb: ForwardBatch                  # input_ids holds the extend tokens only
    sampling: SamplingBatch
    output_lens: torch.Tensor         # [B] int64, tokens generated before this step
    counted: torch.Tensor             # [B] bool, rows whose token is kept (penalty counts)
    decode_rows: torch.Tensor | None  # [D] int64 req_pool indices of the trailing decode rows
    extend_reqs: list[Req]            # rows 0..E-1
    extend_kv: list[int]              # KV length each extend request reaches with this forward
    extend_final: list[bool]          # this extend completes the request's prefill (its token is kept)
    decode_reqs: list[Req]            # rows E..E+D-1
    rows: frozenset[int]              # req_pool indices this forward reads
    mask: StepMask | None = None      # grammar rows: filled once their earlier tokens are accepted
    readout: PromptReadout | None = None  # prompt logprobs / pooled states to read (prompt_readout.py)


@dataclass
class StepResult:
    tokens: list[int]                 # one sampled token per row
    logprobs: tuple | None            # (chosen [B], top ids [B][k] | None, top vals [B][k] | None) as lists
    prompt: PromptResult | None = None  # the job's readout, as host lists


@dataclass(frozen=True)
class ForwardOutput:
    sample: object                    # the sampler's SampleOutput
    prompt: PromptResult | None       # the readout's device tensors, when the job has one


def forward_logits(runner, future_ids: torch.Tensor, job: ForwardJob) -> tuple[torch.Tensor, PromptResult | None]:
    """Resolve decode inputs from the future map and run the model; returns the logits and the job's
    prompt readout (device tensors; None when the job reads nothing)."""
    fb = job.fb
    if job.decode_rows is not None:
        dec = future_ids.index_select(0, job.decode_rows)
        ids = torch.cat([fb.input_ids, dec]) if fb.input_ids.numel() else dec
        fb = replace(fb, input_ids=ids)
    if job.readout is None:
        return runner.forward(fb), None
    return runner.forward_reading(fb, job.readout)


def sample_job(runner, future_ids: torch.Tensor, job: ForwardJob, logits: torch.Tensor):
    """Sample (under the job's grammar mask, waiting for it to be filled) and publish the tokens."""
    bitmask = job.mask.wait() if job.mask is not None else None
    out = runner.sampler.sample(logits, job.sampling, job.output_lens, job.counted, bitmask)
    future_ids[job.fb.req_pool_indices] = out.next_token_ids
    return out


def launch_forward_job(runner, future_ids: torch.Tensor, job: ForwardJob) -> ForwardOutput:
    """Forward, sample, publish the tokens. Returns the device outputs (asynchronous on CUDA)."""
    logits, prompt = forward_logits(runner, future_ids, job)
    return ForwardOutput(sample_job(runner, future_ids, job, logits), prompt)


def step_result(out: ForwardOutput) -> StepResult:
    """The forward's outputs as host lists (waits for the device)."""
    prompt = out.prompt.to_lists() if out.prompt is not None else None
    return StepResult(out.sample.next_token_ids.tolist(), logprob_rows(out.sample), prompt)


def run_forward_job(runner, future_ids: torch.Tensor, job: ForwardJob) -> StepResult:
    return step_result(launch_forward_job(runner, future_ids, job))


def logprob_rows(out) -> tuple | None:
    if out.logprobs is None:
        return None
    ids = out.top_logprob_ids.tolist() if out.top_logprob_ids is not None else None
    vals = out.top_logprob_vals.tolist() if out.top_logprob_vals is not None else None
    return out.logprobs.tolist(), ids, vals
