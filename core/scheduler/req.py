"""Req: one request's state inside the scheduler (a generation, or a prefill-only embedding).

Prompt logprobs (`logprob_start_len` >= 0) are read from the extend forwards that compute the
prompt, chunk by chunk (`prompt_readout.py`): the logprob of prompt token p comes from the logits
at position p - 1. So that those positions are computed, a request still missing some takes at most
`next_input_logprob - 1` tokens from the radix cache (`prefix_limit`); the cache still serves the
positions before that. Mean pooling needs every position, so it takes no cached prefix at all.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

import torch

from jackfield.io_struct import FinishReason, TokenizedEmbeddingReq, TokenizedGenerateReq, TokenLogprob
from jackfield.sampling.params import SamplingParams

EMBEDDING_PARAMS = SamplingParams(max_new_tokens=0, temperature=0.0)

EMPTY = torch.empty(0, dtype=torch.int64)


class TokenView(Sequence):
    """A request's prompt + output tokens as one read-only sequence, without copying them (a
    speculative decoder reads every running request's tokens every step)."""

    def __init__(self, prompt: list[int], output: list[int]):
        self.prompt, self.output = prompt, output

    def __len__(self) -> int:
        return len(self.prompt) + len(self.output)

    def __getitem__(self, i):
        n = len(self.prompt)
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step == 1 and start >= n:
                return self.output[start - n:stop - n]
            if step == 1 and stop <= n:
                return self.prompt[start:stop]
            return (self.prompt + self.output)[i]
        if i < 0:
            i += len(self)
        return self.prompt[i] if i < n else self.output[i - n]


class Req:
    def __init__(self, msg: TokenizedGenerateReq | TokenizedEmbeddingReq, arrival_seq: int):
        self.rid = msg.rid
        self.origin_input_ids: list[int] = list(msg.input_ids)
        self.priority = msg.priority
        self.pooling: str | None = None     # "last" | "mean" for an embedding request
        self.logprob_start_len = -1         # first prompt position whose logprob is returned; -1: none
        self.next_input_logprob: int | None = None  # next prompt position whose logprob no forward reads yet
        self.input_logprobs: list[TokenLogprob] = []  # read so far, from logprob_start_len on
        self.input_logprobs_sent = False
        self.embedding: torch.Tensor | None = None  # float32 [hidden] on the host: last row, or the sum (mean)
        if isinstance(msg, TokenizedEmbeddingReq):
            self.pooling, params, self.stream = msg.pooling, EMBEDDING_PARAMS, False
        else:
            params = msg.sampling_params
            if msg.return_logprob and not params.logprobs:
                params = replace(params, logprobs=True,
                                 top_logprobs_num=max(msg.top_logprobs_num, params.top_logprobs_num))
            self.stream = msg.stream
            if msg.logprob_start_len >= 0 and self.origin_input_ids:
                self.logprob_start_len = min(msg.logprob_start_len, len(self.origin_input_ids) - 1)
                self.next_input_logprob = self.logprob_start_len
                if self.logprob_start_len == 0:  # no context: no logprob
                    self.input_logprobs.append(TokenLogprob(self.origin_input_ids[0], None))
                    self.next_input_logprob = 1 if len(self.origin_input_ids) > 1 else None
        self.sampling_params: SamplingParams = params
        self.lora_name: str | None = getattr(msg, "lora", None)
        self.adapter = None  # its LoRAAdapter, resolved on arrival (None: the base model)
        self.arrival_seq = arrival_seq
        self.output_ids: list[int] = []
        # KV state: req_to_token[req_pool_idx, :kv_len] holds this request's KV slots. kv_len counts
        # every launched forward, including one still running under overlap scheduling.
        self.req_pool_idx: int | None = None
        self.kv_len = 0
        self.prefix_indices: torch.Tensor = EMPTY  # tree slots (+ own unaligned tail) the tree last matched
        self.last_node = None                       # locked tree node where the cached prefix ends
        self.cache_protected_len = 0                # req_to_token[:, :cache_protected_len] are tree slots
        self.extend_len = 0                         # tokens the planned extend computes
        self.cached_tokens = -1                     # prompt tokens served by the cache, set at first admission
        self.finished_reason: FinishReason | None = None
        self.retractions = 0
        self.suspect = False   # was in a failed forward with others; prefilled alone (isolation.py)
        self.failures = 0      # failed forwards it was in without being singled out
        self.sent_len = 0
        # time.monotonic() when the scheduler took the request in and first planned a forward for it
        self.received_at = time.monotonic()
        self.scheduled_at: float | None = None
        self.logprobs: list[TokenLogprob] = []
        self.grammar = None  # the constraint's matcher (jackfield.sdk.Grammar) once compiled
        # speculative decoding: verify steps, draft nodes proposed and accepted, tokens they emitted
        self.spec_verify_ct = 0
        self.spec_proposed = 0
        self.spec_accepted = 0
        self.spec_emitted = 0

    @property
    def all_ids(self) -> list[int]:
        return self.origin_input_ids + self.output_ids

    def token_view(self) -> TokenView:
        return TokenView(self.origin_input_ids, self.output_ids)

    @property
    def return_logprob(self) -> bool:
        return self.sampling_params.logprobs

    @property
    def cache_namespace(self) -> int | None:
        """The prefix-cache namespace: KV is shared only between requests of the same adapter load."""
        return self.adapter.uid if self.adapter is not None else None

    @property
    def prefill_only(self) -> bool:
        """Finishes when its prompt is computed: an embedding, or prompt logprobs with max_new_tokens 0."""
        return self.pooling is not None or self.sampling_params.max_new_tokens == 0

    @property
    def input_logprobs_done(self) -> bool:
        """Every requested prompt logprob has been read (processed, not only planned)."""
        return len(self.input_logprobs) == len(self.origin_input_ids) - self.logprob_start_len

    @property
    def prefix_limit(self) -> int:
        """The most cached prefix tokens this request may take (see the module docstring)."""
        limit = max(len(self.all_ids) - 1, 0)
        if self.pooling == "mean":
            return 0
        nxt = self.next_input_logprob
        return limit if nxt is None else min(limit, nxt - 1)

    @property
    def finished(self) -> bool:
        return self.finished_reason is not None

    @property
    def remaining_prefill(self) -> int:
        """Tokens still to compute before the next sample (a retracted request recomputes its outputs);
        meaningful while the request is prefilling."""
        return len(self.origin_input_ids) + len(self.output_ids) - self.kv_len

    def match_prefix(self, tree_cache) -> None:
        """Refresh prefix_indices/last_node from the tree (only for requests holding no KV)."""
        match = tree_cache.match_prefix(self.all_ids[:self.prefix_limit], self.cache_namespace)
        self.prefix_indices, self.last_node = match.indices, match.last_node

    def check_finished(self, eos_ids: tuple[int, ...], tokenizer, new_tokens: int = 1) -> None:
        """Finish on length, EOS / stop token (the last token) or a stop string in the text of the
        last `new_tokens` tokens (jump-forward appends several at once)."""
        p, out = self.sampling_params, self.output_ids
        if not out:
            return
        last = out[-1]
        if len(out) >= p.max_new_tokens:
            self.finished_reason = FinishReason("length")
        if len(out) < p.min_new_tokens:
            return
        if (not p.ignore_eos and last in eos_ids) or last in p.stop_token_ids:
            self.finished_reason = FinishReason("stop", last)
        elif p.stop and tokenizer is not None:
            width = max(len(s) for s in p.stop) + 7 + new_tokens
            tail = tokenizer.decode(out[-width:], skip_special_tokens=p.skip_special_tokens)
            for s in p.stop:
                if s in tail:
                    self.finished_reason = FinishReason("stop", s)
                    break
