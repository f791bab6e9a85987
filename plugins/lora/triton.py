"""triton: segment-GEMM LoRA kernels (SGMV for prefill, BGMV for decode), the default on CUDA.

Each update is added into the base GEMM's output by the expand kernel itself. Decode batches run
kernels that read only device tensors, so they are captured in CUDA graphs. Triton is imported when
the backend is constructed, never at discovery.
"""
from __future__ import annotations

import torch

from jackfield.sdk import Availability, Capabilities, LoRABackend, LoRAWeights, hookimpl, require_cuda


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
        from jackfield_plugins.lora import sgmv

        self.kernels = sgmv

    def apply(self, weights: LoRAWeights, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        if x.stride(-1) != 1:
            x = x.contiguous()
        if self.batch.decode:
            return self.kernels.bgmv(x, weights, base_out, self.batch)
        return self.kernels.sgmv(x, weights, base_out, self.batch)


@hookimpl
def jackfield_register_lora_backends(register):
    register(TritonLoRA)
