"""Load awareness: speculate only where it is measured to beat plain decoding.

A verify forward computes several tokens per request, so it costs about one plain decode step while
the batch is small (decode is bound by reading the weights) and several once the batch is large
enough to be compute bound; what it gives is the mean number of tokens a request gains per step.
The policy keeps, per batch-size bucket (powers of two), the measured seconds of a plain decode step
and of a speculative step (draft + verify + accept) as the lower median of the last `window` (5)
steps of each kind (one slow step, a kernel compiled on first use, a burst of finishing requests or
a garbage collection, does not decide), and a moving average of the tokens per request a
speculative step yields. A step speculates when

    rate_spec = tokens_per_request / seconds_spec  >=  rate_plain = 1 / seconds_plain

so speculation switches itself off at batch sizes where verification costs more than it saves, and
back on when the batch shrinks into a bucket where it pays.

What finding out costs is bounded by measurement: a new bucket runs `warmup` (1) speculative
steps, then plain steps, then decides; it stops speculating at once when a plain rate measured
earlier in the bucket already beats its first speculative step. The very first speculative steps
of an engine pay for what runs for the first time (a kernel, an allocation), so until some bucket
has measured two speculative steps, a bucket that lost on one tries a second after 4 plain steps
and the lower of the two decides; once one has, a single speculative step decides.

A new bucket uses its neighbours' measurements for its first decision: it starts plain, as if it
had measured what they did, when the nearest measured bucket below it lost by far (ratio below
`far_loss`: verification only gets dearer as the batch grows) or the bucket right above it (batch
sizes at most twice as large) did. While speculation loses, it is tried again every
`ceil(waste / explore_cost)` plain steps (at least 4, at most 1024), where `waste = seconds_spec /
seconds_plain - tokens_per_request` is what one speculative step loses against plain steps, in
plain steps: often when it loses narrowly (the text may turn repetitive), rarely when it loses by
far, so that these probes cost about `explore_cost` (0.5 %) of the plain rate where a probe loses
up to 5.12 plain steps, and waste / 1024 beyond: a run of a few hundred steps where speculation
loses pays for its first measurement and about one probe.

The scheduler records a plain step only when its wall time is its own decode forward's (under
overlap: the forward it waited for was a decode step, not a prefill).
"""
from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field


@dataclass
class _Bucket:
    window: int = 5
    plain: deque = field(default_factory=deque)  # seconds of the last plain steps
    spec: deque = field(default_factory=deque)   # seconds of the last speculative steps
    spec_tokens: float | None = None  # tokens per request per speculative step (moving average)
    spec_steps: int = 0               # speculative steps measured
    since_spec: int = 0               # decisions since the last speculative one

    @property
    def plain_s(self) -> float | None:
        return statistics.median_low(self.plain) if self.plain else None

    @property
    def spec_s(self) -> float | None:
        return statistics.median_low(self.spec) if self.spec else None

    @property
    def measured(self) -> bool:
        return bool(self.spec) and bool(self.plain)

    def add(self, times: deque, seconds: float) -> None:
        times.append(seconds)
        if len(times) > self.window:
            times.popleft()


def _ema(old: float | None, new: float, weight: float) -> float:
    return new if old is None else old + weight * (new - old)


class LoadPolicy:
    def __init__(self, enabled: bool = True, warmup: int = 1, explore_cost: float = 0.005, weight: float = 0.3,
                 far_loss: float = 0.75, window: int = 5):
        self.enabled, self.warmup, self.explore_cost, self.weight = enabled, warmup, explore_cost, weight
        self.far_loss, self.window = far_loss, window
        self.buckets: dict[int, _Bucket] = {}

    def _bucket(self, batch_size: int) -> _Bucket:
        return self.buckets.setdefault(max(batch_size, 1).bit_length(), _Bucket(self.window))

    @staticmethod
    def ratio(b: _Bucket) -> float:
        """rate_spec / rate_plain of a measured bucket."""
        return b.spec_tokens / b.spec_s * b.plain_s

    def speculate(self, batch_size: int) -> bool:
        """Whether the next decode step of a batch of this size should speculate."""
        if not self.enabled:
            return True
        key = max(batch_size, 1).bit_length()
        b = self._bucket(batch_size)
        go = self._decide(key, b)
        b.since_spec = 0 if go else b.since_spec + 1
        return go

    def _decide(self, key: int, b: _Bucket) -> bool:
        if not b.spec:
            prior = self._neighbour_loss(key)
            return prior is None or self._probe_due(b, prior)  # measure speculation first, unless hopeless
        if not b.plain:
            return b.spec_steps < self.warmup  # then plain steps to compare with
        return self.ratio(b) >= 1.0 or self._probe_due(b, b)

    def _warm(self) -> bool:
        """Some bucket has measured two speculative steps: the engine's first-time costs are paid."""
        return any(b.spec_steps >= 2 for b in self.buckets.values())

    def _trusted(self, b: _Bucket) -> bool:
        return b.measured and (b.spec_steps >= 2 or self._warm())

    def _neighbour_loss(self, key: int) -> _Bucket | None:
        """The nearest trusted bucket below, or else the trusted bucket right above, when
        speculation lost there by far."""
        below = [k for k, b in self.buckets.items() if k < key and self._trusted(b)]
        above = self.buckets.get(key + 1)
        for b in ([self.buckets[max(below)]] if below else []) + ([above] if above and self._trusted(above) else []):
            if self.ratio(b) < self.far_loss:
                return b
        return None

    def _probe_due(self, b: _Bucket, measured: _Bucket) -> bool:
        """Whether bucket b, losing as `measured` does, is due for a speculative probe: after the
        interval its waste sets, or soon (4) after a single speculative step of a cold engine (maybe
        the slow first one)."""
        waste = measured.spec_s / measured.plain_s - measured.spec_tokens  # plain steps lost per probe
        interval = min(1024, max(4, math.ceil(waste / self.explore_cost)))
        if measured.spec_steps < 2 and not self._warm():
            interval = 4
        return b.since_spec + 1 >= interval

    def record_plain(self, batch_size: int, seconds: float) -> None:
        b = self._bucket(batch_size)
        b.add(b.plain, seconds)

    def record_spec(self, batch_size: int, seconds: float, tokens_per_request: float) -> None:
        b = self._bucket(batch_size)
        b.add(b.spec, seconds)
        b.spec_tokens = _ema(b.spec_tokens, tokens_per_request, self.weight)
        b.spec_steps += 1

    def table(self) -> list[dict]:
        """The measured buckets (for logs and benchmarks): batch sizes, seconds, tokens, ratio."""
        rows = []
        for k, b in sorted(self.buckets.items()):
            rows.append({"batch_sizes": f"{1 << (k - 1)}-{(1 << k) - 1}", "plain_s": b.plain_s, "spec_s": b.spec_s,
                         "spec_tokens_per_request": b.spec_tokens, "spec_steps": b.spec_steps,
                         "spec_over_plain": self.ratio(b) if b.measured else None})
        return rows
