"""triton: segment-GEMM LoRA kernels (SGMV for prefill, BGMV for decode), the default on CUDA.

Each update is added into the base GEMM's output by the expand kernel itself. Small decode batches
run the BGMV kernels of `bgmv.py` (a shrink and an expand launch per wrapped layer, per token), which
compute the layer's RMSNorm / SiLU-and-mul input themselves (`fuses_prologue`), so the base GEMVs
keep their fused prologues. Decode batches of GROUPED_MIN_TOKENS or more come grouped by slot
(`decode_tile`) and run the segment kernels over tiles of GROUPED_TILE tokens of one adapter, which
read each adapter once per tile instead of once per token. Both read only device tensors, so they
are captured in CUDA graphs. Triton is imported when the backend is constructed, never at discovery.
"""
from __future__ import annotations

import os

import torch

from jackfield.sdk import Availability, Capabilities, LoRABackend, LoRAWeights, hookimpl, require_cuda

GROUPED_TILE = 16        # tokens per tile (the smallest tl.dot M)
GROUPED_MIN_TOKENS = 32  # decode batches from this size on run grouped by slot (lora_decode_kernels.py)
# benchmarks compare the two decode paths with JACKFIELD_LORA_GROUPED_MIN_TOKENS (e.g. 100000: BGMV only)
GROUPED_MIN_ENV = "JACKFIELD_LORA_GROUPED_MIN_TOKENS"


class TritonLoRA(LoRABackend):
    name = "triton"
    priority = 50
    capabilities = Capabilities(devices=("cuda",), dtypes=("float16", "bfloat16", "float32"))
    description = "Triton SGMV (prefill) and BGMV (decode) LoRA kernels that add into the base output"
    requires_packages = ("triton",)
    supports_cuda_graph = True

    @classmethod
    def availability(cls) -> Availability:
        found = super().availability()
        return found if not found.ok else require_cuda()

    def __init__(self, runtime):
        super().__init__(runtime)
        from jackfield_plugins.lora import bgmv, sgmv

        self.sgmv, self.bgmv = sgmv, bgmv
        value = os.environ.get(GROUPED_MIN_ENV, str(GROUPED_MIN_TOKENS))
        if not value.isdigit():
            raise ValueError(f"{GROUPED_MIN_ENV}={value!r}: expected a token count (a non-negative integer)")
        self.grouped_min_tokens = int(value)

    def decode_tile(self, num_tokens: int) -> int:
        return GROUPED_TILE if num_tokens >= self.grouped_min_tokens else 0

    def fuses_prologue(self) -> bool:
        return self.batch is not None and self.batch.decode and self.batch.tiles is None

    def apply(self, weights: LoRAWeights, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        if x.stride(-1) != 1:
            x = x.contiguous()
        if self.batch.decode:
            if self.batch.tiles is not None:
                return self.sgmv.grouped(x, weights, base_out, self.batch)
            return self.bgmv.decode(x, weights, base_out, self.batch)
        return self.sgmv.sgmv(x, weights, base_out, self.batch)

    def apply_normed(self, weights, h, norm_weight, eps, base_out):
        if not self.fuses_prologue() or h.stride(-1) != 1:
            return super().apply_normed(weights, h, norm_weight, eps, base_out)
        return self.bgmv.decode(h, weights, base_out, self.batch, self.bgmv.RMSNORM, norm_weight, eps)

    def apply_silu_mul(self, weights, gate_up, base_out):
        if not self.fuses_prologue() or gate_up.stride(-1) != 1:
            return super().apply_silu_mul(weights, gate_up, base_out)
        return self.bgmv.decode(gate_up, weights, base_out, self.batch, self.bgmv.SILU_MUL)


@hookimpl
def jackfield_register_lora_backends(register):
    register(TritonLoRA)
