"""The `gguf` method's CUDA kernels per GGUF type on 8B layer shapes, against gguf-py's float32
dequantization (bfloat16 activations: the dequantized tile is rounded to bfloat16 for the tensor
cores in the GEMM, and the output is bfloat16, ~0.3% relative), and a layer of mixed types through
every GEMM backend. The kit on CUDA (tests/gpu/test_kit_cuda.py) covers the method as a whole."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from gguf import GGMLQuantizationType as T

pytestmark = pytest.mark.gpu
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "quant"))
BF16_TOL = 1e-2
TYPES = ["Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]


@pytest.mark.parametrize("n,k", [(1024, 4096), (512, 14336)])
@pytest.mark.parametrize("name", TYPES)
def test_kernels_match_gguf_py(name, n, k):
    from gguf_blocks import kernel_errors

    errors = kernel_errors(T[name], n, k, (1, 3, 16, 67, 300), torch.bfloat16, "cuda")
    assert errors["dequantize"] < 1e-6, errors  # float32 weights: exact but for fused multiply-adds
    assert all(e < BF16_TOL for e in errors.values()), errors


@pytest.mark.parametrize("backend", ["auto", "triton", "torch"])
def test_mixed_type_layer_on_cuda(backend):
    """A Q4_K_M-style fused qkv (q and k Q4_K, v Q6_K) with a bias, 1, 7 and 1100 rows (`auto`: one row
    through the GEMV configuration timed fastest, or dequantize + cuBLAS; more rows through the latter),
    against the float32 product with gguf-py's weights."""
    from gguf_blocks import random_blocks, reference

    from jackfield.sdk import GGUFWeight, QuantOptions
    from jackfield.sdk.layers.linear import Linear
    from jackfield.sdk.model import ModelBuildContext
    from jackfield_plugins.quant.gguf import GGUF

    k = 512
    shards = [GGUFWeight(random_blocks(t, n, k, seed=i), int(t), k)
              for i, (n, t) in enumerate([(512, T.Q4_K), (128, T.Q4_K), (128, T.Q6_K)])]
    w_ref = torch.cat([reference(s.blocks, s.ggml_type, k) for s in shards])
    bias = torch.randn(768) * 0.1
    method = GGUF(None, QuantOptions(gemm_backend=backend))
    ctx = ModelBuildContext(quant=method, dtype=torch.bfloat16, device=torch.device("cuda"))
    layer = Linear(k, (512, 128, 128), ctx, "model.layers.0.self_attn.qkv_proj", bias=True, shard_ids=("q", "k", "v"))
    offset = 0
    for sid, shard in zip(("q", "k", "v"), shards):
        layer.weight_loader("weight", shard, sid)
        layer.weight_loader("bias", bias[offset:offset + shard.shape[0]].bfloat16(), sid)
        offset += shard.shape[0]
    layer.process_weights_after_loading()
    assert [s.size for s in layer.method.segments] == [640, 128]
    assert all(t.is_cuda for t in layer.buffers())
    for m in (1, 7, 1100):
        x = torch.randn(m, k).bfloat16()
        ref = x.double() @ w_ref.double().T + bias.bfloat16().double()
        with torch.no_grad():
            y = layer(x.cuda())
        assert y.dtype == torch.bfloat16 and y.shape == (m, 768)
        err = float((y.cpu().double() - ref).norm() / ref.norm())
        assert err < BF16_TOL, (m, err)


def test_dense_fallback_for_types_without_a_kernel():
    """A type no kernel reads (F16 here) is dequantized at load and multiplied by cuBLAS."""
    from jackfield.sdk import Gemv, GGUFWeight
    from jackfield_plugins.quant.gguf_cuda import cuda_matmul, cuda_segment

    w = torch.randn(64, 96)
    weight = GGUFWeight(w.half().view(torch.uint8).reshape(64, -1), int(T.F16), 96)
    segment = cuda_segment(0, weight, torch.device("cuda"), torch.bfloat16)
    assert segment.planes is None and segment.dense.dtype == torch.bfloat16
    x = torch.randn(3, 96).bfloat16().cuda()
    y = cuda_matmul(x, segment, None, "auto", Gemv())
    ref = x.float().cpu() @ w.half().float().T
    assert float((y.float().cpu() - ref).norm() / ref.norm()) < BF16_TOL


def test_mixed_type_gguf_model_on_cuda(tmp_path, monkeypatch):
    """`auto` keeps a GGUF file quantized on CUDA; a tiny Llama whose projections use every kernel type
    (mixed inside qkv and gate_up, tied Q8_0 embedding) gives the teacher-forced logits of the same file
    dequantized on the CPU in float32, up to bfloat16 (5%). CUDA graphs are off: their batch-1 warm-up
    would time every GEMV configuration on the file's seven small shapes (~30 Triton compiles on a
    fresh machine); test_kernels_match_gguf_py and test_mixed_type_layer_on_cuda check the GEMV and
    its tuner."""
    from gguf_blocks import write_mixed_gguf
    from quant_harness import forced_logits, rel_err

    from jackfield.config import settings_for
    from jackfield.runtime_setup import setup_runtime

    monkeypatch.setenv("JACKFIELD_CACHE_DIR", str(tmp_path / "cache"))
    path = write_mixed_gguf(tmp_path / "mixed.gguf")
    gpu_run = dict(device="cuda", dtype="bfloat16", attention_backend="triton", max_total_tokens=4096,
                   disable_cuda_graph=True)
    assert setup_runtime(settings_for(model=path, **gpu_run)).choices["quantization"].name == "gguf"
    gpu = forced_logits(path, **gpu_run).float().cpu()
    cpu = forced_logits(path, quantization="unquantized")
    assert rel_err(gpu, cpu) < 0.05, rel_err(gpu, cpu)
