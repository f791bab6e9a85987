"""The vectorized sampler: penalties, bias, top-k / top-p / min-p and seeded draws for a whole batch.

One `sample` call handles every row of a running batch with batched tensor ops; python flags on the
SamplingBatch skip the transforms no row needs. Draws use the exponential race
(argmax(probs / E), E ~ Exp(1)). Seeded rows take E from a counter-based hash of
(seed, output position, token id), so their tokens do not depend on which other requests share the
batch or where the row sits in it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from jackfield.constrained.bitmask import apply_bitmask
from jackfield.sampling.batch import SamplingBatch
from jackfield.sampling.penalties import apply_logit_bias, apply_min_new_tokens, apply_penalties


@dataclass(frozen=True)
class SampleOutput:
    """The chosen tokens of one step and, when the batch asks for them, their logprobs."""

    next_token_ids: torch.Tensor               # [B] int64
    logprobs: torch.Tensor | None = None       # [B] float32: logprob of the chosen token, from raw logits
    top_logprob_ids: torch.Tensor | None = None  # [B, k] int64, k = batch.max_top_logprobs, best first
    top_logprob_vals: torch.Tensor | None = None  # [B, k] float32


class Sampler:
    """Samples next tokens and owns the per-request penalty state, indexed by request slot.

    The penalty buffers (`output_counts` [max_reqs, V] float32, `prompt_mask` [max_reqs, V] bool)
    are allocated the first time a request that needs penalties starts, so workloads without
    penalties never pay for them. Unseeded rows draw from a generator seeded with `seed`.
    """

    def __init__(self, vocab_size: int, max_reqs: int, device: torch.device | str, seed: int = 0):
        self.vocab_size = vocab_size
        self.max_reqs = max_reqs
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.output_counts: torch.Tensor | None = None
        self.prompt_mask: torch.Tensor | None = None

    def start_request(self, slot: int, prompt_ids: list[int], needs_penalties: bool = False) -> None:
        """Reset `slot` for a newly admitted request and record its prompt tokens.

        Pass `needs_penalties=True` for requests with a repetition, frequency or presence penalty;
        the first such call allocates the penalty buffers.
        """
        if needs_penalties and self.output_counts is None:
            shape = (self.max_reqs, self.vocab_size)
            self.output_counts = torch.zeros(shape, dtype=torch.float32, device=self.device)
            self.prompt_mask = torch.zeros(shape, dtype=torch.bool, device=self.device)
        self.release_request(slot)
        if self.prompt_mask is not None and prompt_ids:
            ids = torch.tensor(prompt_ids, dtype=torch.int64, device=self.device)
            self.prompt_mask[slot].index_fill_(0, ids, True)

    def release_request(self, slot: int) -> None:
        """Clear `slot`'s penalty state when its request leaves."""
        if self.output_counts is not None:
            self.output_counts[slot].zero_()
            self.prompt_mask[slot].zero_()

    def sample(self, logits: torch.Tensor, batch: SamplingBatch, output_lens: torch.Tensor,
               counted: torch.Tensor | None = None, bitmask: torch.Tensor | None = None) -> SampleOutput:
        """Choose one token per row of `logits` [B, V] and count it in the slot's penalty state.

        `output_lens` [B] int64 is how many tokens each request has generated before this step; it
        drives min_new_tokens and the seeded noise. `counted` [B] bool marks the rows whose token is
        kept as output (default: all); pass False for rows whose token is discarded, such as a
        non-final chunk of a chunked prefill, so it does not enter the penalty counts. `bitmask`
        [B, ceil(V/32)] int32 on the logits' device is the grammar mask (jackfield.sdk.grammar
        format), applied after the penalties and before logit_bias (SGLang's order). The caller's
        logits are left untouched.
        """
        plain = batch.all_greedy and not (batch.need_logprobs or batch.need_penalties or batch.need_logit_bias
                                          or batch.need_min_new_tokens or bitmask is not None)
        # an argmax of the logits as they are (bf16 -> fp32 is exact, so the choice is the same)
        logits = logits if plain else logits.to(torch.float32, copy=True)
        raw_logprobs = torch.log_softmax(logits, dim=-1) if batch.need_logprobs else None
        if batch.need_penalties:
            if self.output_counts is None:
                raise RuntimeError("batch needs penalties but no request started with needs_penalties=True")
            counts = self.output_counts.index_select(0, batch.req_slots)
            apply_penalties(logits, counts, self.prompt_mask.index_select(0, batch.req_slots), batch)
        if bitmask is not None:
            apply_bitmask(logits, bitmask)
        if batch.need_logit_bias:
            apply_logit_bias(logits, batch)
        if batch.need_min_new_tokens:
            apply_min_new_tokens(logits, batch, output_lens)
        next_ids = argmax_rows(logits)
        if not batch.all_greedy:
            next_ids = torch.where(batch.greedy, next_ids, self._draw(logits, batch, output_lens))
        if self.output_counts is not None:
            ones = torch.ones_like(next_ids, dtype=torch.float32) if counted is None else counted.float()
            self.output_counts.index_put_((batch.req_slots, next_ids), ones, accumulate=True)
        if raw_logprobs is None:
            return SampleOutput(next_ids)
        chosen = raw_logprobs.gather(1, next_ids.unsqueeze(1)).squeeze(1)
        if batch.max_top_logprobs == 0:
            return SampleOutput(next_ids, chosen)
        top_vals, top_ids = raw_logprobs.topk(batch.max_top_logprobs, dim=-1)
        return SampleOutput(next_ids, chosen, top_ids, top_vals)

    def _draw(self, logits: torch.Tensor, batch: SamplingBatch, output_lens: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.div_(batch.temperatures), dim=-1)
        if batch.need_top_k or batch.need_top_p or batch.need_min_p:
            probs = _top_k_top_p_min_p(probs, batch)
        noise = torch.empty_like(probs).exponential_(generator=self.generator)
        if batch.need_seeded:
            seeded = seeded_exponential(batch.seeds, output_lens, probs.shape[1])
            noise = torch.where(batch.has_seed.unsqueeze(1), seeded, noise)
        return probs.div_(noise.clamp_(min=torch.finfo(torch.float32).tiny)).argmax(dim=-1)


def argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """argmax over the vocabulary, in two passes for a few rows on CUDA: a one-row argmax over 128K
    logits is a single-block reduction (~27 us on an H100), the max of 256-wide chunks then the argmax
    of the chunk maxima take a few us. Ties resolve to the first index either way."""
    rows, vocab = logits.shape
    chunk = next((c for c in (1024, 512, 256, 128) if vocab % c == 0), 0) if logits.is_cuda and rows <= 16 else 0
    if not chunk or vocab < 16 * chunk:
        return logits.argmax(dim=-1)
    vals, idx = logits.view(rows, -1, chunk).max(dim=-1)
    best = vals.argmax(dim=-1, keepdim=True)
    return (best * chunk + idx.gather(1, best)).squeeze(1)


def _top_k_top_p_min_p(probs: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Zero the probabilities each row's top-k, top-p (over the top-k survivors) and min-p drop."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    if batch.need_top_k:
        ranks = torch.arange(probs.shape[1], device=probs.device).unsqueeze(0)
        sorted_probs.masked_fill_(ranks >= batch.top_ks.unsqueeze(1), 0.0)
    if batch.need_top_p:
        cumulative = sorted_probs.cumsum(dim=-1)
        limit = batch.top_ps.unsqueeze(1) * cumulative[:, -1:]
        drop = (cumulative - sorted_probs > limit) & (batch.top_ps < 1.0).unsqueeze(1)
        sorted_probs.masked_fill_(drop, 0.0)
    if batch.need_min_p:
        threshold = sorted_probs[:, :1] * batch.min_ps.unsqueeze(1)
        sorted_probs.masked_fill_(sorted_probs < threshold, 0.0)
    return torch.zeros_like(probs).scatter_(1, order, sorted_probs)


def _signed(c: int) -> int:
    return c - 2**64 if c >= 2**63 else c


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    return (x >> k) & ((1 << (64 - k)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """The splitmix64 finalizer on int64 tensors (wrap-around arithmetic, logical shifts)."""
    x = (x ^ _shr(x, 30)) * _MIX1
    x = (x ^ _shr(x, 27)) * _MIX2
    return x ^ _shr(x, 31)


def seeded_exponential(seeds: torch.Tensor, positions: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Exp(1) noise [B, V] that depends only on (seed, position, token id), never on the batch."""
    key = mix64(mix64(seeds + _GOLDEN) + (positions + 1) * _GOLDEN)
    tokens = (torch.arange(vocab_size, device=seeds.device) + 1) * _GOLDEN
    bits = _shr(mix64(key.unsqueeze(1) + tokens), 11)
    uniform = (bits.double() + 0.5) * 2.0**-53
    return (-torch.log(uniform)).float()
