"""The planes the CUDA kernels read (gguf_layout.repack) hold exactly the GGUF blocks' weights: their
torch dequantization equals gguf-py's, bit for bit, for every type the kernels read. CPU only (no
triton, no llama-cpp-python); the kernels themselves are checked in
tests/plugins/test_gguf_kernels_interpret.py (Triton's interpreter) and tests/gpu/test_gguf_gpu.py."""
from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf_blocks import KERNEL_TYPES, random_blocks, reference

from jackfield_plugins.quant.gguf_layout import FORMATS, dequantize, repack


@pytest.mark.parametrize("ggml_type", KERNEL_TYPES, ids=lambda t: t.name)
def test_planes_dequantize_exactly_as_gguf_py(ggml_type):
    blocks = random_blocks(ggml_type, 6, 512, seed=int(ggml_type))
    planes = repack(blocks, ggml_type, 512)
    assert planes.out_features == 6 and planes.fmt is FORMATS[ggml_type]
    assert torch.equal(dequantize(planes), reference(blocks, ggml_type, 512))
    assert all(t.is_contiguous() and t.shape[0] == 6 for t in planes.tensors().values())


def test_repack_rejects_other_types_and_wrong_row_sizes():
    with pytest.raises(ValueError, match="no CUDA kernel reads GGUF type IQ4_NL"):
        repack(torch.zeros(2, 18, dtype=torch.uint8), T.IQ4_NL, 32)
    with pytest.raises(ValueError, match="do not hold 512 columns of Q4_K"):
        repack(random_blocks(T.Q4_K, 2, 256), T.Q4_K, 512)


def test_cpu_path_needs_ggml_the_cuda_path_does_not(monkeypatch):
    """Without llama-cpp-python the method refuses the CPU (naming what is missing) and still serves
    CUDA; its kit checkpoints come from gguf-py's quantizer, not ggml's."""
    from jackfield.sdk import SelectionContext
    from jackfield_plugins.quant import gguf

    monkeypatch.setattr(gguf, "ggml_unavailable", lambda: "llama-cpp-python is not installed")
    cpu = SelectionContext(device="cpu", dtype="float32", quantization="gguf")
    cuda = SelectionContext(device="cuda", dtype="bfloat16", quantization="gguf")
    assert any("llama-cpp-python is not installed" in r for r in gguf.GGUF.incompatibilities(cpu))
    assert not any("llama-cpp" in r for r in gguf.GGUF.incompatibilities(cuda))
    w = torch.randn(8, 64)
    weight = gguf.GGUF.checkpoint_tensors(w)["weight"]
    assert weight.ggml_type == T.Q4_0 and float((weight.dequantize() - w).norm() / w.norm()) < 0.15
