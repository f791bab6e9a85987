"""Speculative-decoding counters for get_stats and /metrics."""
from __future__ import annotations


class SpecStats:
    """Counters for /metrics and get_stats: verify steps, draft nodes proposed and accepted, tokens emitted."""

    def __init__(self):
        self.verify_steps = 0
        self.proposed = 0
        self.accepted = 0
        self.emitted = 0

    def record(self, proposed: int, accepted: int, emitted: int) -> None:
        self.verify_steps += 1
        self.proposed += proposed
        self.accepted += accepted
        self.emitted += emitted

    @property
    def accept_length(self) -> float:
        """Mean tokens a request gains per verify forward (accepted drafts + the target's own)."""
        return self.emitted / self.verify_steps if self.verify_steps else 0.0

    @property
    def accept_rate(self) -> float:
        """Accepted draft tokens / proposed draft tokens."""
        return self.accepted / self.proposed if self.proposed else 0.0
