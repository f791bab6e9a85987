"""Compacting the weights after loading: a quantization method that converts weights on load
(`--quantization fp8` on a bf16 checkpoint, repacked INT4 codes) allocates each layer's new tensors
while the float weights and the conversion's float32 temporaries are still cached by PyTorch's
allocator, so the small new tensors land in pieces of the old segments. Freed afterwards, those
segments stay partly used: `torch.cuda.empty_cache()` cannot return them, and the memory the KV
pool is sized from (free memory) stays short by hundreds of MB.

`compact_cuda_weights` copies the model's contiguous parameters and persistent buffers into one new
allocation (each at a 256-byte aligned offset) and frees the old ones, so that the old segments
empty out and go back to the driver. It runs only where the cache holds more than `slack` bytes
beyond what is allocated (a model whose weights were allocated once is left alone) and where the
new allocation fits next to the old one.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)
ALIGN = 256  # bytes: keeps every tensor as aligned as a fresh allocation (Triton specializes on 16)


def _weight_slots(model: nn.Module, device_type: str | None) -> list[tuple[nn.Module, str, torch.Tensor]]:
    """(module, attribute, tensor) of every contiguous parameter and persistent buffer (on devices
    of `device_type`, or all)."""
    slots = []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            slots.append((module, name, p))
        for name, b in module.named_buffers(recurse=False):
            if b is not None and name not in module._non_persistent_buffers_set:
                slots.append((module, name, b))
    return [(m, n, t) for m, n, t in slots
            if (device_type is None or t.device.type == device_type) and t.is_contiguous() and t.numel()]


def _layout(slots) -> tuple[dict, int]:
    """The offset of each distinct tensor (a tensor shared by two modules, as tied embeddings, is
    copied once) in the new allocation, and its size."""
    offsets, total = {}, 0
    for _, _, t in slots:
        key = (t.data_ptr(), t.dtype, tuple(t.shape))
        if key not in offsets:
            offsets[key] = total
            total += -(-t.numel() * t.element_size() // ALIGN) * ALIGN
    return offsets, total


def pack_weights(model: nn.Module, slots=None, offsets=None, total=None) -> torch.Tensor:
    """Copy the model's contiguous parameters and persistent buffers into one new byte tensor (on
    their device) and make them views of it; returns that tensor."""
    if slots is None:
        slots = _weight_slots(model, None)
        offsets, total = _layout(slots)
    flat = torch.empty(total, dtype=torch.uint8, device=slots[0][2].device)
    seen = {}
    with torch.no_grad():
        for module, name, t in slots:
            key = (t.data_ptr(), t.dtype, tuple(t.shape))
            if key not in seen:
                off = offsets[key]
                view = flat[off:off + t.numel() * t.element_size()].view(t.dtype).view(t.shape)
                view.copy_(t)
                seen[key] = nn.Parameter(view, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) \
                    else view
            (module._parameters if name in module._parameters else module._buffers)[name] = seen[key]
    return flat


def compact_cuda_weights(model: nn.Module, slack: int = 64 << 20) -> int:
    """Move the model's weights into one allocation when the allocator's cache holds more than
    `slack` unusable bytes; returns the bytes of cache given back to the driver (0: nothing done)."""
    if not torch.cuda.is_available():
        return 0
    torch.cuda.empty_cache()
    reserved = torch.cuda.memory_reserved()
    if reserved - torch.cuda.memory_allocated() <= slack:
        return 0
    slots = _weight_slots(model, "cuda")
    offsets, total = _layout(slots)
    free, _ = torch.cuda.mem_get_info()
    if total + slack > free:
        log.info("weights not compacted: %.2f GiB of copies do not fit in %.2f GiB free", total / 2**30, free / 2**30)
        return 0
    pack_weights(model, slots, offsets, total)
    del slots
    torch.cuda.empty_cache()
    released = reserved - torch.cuda.memory_reserved()
    log.info("weights compacted into one %.2f GiB allocation; %.0f MB of cache returned", total / 2**30,
             released / 2**20)
    return released
