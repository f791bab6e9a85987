"""The `gguf` quantization method (CPU): a GGUF file's linear weights stay in their ggml blocks.

The loader hands each projection's weight over as a `GGUFWeight` (the file's blocks, unchanged) and
`apply` multiplies with llama.cpp's own CPU kernels (`jackfield.sdk.ggml_build().mm`, an operator
torch.compile traces: ggml's per-type dot products, activations quantized to int8 blocks, AVX2 /
AVX-512 VNNI). Every type ggml has a CPU dot product for works (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
Q2_K..Q6_K, IQ types, F16, BF16, F32), so a mixed file (Q4_K_M keeps some tensors in Q6_K) loads
as it is.

A fused layer (qkv, gate_up) whose shards share a type is one block matrix and one matmul; shards
of different types stay separate segments, each multiplied on its own into its slice of the output.
The LM head also multiplies by its blocks (for tied embeddings, the embedding's: SmolLM2's Q8_0
token_embd), as llama.cpp does; the embedding lookup, norms and biases are dequantized to float by
the loader.

On CUDA the blocks go to the GPU, repacked into planes of the same codes and scales, and Triton
kernels dequantize them in registers (gguf_cuda.py: Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K; other
types are dequantized at load); the one-row GEMV's configuration is timed per type and shape by
the SDK's Gemv tuner, shared by every layer of the engine. That path needs only `gguf` and
`triton`, not llama-cpp-python.

`quantization = auto` picks this method for a GGUF file (priority above `unquantized`, which still
loads the same file dequantized: `--quantization unquantized`).
"""
from __future__ import annotations

import importlib.util

import numpy as np
import torch
from torch import nn

from jackfield.sdk import (GGUF_FORMAT, Availability, Capabilities, Gemv, GGUFWeight, LinearMethod,
                           QuantizationMethod, ggml_build, ggml_unavailable, hookimpl)
from jackfield.sdk.component import cuda_available
from jackfield_plugins.quant.common import triton_missing_on_cuda

KIT_TYPE = 2  # GGMLQuantizationType.Q4_0: the least accurate type checkpoint_tensors builds
FALLBACK_TYPE = 0  # F32, for a kit weight whose in_features is not a multiple of 32
BLOCK = 32


class GGUFLinearMethod(LinearMethod):
    """Collects the GGUFWeight of each shard in `load`; `process_weights_after_loading` merges the
    shards into segments, one per run of equal types: on the CPU (offset, size, ggml type, blocks),
    on CUDA `CudaSegment`s."""

    def __init__(self, backend: str = "auto", gemv: Gemv | None = None):
        self.backend, self.gemv = backend, gemv or Gemv()
        self.in_features = 0
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.pending: list[tuple[int, GGUFWeight]] = []
        self.segments: list = []

    def create_weights(self, layer, in_features, out_features, bias, dtype, device):
        self.device, self.dtype = torch.device(device), dtype
        if self.device.type == "cpu":
            self.mm = ggml_build().mm  # compile (first run only) while the model loads, not in the first request
        elif self.device.type != "cuda":
            raise ValueError(f"the gguf method runs on the CPU or CUDA, not on {device}")
        self.in_features = in_features
        # A placeholder, so the model's loader finds `weight`; replaced by the segments.
        layer.weight = nn.Parameter(torch.empty(out_features, 0, dtype=torch.uint8), requires_grad=False)
        layer.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False) if bias else None

    def load(self, layer, param_name, tensor, shard_offset, shard_size):
        if param_name != "weight":
            return super().load(layer, param_name, tensor, shard_offset, shard_size)
        if not isinstance(tensor, GGUFWeight):
            raise ValueError(f"the gguf method loads GGUF blocks, got a {type(tensor).__name__} (is the model a GGUF file?)")
        if tensor.shape != (shard_size, self.in_features):
            raise ValueError(f"GGUF weight of shape {tensor.shape} does not fit a shard of {shard_size} rows x "
                             f"{self.in_features} columns")
        self.pending.append((shard_offset, tensor))

    def process_weights_after_loading(self, layer):
        if not self.pending:
            return
        self.pending.sort(key=lambda item: item[0])
        runs: list[list[tuple[int, GGUFWeight]]] = []
        for offset, w in self.pending:
            if runs and runs[-1][-1][1].ggml_type == w.ggml_type:
                runs[-1].append((offset, w))
            else:
                runs.append([(offset, w)])
        merged = [(run[0][0], GGUFWeight(torch.cat([w.blocks for _, w in run]).contiguous(), run[0][1].ggml_type,
                                         self.in_features)) for run in runs]
        if self.device.type == "cuda":
            from jackfield_plugins.quant.gguf_cuda import cuda_segment

            self.segments = [cuda_segment(offset, w, self.device, self.dtype) for offset, w in merged]
            buffers = [segment.tensors() for segment in self.segments]
        else:
            self.segments = [(offset, w.shape[0], w.ggml_type, w.blocks) for offset, w in merged]
            buffers = [{"blocks": w.blocks} for _, w in merged]
        for i, tensors in enumerate(buffers):  # buffers, so the model's weight bytes count them
            for name, tensor in tensors.items():
                layer.register_buffer(f"gguf_{name}_{i}", tensor)
        self.pending = []
        layer.weight = None

    def load_float(self, layer, weight):
        self.load(layer, "weight", GGUF.checkpoint_tensors(weight)["weight"], 0, weight.shape[0])

    def apply(self, layer, x):
        if x.is_cuda:
            return self.apply_cuda(layer, x)
        x2 = x.reshape(-1, x.shape[-1]).float()
        if len(self.segments) == 1:
            y = self.mm(x2, self.segments[0][3], self.segments[0][2])
        else:
            y = x2.new_empty(x2.shape[0], sum(size for _, size, _, _ in self.segments))
            for offset, size, ggml_type, blocks in self.segments:
                y[:, offset:offset + size] = self.mm(x2, blocks, ggml_type)
        if layer.bias is not None:
            y += layer.bias
        return y.to(x.dtype).reshape(*x.shape[:-1], y.shape[-1])

    def apply_cuda(self, layer, x):
        from jackfield_plugins.quant.gguf_cuda import cuda_matmul

        x2 = x.reshape(-1, x.shape[-1]).contiguous()
        bias = layer.bias
        if len(self.segments) == 1:
            y = cuda_matmul(x2, self.segments[0], bias, self.backend, self.gemv)
        else:
            y = x2.new_empty(x2.shape[0], sum(s.size for s in self.segments))
            for s in self.segments:
                y[:, s.offset:s.offset + s.size] = cuda_matmul(
                    x2, s, None if bias is None else bias[s.offset:s.offset + s.size], self.backend, self.gemv)
        return y.reshape(*x.shape[:-1], y.shape[-1])


class GGUF(QuantizationMethod):
    name = "gguf"
    priority = 10  # above `unquantized`: auto keeps a GGUF file quantized
    checkpoint_formats = (GGUF_FORMAT,)
    max_relative_error = 0.15  # Q4_0 (~0.11 on Gaussian weights) with int8 activations; Q8_0 ~0.01
    capabilities = Capabilities(devices=("cpu", "cuda"))
    description = ("Keep a GGUF file's quantized blocks; llama.cpp's ggml CPU kernels (int8 activations), "
                   "Triton dequantizing kernels on CUDA")
    supports_tensor_parallel = False  # the blocks are not cut (tp_size > 1: --quantization unquantized dequantizes)

    @classmethod
    def availability(cls) -> Availability:
        """Available where either path can run: ggml on the CPU, or Triton on a CUDA device."""
        reason = ggml_unavailable()
        if reason and cuda_available() and importlib.util.find_spec("triton") is not None:
            reason = None
        return Availability.no(reason) if reason else super().availability()

    @classmethod
    def incompatibilities(cls, ctx):
        reasons = super().incompatibilities(ctx) + triton_missing_on_cuda(ctx)
        if ctx.device == "cpu" and ggml_unavailable():
            reasons.append(f"its CPU kernels are ggml's: {ggml_unavailable()}")
        return reasons

    @classmethod
    def checkpoint_tensors(cls, weight):
        """The blocks of `weight` in Q4_0 as a GGUF file stores them (F32 when in_features is not a
        multiple of 32, as llama.cpp's quantizer also leaves such tensors), by gguf-py's quantizer."""
        from gguf.quants import quantize

        ggml_type = KIT_TYPE if weight.shape[1] % BLOCK == 0 else FALLBACK_TYPE
        blocks = np.ascontiguousarray(quantize(weight.float().cpu().numpy(), ggml_type)).view(np.uint8)
        return {"weight": GGUFWeight(torch.from_numpy(blocks.reshape(weight.shape[0], -1)), ggml_type, weight.shape[1])}

    def __init__(self, model_config, options=None):
        super().__init__(model_config, options)
        self.gemv = Gemv()  # shared by every layer: one GEMV timing per (type, shape)

    def linear_method(self, prefix):
        return GGUFLinearMethod(self.options.gemm_backend, self.gemv)

    def lm_head_method(self):
        return GGUFLinearMethod(self.options.gemm_backend, self.gemv)


@hookimpl
def jackfield_register_quantization_methods(register):
    register(GGUF)
