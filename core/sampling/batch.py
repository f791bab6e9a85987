"""Per-batch sampling tensors, built once when a running batch forms and kept in step with it.

Rows follow the running batch: `filter` keeps a subset (finished requests leave) and `merge` appends
another batch (new requests join), both as tensor ops with no per-request Python. The python flags
(`all_greedy`, `need_top_k`, ...) let the sampler skip work; they come from a small CPU table of
per-row features, so recomputing them never waits on the device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from jackfield.mem.device_copy import to_device
from jackfield.sampling.params import SamplingParams

# Columns of SamplingBatch.features: which sampling features each row uses (CPU int64).
_FEATURES = ("greedy", "top_k", "top_p", "min_p", "penalties", "logit_bias", "min_new_tokens", "seeded",
             "logprobs", "top_logprobs_num")
_ROW_FIELDS = ("temperatures", "greedy", "top_ps", "top_ks", "min_ps", "rep_penalties", "freq_penalties",
               "pres_penalties", "logit_bias_ids", "logit_bias_vals", "seeds", "has_seed", "min_new_tokens",
               "stop_ids", "req_slots")
# Padded [B, K] fields and their padding value (merge pads the narrower side).
_PADDED = {"logit_bias_ids": 0, "logit_bias_vals": 0.0, "stop_ids": -1}


@dataclass(frozen=True)
class SamplingBatch:
    """Sampling parameters of a running batch as [B] / [B, K] tensors on the model's device."""

    vocab_size: int
    temperatures: torch.Tensor    # [B, 1] float32; greedy rows hold 1.0
    greedy: torch.Tensor          # [B] bool
    top_ps: torch.Tensor          # [B] float32
    top_ks: torch.Tensor          # [B] int64; off = vocab_size
    min_ps: torch.Tensor          # [B] float32
    rep_penalties: torch.Tensor   # [B] float32
    freq_penalties: torch.Tensor  # [B] float32
    pres_penalties: torch.Tensor  # [B] float32
    logit_bias_ids: torch.Tensor  # [B, K] int64, padded with token 0
    logit_bias_vals: torch.Tensor  # [B, K] float32, padded with 0.0
    seeds: torch.Tensor           # [B] int64
    has_seed: torch.Tensor        # [B] bool
    min_new_tokens: torch.Tensor  # [B] int64
    stop_ids: torch.Tensor        # [B, S] int64: EOS ids + stop_token_ids, padded with -1
    req_slots: torch.Tensor       # [B] int64: rows of the request table (penalty state)
    features: torch.Tensor        # [B, len(_FEATURES)] int64 on CPU
    all_greedy: bool
    need_top_k: bool
    need_top_p: bool
    need_min_p: bool
    need_penalties: bool
    need_logit_bias: bool
    need_min_new_tokens: bool
    need_seeded: bool
    need_logprobs: bool
    max_top_logprobs: int

    @classmethod
    def from_params(cls, params: list[SamplingParams], req_slots: list[int], vocab_size: int,
                    eos_token_ids: tuple[int, ...], device: torch.device | str) -> SamplingBatch:
        """Build the batch tensors for `params`, one row per request, in the order given."""
        k = max([len(p.logit_bias) for p in params] + [1])
        s = max([len(eos_token_ids) + len(p.stop_token_ids) for p in params] + [1])
        bias_ids = [[t for t, _ in p.logit_bias] + [0] * (k - len(p.logit_bias)) for p in params]
        bias_vals = [[b for _, b in p.logit_bias] + [0.0] * (k - len(p.logit_bias)) for p in params]
        stops = [list(eos_token_ids) + list(p.stop_token_ids) for p in params]
        stops = [row + [-1] * (s - len(row)) for row in stops]
        greedy = [p.is_greedy for p in params]
        top_ks = [vocab_size if p.top_k <= 0 else min(p.top_k, vocab_size) for p in params]

        def tensor(data, dtype):
            return to_device(data, dtype, device)

        rows = dict(
            temperatures=tensor([[1.0 if g else p.temperature] for g, p in zip(greedy, params)], torch.float32),
            greedy=tensor(greedy, torch.bool),
            top_ps=tensor([p.top_p for p in params], torch.float32),
            top_ks=tensor(top_ks, torch.int64),
            min_ps=tensor([p.min_p for p in params], torch.float32),
            rep_penalties=tensor([p.repetition_penalty for p in params], torch.float32),
            freq_penalties=tensor([p.frequency_penalty for p in params], torch.float32),
            pres_penalties=tensor([p.presence_penalty for p in params], torch.float32),
            logit_bias_ids=tensor(bias_ids, torch.int64).reshape(len(params), k),
            logit_bias_vals=tensor(bias_vals, torch.float32).reshape(len(params), k),
            seeds=tensor([_to_int64(p.seed or 0) for p in params], torch.int64),
            has_seed=tensor([p.seed is not None for p in params], torch.bool),
            min_new_tokens=tensor([p.min_new_tokens for p in params], torch.int64),
            stop_ids=tensor(stops, torch.int64).reshape(len(params), s),
            req_slots=tensor(req_slots, torch.int64),
        )
        features = torch.tensor([_features(p, g, vocab_size) for g, p in zip(greedy, params)],
                                dtype=torch.int64).reshape(len(params), len(_FEATURES))
        return cls._assemble(vocab_size, rows, features)

    def __len__(self) -> int:
        return self.req_slots.shape[0]

    def filter(self, keep: torch.Tensor) -> SamplingBatch:
        """Keep the rows `keep` names (int64 indices, in the new order, or a [B] bool mask)."""
        if keep.dtype == torch.bool:
            keep = keep.nonzero().squeeze(1)
        keep_dev = to_device(keep, torch.int64, self.req_slots.device)
        rows = {name: getattr(self, name).index_select(0, keep_dev) for name in _ROW_FIELDS}
        return self._assemble(self.vocab_size, rows, self.features.index_select(0, keep.to("cpu", torch.int64)))

    def merge(self, other: SamplingBatch) -> SamplingBatch:
        """Append `other`'s rows after this batch's rows."""
        if other.vocab_size != self.vocab_size:
            raise ValueError(f"cannot merge sampling batches of vocab sizes {self.vocab_size} and {other.vocab_size}")
        rows = {}
        for name in _ROW_FIELDS:
            a, b = getattr(self, name), getattr(other, name)
            if name in _PADDED and a.shape[1] != b.shape[1]:
                width = max(a.shape[1], b.shape[1])
                a, b = _pad(a, width, _PADDED[name]), _pad(b, width, _PADDED[name])
            rows[name] = torch.cat([a, b])
        return self._assemble(self.vocab_size, rows, torch.cat([self.features, other.features]))

    @classmethod
    def _assemble(cls, vocab_size: int, rows: dict[str, torch.Tensor], features: torch.Tensor) -> SamplingBatch:
        if features.shape[0] == 0:
            flags = dict.fromkeys(_FEATURES, 0)
            all_greedy = True
        else:
            flags = dict(zip(_FEATURES, features.amax(0).tolist()))
            all_greedy = bool(features[:, 0].all())
        return cls(vocab_size=vocab_size, **rows, features=features, all_greedy=all_greedy,
                   need_top_k=bool(flags["top_k"]), need_top_p=bool(flags["top_p"]),
                   need_min_p=bool(flags["min_p"]), need_penalties=bool(flags["penalties"]),
                   need_logit_bias=bool(flags["logit_bias"]), need_min_new_tokens=bool(flags["min_new_tokens"]),
                   need_seeded=bool(flags["seeded"]),
                   need_logprobs=bool(flags["logprobs"]) or flags["top_logprobs_num"] > 0,
                   max_top_logprobs=int(flags["top_logprobs_num"]))


def _features(p: SamplingParams, greedy: bool, vocab_size: int) -> list[int]:
    sampled = not greedy
    return [int(greedy), int(sampled and 0 < p.top_k < vocab_size), int(sampled and p.top_p < 1.0),
            int(sampled and p.min_p > 0.0), int(p.needs_penalties), int(bool(p.logit_bias)),
            int(p.min_new_tokens > 0), int(p.seed is not None), int(p.logprobs), p.top_logprobs_num]


def _pad(t: torch.Tensor, width: int, value: float) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)


def _to_int64(seed: int) -> int:
    return (seed + 2**63) % 2**64 - 2**63
