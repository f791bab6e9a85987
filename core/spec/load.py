"""Load awareness: speculate only where it is measured to beat plain decoding.

A verify forward computes several tokens per request, so it costs about one plain decode step while
the batch is small (decode is bound by reading the weights) and several once the batch is large
enough to be compute bound; what it gives is the mean number of tokens a request gains per step.
The policy keeps, per batch-size bucket (powers of two), moving averages of the measured seconds
of a plain decode step, of a speculative step (draft + verify + accept), and of the tokens per
request a speculative step yields. A step speculates when

    tokens_per_request / seconds_spec  >=  1 / seconds_plain

so speculation switches itself off at batch sizes where verification costs more than it saves, and
back on when the batch shrinks into a bucket where it pays. A bucket without a measurement of one
mode runs that mode next (speculation first), and every `explore_every` decisions the losing mode
runs once so that its measurement follows the workload.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Bucket:
    plain_s: float | None = None
    spec_s: float | None = None
    spec_tokens: float | None = None  # tokens per request per speculative step
    decisions: int = 0


def _ema(old: float | None, new: float, weight: float) -> float:
    return new if old is None else old + weight * (new - old)


class LoadPolicy:
    def __init__(self, enabled: bool = True, explore_every: int = 64, weight: float = 0.2):
        self.enabled, self.explore_every, self.weight = enabled, explore_every, weight
        self.buckets: dict[int, _Bucket] = {}

    def _bucket(self, batch_size: int) -> _Bucket:
        return self.buckets.setdefault(max(batch_size, 1).bit_length(), _Bucket())

    def speculate(self, batch_size: int) -> bool:
        """Whether the next decode step of a batch of this size should speculate."""
        if not self.enabled:
            return True
        b = self._bucket(batch_size)
        b.decisions += 1
        if b.spec_s is None:
            return True
        if b.plain_s is None:
            return False
        better = b.spec_tokens / b.spec_s >= 1.0 / b.plain_s
        if b.decisions % self.explore_every == 0:
            return not better
        return better

    def record_plain(self, batch_size: int, seconds: float) -> None:
        b = self._bucket(batch_size)
        b.plain_s = _ema(b.plain_s, seconds, self.weight)

    def record_spec(self, batch_size: int, seconds: float, tokens_per_request: float) -> None:
        b = self._bucket(batch_size)
        b.spec_s = _ema(b.spec_s, seconds, self.weight)
        b.spec_tokens = _ema(b.spec_tokens, tokens_per_request, self.weight)

    def table(self) -> list[dict]:
        """The measured buckets (for logs and benchmarks): batch sizes, seconds, tokens, choice."""
        rows = []
        for k, b in sorted(self.buckets.items()):
            on = None if b.spec_s is None or b.plain_s is None else b.spec_tokens / b.spec_s >= 1.0 / b.plain_s
            rows.append({"batch_sizes": f"{1 << (k - 1)}-{(1 << k) - 1}", "plain_s": b.plain_s, "spec_s": b.spec_s,
                         "spec_tokens_per_request": b.spec_tokens, "speculate": on})
        return rows
