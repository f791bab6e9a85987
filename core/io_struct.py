"""Typed messages between the tokenizer manager, the scheduler and the detokenizer.

The same messages travel over in-process queues (offline Engine) and over ZMQ (server), pickled.
Token-id outputs are incremental: each BatchTokenIdOut carries only the tokens produced since the
previous message for that request.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jackfield.sampling.params import SamplingParams


@dataclass
class TokenizedGenerateReq:
    rid: str
    input_ids: list[int]
    sampling_params: SamplingParams
    return_logprob: bool = False
    top_logprobs_num: int = 0
    stream: bool = False
    input_text: str | None = None
    lora: str | None = None  # the LoRA adapter's name; None: the base model
    logprob_start_len: int = -1  # >= 0: logprobs of the prompt tokens from this position on (SGLang's)
    priority: int = 0            # waiting-queue class: higher runs first (the Batch API uses -1)


POOLINGS = ("last", "mean")


@dataclass
class TokenizedEmbeddingReq:
    """A prefill-only request: the prompt's final hidden states pooled into one vector, no decode.

    `pooling` is "last" (the last token's hidden state) or "mean" (the average over the prompt).
    The output is one ReqOutput with `embedding` set (not normalized) and finish reason "stop".
    """

    rid: str
    input_ids: list[int]
    pooling: str = "last"
    priority: int = 0


@dataclass
class AbortReq:
    rid: str


@dataclass
class FlushCacheReq:
    """Drop every cached prefix (refused while requests are running)."""


@dataclass
class GetStatsReq:
    """Ask the scheduler for a StatsOut."""


@dataclass
class LoadLoRAReq:
    """Read the adapter at `path` into host memory under `name` (answered by a LoRAUpdateOut)."""

    name: str
    path: str
    request_id: str


@dataclass
class UnloadLoRAReq:
    """Unload adapter `name` once its requests (queued or running) have finished; new requests for
    it are refused from now on (answered by a LoRAUpdateOut when it is gone)."""

    name: str
    request_id: str


@dataclass
class LoRAUpdateOut:
    """The answer to a LoadLoRAReq / UnloadLoRAReq: `status` is an HTTP status (200 when ok), and
    `adapters` describes every adapter loaded afterwards."""

    request_id: str
    ok: bool
    status: int = 200
    message: str = ""
    param: str | None = None
    adapters: list = field(default_factory=list)


@dataclass
class FinishReason:
    kind: str               # "stop" | "length" | "abort"
    matched: Any = None     # the stop token id or stop string, when kind == "stop"
    message: str = ""       # why, for aborts
    status: int | None = None  # the HTTP status the server answers an abort with (None: derived from message)

    def to_openai(self) -> str:
        return self.kind if self.kind in ("stop", "length") else "abort"


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float | None  # None only for the first prompt token, which has no context
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class ReqOutput:
    """One request's increment inside a batch output."""

    rid: str
    new_token_ids: list[int]
    finished: FinishReason | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    logprobs: list[TokenLogprob] | None = None
    text: str | None = None  # filled by the detokenizer
    spec: dict | None = None  # speculative decoding, once verified: verify_ct, proposed, accepted, emitted
    input_logprobs: list[TokenLogprob] | None = None  # prompt tokens from logprob_start_len, sent once
    embedding: list[float] | None = None              # TokenizedEmbeddingReq: the pooled hidden state
    # on the first output that carries tokens: the scheduler's time.monotonic() when it received the
    # request, first planned a forward for it, and sent this output
    timing: tuple[float, float, float] | None = None


@dataclass
class BatchOutput:
    outputs: list[ReqOutput]


@dataclass
class StatsOut:
    num_running: int
    num_waiting: int
    kv_used_tokens: int
    kv_total_tokens: int
    cache_hit_rate: float
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    total_prompt_tokens: int = 0
    total_cached_tokens: int = 0
    total_generated_tokens: int = 0
    kv_cached_tokens: int = 0    # KV slots held only by the radix cache (evictable)
    spec_verify_steps: int = 0     # speculative decoding: request-steps verified,
    spec_proposed: int = 0         # draft tokens proposed,
    spec_accepted: int = 0         # draft tokens accepted,
    spec_emitted: int = 0          # and tokens those steps produced (accepted + the target's own)


@dataclass
class FlushCacheOut:
    ok: bool
    message: str = ""
