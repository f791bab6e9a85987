"""Tuned block configurations of the fused MoE kernels, per (experts, hidden, intermediate, device,
weight format).

`plugins/moe/configs/E=<E>,H=<H>,I=<I>,device=<name>.json` (`…,dtype=fp8_block.json` for block-wise
FP8 experts) maps a token count to a config
({"path": "gemv" | "gemm", BLOCK_* sizes, SPLIT2 and ATOMIC2 for the GEMV form, num_warps, num_stages}); a batch
takes the entry of the
nearest token count. `benchmarks/tune_fused_moe.py` writes these files. Shapes without a file get
`default_config`. JACKFIELD_MOE_CONFIG_DIR points at another directory of files (tried first).
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import torch

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def device_name(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    return _cuda_name(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _cuda_name(index: int) -> str:
    return torch.cuda.get_device_name(index).replace(" ", "_")


def config_file_name(num_experts: int, hidden: int, inter: int, device: str, fmt: str = "unquantized") -> str:
    dtype = "" if fmt == "unquantized" else f",dtype={fmt}"
    return f"E={num_experts},H={hidden},I={inter},device={device}{dtype}.json"


@functools.cache
def load_table(num_experts: int, hidden: int, inter: int, device: str,
               fmt: str = "unquantized") -> dict[int, dict] | None:
    name = config_file_name(num_experts, hidden, inter, device, fmt)
    dirs = [Path(d) for d in (os.environ.get("JACKFIELD_MOE_CONFIG_DIR"),) if d] + [CONFIG_DIR]
    for d in dirs:
        path = d / name
        if path.is_file():
            return {int(k): v for k, v in json.loads(path.read_text()).items()}
    return None


def default_config(tokens: int, num_experts: int, top_k: int) -> dict:
    """Untuned choice: the GEMV form while a batch's pairs rarely share an expert, else grouped GEMM
    tiles sized by the average pairs per expert."""
    pairs = tokens * top_k
    if pairs <= 32:  # GEMV 2 split by pair: H / BLOCK_N2 programs per token are about one per SM
        return {"path": "gemv", "BLOCK_N": 16, "BLOCK_K": 256, "BLOCK_N2": 16, "BLOCK_K2": 256, "SPLIT2": True,
                "num_warps": 4, "num_stages": 2}
    per_expert = pairs / num_experts
    if per_expert <= 16:
        return {"path": "gemm", "BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 1,
                "num_warps": 4, "num_stages": 3}
    if per_expert <= 64:
        return {"path": "gemm", "BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 4,
                "num_warps": 4, "num_stages": 3}
    return {"path": "gemm", "BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8,
            "num_warps": 8, "num_stages": 3}


def pick_config(tokens: int, num_experts: int, hidden: int, inter: int, top_k: int, device: torch.device,
                fmt: str = "unquantized") -> dict:
    table = load_table(num_experts, hidden, inter, device_name(device), fmt)
    if not table:
        return default_config(tokens, num_experts, top_k)
    return table[min(table, key=lambda m: abs(m - tokens))]
