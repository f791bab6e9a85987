"""Vectorized logit transforms that run before sampling: penalties, logit bias, min_new_tokens.

Each works in place on float32 logits [B, V] with one batched op per transform; rows whose
parameters are neutral (penalty 1.0 / 0.0, bias padding, min_new_tokens reached) come out unchanged.
"""
from __future__ import annotations

import torch

from jackfield.sampling.batch import SamplingBatch


def apply_penalties(logits: torch.Tensor, counts: torch.Tensor, prompt_mask: torch.Tensor,
                    batch: SamplingBatch) -> None:
    """Apply repetition (HF), frequency and presence penalties.

    `counts` [B, V] holds how often each token was generated so far and `prompt_mask` [B, V] which
    tokens the prompt holds. Repetition divides positive logits (multiplies negative ones) of tokens
    seen in the prompt or the output; frequency subtracts `freq * count`, presence `pres * (count > 0)`.
    """
    generated = counts > 0
    rep = batch.rep_penalties.unsqueeze(1)
    penalized = torch.where(logits > 0, logits / rep, logits * rep)
    logits.copy_(torch.where(prompt_mask | generated, penalized, logits))
    logits.sub_(batch.freq_penalties.unsqueeze(1) * counts)
    logits.sub_(batch.pres_penalties.unsqueeze(1) * generated)


def apply_logit_bias(logits: torch.Tensor, batch: SamplingBatch) -> None:
    """Add each row's logit bias (padding entries add 0.0 to token 0)."""
    logits.scatter_add_(1, batch.logit_bias_ids, batch.logit_bias_vals)


def apply_min_new_tokens(logits: torch.Tensor, batch: SamplingBatch, output_lens: torch.Tensor) -> None:
    """Forbid EOS and stop tokens on rows that have generated fewer than min_new_tokens tokens."""
    blocked = (batch.stop_ids >= 0) & (output_lens < batch.min_new_tokens).unsqueeze(1)
    neg_inf = torch.full_like(blocked, float("-inf"), dtype=logits.dtype)
    logits.scatter_add_(1, batch.stop_ids.clamp(min=0), torch.where(blocked, neg_inf, 0.0))
