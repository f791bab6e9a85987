"""A linear weight as a GGUF file stores it: rows of ggml blocks, handed to a quantization method
that declares the "gguf" checkpoint format (the loader gives the others dequantized float weights).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

GGUF_FORMAT = "gguf"
"""The checkpoint format name of a GGUF file (`ModelConfig.quantization`, `checkpoint_formats`)."""


@dataclass(frozen=True)
class GGUFWeight:
    """`blocks` is uint8 [rows, row bytes]: each row one output feature's `in_features` weights in
    ggml type `ggml_type` (gguf.GGMLQuantizationType), exactly as in the file."""

    blocks: torch.Tensor
    ggml_type: int
    in_features: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.blocks.shape[0], self.in_features)

    def __getitem__(self, rows: slice) -> "GGUFWeight":
        """These output features' rows (a vocab-parallel shard's `full[start:stop]`)."""
        if not isinstance(rows, slice):
            raise TypeError(f"a GGUFWeight is sliced by rows (a slice), not by {type(rows).__name__}")
        return replace(self, blocks=self.blocks[rows])

    def to(self, device) -> "GGUFWeight":
        """The same weight with its blocks on `device`."""
        return replace(self, blocks=self.blocks.to(device))

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [rows, in_features] these blocks stand for (gguf-py's reference)."""
        from gguf.quants import dequantize

        values = dequantize(self.blocks.numpy(), self.ggml_type)
        return torch.from_numpy(values.reshape(self.shape).astype("float32", copy=False))
