"""Applying grammar bitmasks to logits, and the mask of one forward's sampling step.

`apply_bitmask` sets the disallowed logits of every row to -inf with one vectorized op: the Triton
kernel (`jackfield.kernels.bitmask`) on CUDA, unpacked bit tests with `masked_fill_` elsewhere. The
sampler calls it after penalties and before logit_bias, as SGLang does.

`StepMask` is filled on the scheduler thread once every earlier token of its requests has been
accepted by their grammars, and read by whoever samples: inline (serial loop), the forward worker
thread (overlap on CPU; it waits for the fill) or the CUDA launcher, which enqueues the sampling
only after the fill (SGLang's delayed sampling).
"""
from __future__ import annotations

import threading

import torch

from jackfield.kernels import fused_available
from jackfield.sdk.grammar import bitmask_words

_SHIFTS: dict[torch.device, torch.Tensor] = {}


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """Set logits [B, V] to -inf where bitmask [B, ceil(V/32)] (int32, same device) has a 0 bit."""
    if fused_available(logits):
        from jackfield.kernels.bitmask import apply_bitmask_triton

        apply_bitmask_triton(logits, bitmask)
        return
    shifts = _SHIFTS.get(logits.device)
    if shifts is None:
        shifts = _SHIFTS[logits.device] = torch.arange(32, dtype=torch.int32, device=logits.device)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1
    allowed = bits.view(bitmask.shape[0], -1)[:, :logits.shape[1]].bool()
    logits.masked_fill_(~allowed, float("-inf"))


class StepMask:
    """The grammar rows of one forward: (batch row, request) pairs; filled once, read by the sampler."""

    def __init__(self, rows: list[tuple[int, object]], batch_size: int):
        self.rows, self.batch_size = rows, batch_size
        self._bitmask: torch.Tensor | None = None
        self._ready = threading.Event()

    @property
    def filled(self) -> bool:
        return self._ready.is_set()

    def fill(self, buffer: torch.Tensor, device: torch.device) -> None:
        """Fill rows [0, batch_size) of `buffer` (CPU, SDK format): all allowed, then each live
        request's grammar row; hand the mask to the sampler (copied to `device` when not CPU).
        The buffer must not be filled again before this step's sampling is done."""
        try:
            mask = buffer[:self.batch_size]
            mask.fill_(-1)
            for row, req in self.rows:
                if not req.finished and req.grammar is not None and not req.grammar.is_terminated():
                    req.grammar.fill_bitmask(mask, row)
            self._bitmask = mask if device.type == "cpu" else mask.to(device, non_blocking=True)
        finally:
            self._ready.set()

    def release(self) -> None:
        """Unblock the sampler without a mask (only on failure paths, when the batch is dropped)."""
        self._ready.set()

    def wait(self) -> torch.Tensor | None:
        self._ready.wait()
        return self._bitmask


def mask_buffer(rows: int, vocab_size: int, device: torch.device) -> torch.Tensor:
    """The shared CPU bitmask the scheduler fills each step (pinned when the device is CUDA)."""
    return torch.empty((rows, bitmask_words(vocab_size)), dtype=torch.int32, pin_memory=device.type == "cuda")
