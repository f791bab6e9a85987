"""The `gguf` method's CUDA kernels (dequantize, GEMV, GEMM on the repacked GGUF planes) run by
Triton's CPU interpreter on small shapes, per GGUF type, against gguf-py's float32 dequantization.
The GPU versions, on 8B layer shapes and in bfloat16, are in tests/gpu/test_gguf_gpu.py.

TRITON_INTERPRET must be set before the kernels are defined, so the cases run in one child process
(this file run as a script) and each pytest case checks its own result.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "quant"))
TOLERANCE = 1e-5  # float32 activations: only summation order differs
TYPES = ["Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]


def _child_main() -> None:
    import torch
    from gguf import GGMLQuantizationType as T
    from gguf_blocks import kernel_errors
    from interpreter import report_cases

    # K = 512: two K-quant super-blocks; 40 rows: a partial row tile
    report_cases({name: (lambda t=T[name], seed=i: kernel_errors(t, 40, 512, (1, 5), torch.float32, "cpu", seed))
                  for i, name in enumerate(TYPES)})


@pytest.fixture(scope="module")
def interpreted():
    from interpreter import run_interpreted

    return run_interpreted(__file__)


@pytest.mark.parametrize("name", TYPES)
def test_gguf_kernels_match_gguf_py_in_interpreter(interpreted, name):
    result = interpreted[name]
    assert "failure" not in result, result.get("failure")
    assert set(result) == {"dequantize", "gemv m=1", "gemv m=1 16x64", "gemv m=1 16x64 ahead", "matmul m=1",
                           "matmul m=5"}
    for path, error in result.items():
        assert error < TOLERANCE, f"{name} {path}: relative error {error:.3e}"


if __name__ == "__main__":
    _child_main()
