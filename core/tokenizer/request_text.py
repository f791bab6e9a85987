"""RequestText: one request's output text as it streams, with stop strings held back and trimmed."""
from __future__ import annotations

from jackfield.io_struct import FinishReason
from jackfield.sampling.params import SamplingParams
from jackfield.tokenizer.detokenizer import IncrementalDetokenizer, StopStringChecker
from jackfield.tokenizer.tokenizer import Tokenizer


class RequestText:
    def __init__(self, tokenizer: Tokenizer, params: SamplingParams):
        self.detok = IncrementalDetokenizer(tokenizer, params.skip_special_tokens)
        self.stops = StopStringChecker(list(params.stop))
        self.no_stop_trim = params.no_stop_trim
        self.emitted = 0
        self.stopped_at: str | None = None

    @property
    def text(self) -> str:
        return self.detok.text[:self.emitted]

    def feed(self, new_ids: list[int], finished: FinishReason | None) -> str:
        """Add tokens; returns the text delta that is safe to show (never part of a stop string)."""
        if self.stopped_at is not None:
            return ""
        self.detok.add(new_ids)
        if finished is not None:
            self.detok.flush()
        full = self.detok.text
        end = len(full)
        hit = self.stops.check(full)
        if hit is not None:
            before, stop = hit
            self.stopped_at = stop
            end = len(before) + (len(stop) if self.no_stop_trim else 0)
        elif finished is None:
            end -= self.stops.hold_back_len(full)
        delta = full[self.emitted:end]
        self.emitted = max(self.emitted, end)
        return delta
