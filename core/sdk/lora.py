"""LoRA backends: add each token's adapter update to the output of the model's linear layers.

The core owns the adapters: it reads PEFT directories, keeps them in host memory and copies the
ones a batch needs into a pool of `max_loras` device slots. Every LoRA-wrapped linear layer has one
`LoRAWeights`, its view of that pool. A backend only computes: once per forward the core hands it
a `LoRABatch` (`prepare`), then every wrapped layer calls `apply(weights, x, base_out)`, which
returns base_out + scaling[s] * (x A_s^T) B_s^T for each token, s being the slot of the token's
adapter (no update for slot -1, the base model). Fused layers (qkv_proj, gate_up_proj) stack their
slices: slice j's A is rows [j * max_rank, j * max_rank + rank) of A, and its B writes output columns
[offset_j, offset_j + size_j). Rows and columns past a slot's rank are zero in A and B.
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from jackfield.sdk.component import Component
from jackfield.sdk.lora_tiles import LoRATiles, tile_values, tiles_view


@dataclass(frozen=True)
class LoRARuntime:
    """What a backend is constructed with."""

    model_config: Any
    max_loras: int            # device slots
    max_rank: int             # every slot's A / B is padded to this rank
    max_loras_per_batch: int  # distinct adapters one forward may use
    dtype: torch.dtype
    device: torch.device


@dataclass(frozen=True)
class LoRAWeights:
    """One wrapped linear layer's slots in the adapter pool. The core writes a slot only while no
    forward that reads it is running; `ranks` is updated in place (CUDA graphs read it at replay)."""

    a: torch.Tensor        # [max_loras, num_slices * max_rank, in_features], compute dtype
    b: torch.Tensor        # [max_loras, out_features, max_rank], compute dtype
    ranks: torch.Tensor    # [max_loras, num_slices] int32: the rank of slot s on slice j (0: not adapted)
    slices: tuple[tuple[int, int], ...]  # (output column offset, size) of each slice
    max_rank: int
    name: str = ""         # the layer's prefix, e.g. model.layers.3.self_attn.qkv_proj

    @property
    def num_slices(self) -> int:
        return len(self.slices)


@dataclass(frozen=True)
class LoRABatch:
    """Which slot each token of one forward uses, as segments: a segment is a run of consecutive
    tokens with one slot (one request's extend tokens or decode token; neighbours with the same slot
    are merged). Device tensors are int32; slot -1 is the base model (no update).

    In a decode CUDA graph the tensors are static buffers whose contents change at each replay,
    so `prepare` must not read them on the host; `decode` is then True and every segment is one
    token long (`seg_slots` is `token_slots`). Decode batches for a backend whose `decode_tile` is
    positive also come grouped by slot (`tiles`, jackfield.sdk.lora_tiles)."""

    num_tokens: int
    token_slots: torch.Tensor   # [num_tokens]
    seg_starts: torch.Tensor    # [num_segments], first token of each segment
    seg_lens: torch.Tensor      # [num_segments]
    seg_slots: torch.Tensor     # [num_segments]
    scalings: torch.Tensor      # [max_loras] float32: lora_alpha / r (rsLoRA: lora_alpha / sqrt(r)) per slot
    max_seg_len: int            # the longest segment (sizes segment-GEMM grids)
    decode: bool                # one token per segment
    segments: tuple[tuple[int, int, int], ...] = ()  # (start, length, slot) per segment on the host; () in graphs
    tiles: LoRATiles | None = None  # decode only: the tokens grouped by slot, for a backend that asks

    @property
    def num_segments(self) -> int:
        return int(self.seg_lens.shape[0])


def lora_batch(lens: list[int] | tuple[int, ...], slots: list[int] | tuple[int, ...], scalings: torch.Tensor,
               decode: bool = False, tile: int = 0) -> LoRABatch:
    """A LoRABatch for requests of `lens[i]` tokens each using slot `slots[i]` (-1: base model), in
    order; neighbours with the same slot become one segment. A decode batch with `tile` > 0 also
    gets its tiles of at most `tile` tokens. Tensors go to `scalings`' device."""
    from jackfield.mem.device_copy import to_device

    segments: list[list[int]] = []
    start = 0
    for n, slot in zip(lens, slots):
        if n and segments and segments[-1][2] == slot and not decode:
            segments[-1][1] += n
        elif n:
            segments.append([start, n, slot])
        start += n
    dev = scalings.device
    token_slots = [slot for n, slot in zip(lens, slots) for _ in range(n)]
    seg = to_device(torch.tensor(segments, dtype=torch.int32).reshape(-1, 3).T.contiguous(), torch.int32, dev)
    tiled = decode and tile > 0
    # the slots, then the tiles' values: one copy (the layout of jackfield.sdk.LoRAGraphSlots)
    values = to_device(token_slots + (tile_values(token_slots, tile) if tiled else []), torch.int32, dev)
    tiles = tiles_view(values[start:], start, tile) if tiled else None
    return LoRABatch(num_tokens=start, token_slots=values[:start],
                     seg_starts=seg[0], seg_lens=seg[1], seg_slots=seg[2], scalings=scalings,
                     max_seg_len=max((s[1] for s in segments), default=0), decode=decode,
                     segments=tuple(tuple(s) for s in segments), tiles=tiles)


class LoRABackend(Component):
    """Computes the low-rank updates of a batch. Constructed once per engine with a LoRARuntime."""

    kind: ClassVar[str] = "lora"
    supports_cuda_graph: ClassVar[bool] = False
    """True when `apply` on a decode LoRABatch reads nothing on the host, so decode forwards can be
    captured in CUDA graphs (the core then calls `prepare` once per captured batch size, with static
    tensors whose contents it rewrites before each replay)."""

    def __init__(self, runtime: LoRARuntime):
        self.runtime = runtime
        self.batch: LoRABatch | None = None

    def prepare(self, batch: LoRABatch) -> None:
        """Called once per forward that uses an adapter, before the model runs. The default keeps
        the batch for `apply`; override to precompute per-batch launch parameters."""
        self.batch = batch

    @abstractmethod
    def apply(self, weights: LoRAWeights, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        """Return base_out [T, out] plus each token's update scaling[s] * (x A_s^T) B_s^T, x being
        the layer's input [T, in] (the batch's tokens in order). May add into base_out in place
        and return it."""

    def decode_tile(self, num_tokens: int) -> int:
        """The most tokens per tile when decode batches of num_tokens tokens should come grouped by
        slot (`LoRABatch.tiles`, so a kernel reads each adapter once per tile); 0 (the default): the
        backend reads `token_slots` only. Asked per batch size, also before a CUDA-graph capture."""
        return 0

    def fuses_prologue(self) -> bool:
        """True when, for the prepared batch, `apply_normed` and `apply_silu_mul` compute the layer's
        input inside the LoRA kernels: a wrapped layer then keeps the base GEMV's fused RMSNorm /
        SiLU-and-mul (no separate norm or activation kernel) and hands the backend the raw input.
        False (the default): the layer computes its input itself and calls `apply`."""
        return False

    def apply_normed(self, weights: LoRAWeights, h: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                     base_out: torch.Tensor) -> torch.Tensor:
        """`apply` on the layer input x = RMSNorm(h) * norm_weight (h [T, in]: the residual sum the
        base layer normalized). The default computes x, then calls `apply`."""
        hf = h.float()
        x = (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)).to(h.dtype) * norm_weight
        return self.apply(weights, x, base_out)

    def apply_silu_mul(self, weights: LoRAWeights, gate_up: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        """`apply` on the layer input x = silu(gate) * up for gate_up = [gate | up] [T, 2 * in]. The
        default computes x, then calls `apply`."""
        gate, up = gate_up.chunk(2, dim=-1)
        return self.apply(weights, torch.nn.functional.silu(gate) * up, base_out)
