"""Read a GGUF file's weights for a method that keeps them quantized (checkpoint format "gguf").

Linear weights (attention and MLP projections, and a separate lm_head) come out as `GGUFWeight`s,
their ggml blocks copied from the file unchanged; the llama q/k rotary row permutation is undone
on whole block rows, which is exact because a block never spans two rows. Every other tensor
(embeddings, norms, biases) is dequantized to float32, as the float converter does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from jackfield.loader.gguf import ARCHITECTURES, hf_tensor_name, metadata, open_gguf, unpermute_qk
from jackfield.sdk.gguf import GGUFWeight

LM_HEAD = "lm_head.weight"
EMBEDDING = "model.embed_tokens.weight"


def is_linear_weight(name: str) -> bool:
    """A q/k/v/o or gate/up/down projection's weight, or the lm_head's."""
    return name.endswith("_proj.weight") or name == LM_HEAD


def iter_gguf_quantized(path: Path, progress: bool = True) -> Iterator[tuple[str, torch.Tensor | GGUFWeight]]:
    """Yield (HF name, tensor) for each kept tensor of the GGUF file, linear weights as GGUFWeight."""
    from gguf.quants import dequantize
    from tqdm import tqdm

    reader = open_gguf(path)
    arch_name = str(metadata(reader, "general.architecture", ""))
    arch = ARCHITECTURES.get(arch_name)
    if arch is None:
        raise ValueError(f"GGUF architecture {arch_name!r} in {path} is not supported")
    heads = int(metadata(reader, f"{arch_name}.attention.head_count"))
    kv_heads = int(metadata(reader, f"{arch_name}.attention.head_count_kv", heads))
    tied = "output.weight" not in {tensor.name for tensor in reader.tensors}
    for tensor in tqdm(reader.tensors, desc="Loading GGUF weights", unit="tensor", disable=not progress, leave=False):
        name = hf_tensor_name(tensor.name)
        if name is None:
            continue
        shape = [int(dim) for dim in reversed(tensor.shape)]
        if name == EMBEDDING and tied:  # the tied lm_head multiplies by the embedding's own blocks
            yield LM_HEAD, GGUFWeight(torch.from_numpy(raw_rows(tensor, shape)), int(tensor.tensor_type), shape[1])
        if is_linear_weight(name) and len(shape) == 2:
            values = raw_rows(tensor, shape)
        else:
            values = dequantize(tensor.data, tensor.tensor_type).reshape(shape).astype(np.float32, copy=False)
        if arch.permute_qk and ".self_attn.q_proj." in name:
            values = unpermute_qk(values, heads)
        elif arch.permute_qk and ".self_attn.k_proj." in name:
            values = unpermute_qk(values, kv_heads)
        data = torch.from_numpy(np.array(values))  # unpermute and dequantize may return views of the map
        if data.dtype == torch.uint8:
            yield name, GGUFWeight(data, int(tensor.tensor_type), shape[1])
        else:
            yield name, data


def raw_rows(tensor, shape: list[int]) -> np.ndarray:
    """A private copy of a 2-D tensor's bytes as uint8 [rows, row bytes] (the file's map is read-only)."""
    return np.array(np.asarray(tensor.data).reshape(shape[0], -1).view(np.uint8))
