"""Scheduler counters exported as StatsOut (running/queued, KV usage, cache hit rate, throughput)."""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field


@dataclass
class SchedulerStats:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    prefill_tokens_computed: int = 0
    retractions: int = 0
    evicted_tokens: int = 0       # tokens the radix cache evicted to make room
    syncs: int = 0                # overlap: times the scheduler waited for the running forward early
    jump_forward_tokens: int = 0  # tokens a grammar forced and jump-forward appended without decoding
    forward_steps: int = 0
    isolated_failures: int = 0    # failed forwards recovered by isolation.py
    _window: deque = field(default_factory=lambda: deque(maxlen=64))

    def record_step(self, prefill_tokens: int, decode_tokens: int) -> None:
        self.forward_steps += 1
        self.prefill_tokens_computed += prefill_tokens
        self._window.append((time.monotonic(), prefill_tokens, decode_tokens))

    def rates(self) -> tuple[float, float]:
        if len(self._window) < 2:
            return 0.0, 0.0
        span = max(self._window[-1][0] - self._window[0][0], 1e-6)
        pre = sum(w[1] for w in list(self._window)[1:])
        dec = sum(w[2] for w in list(self._window)[1:])
        return pre / span, dec / span

    @property
    def cache_hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
