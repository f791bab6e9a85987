"""torch.compile of the batch-1 decode step where no CUDA graph replays it (the CPU).

On the CPU a small model's batch-1 decode step is mostly per-operator overhead: SmolLM2-135M runs
~2,700 PyTorch operators per token, and at several microseconds each they cost as much as its
quantized weight matmuls. Inductor fuses the elementwise chains (norms, rotary, activation) into a
few C++ loops and calls the rest from one generated wrapper: SmolLM2 batch-1 decode on 2 cores
goes from 41 to 66 tok/s with the gguf method, 29 to 45 with int4_weight_only.

Only batch-1 decode forwards run compiled: one graph, its key count dynamic. Prefill and mixed
forwards stay eager, so a prompt of a new length never waits for a compile; so do larger decode
batches, where compute outgrows the overhead and the compiled graph measured slower (SmolLM2 gguf,
batch 16: 41 tok/s compiled, 91 eager).

`enable_torch_compile` unset turns it on where it pays and the whole step traces into one graph:
quantized weights (float32 weights are read from memory for most of the step: +16% for a 55 s
compile), a dense model (no MoE routing on the host), no LoRA, one rank. With a speculative
decoder the plain decode steps run compiled (the load policy picks them where speculating loses),
the verify forwards eagerly, unless the decoder reads hidden states (EAGLE): it switches the
model's layer capture between forwards, a module attribute the compiled step does not guard, so
that engine decodes eagerly.
The first batch-1 decode compiles (~25 s on 2 cores; the server's warm-up pays it before it
reports ready). A compile that fails leaves the step eager, with the error logged.

Two options take host time out of the compiled step (SmolLM2 gguf, 2 cores: ~1 ms each of an
~11 ms step). `cpp_wrapper`: Inductor's wrapper, which calls the ~300 kernels and operators of the
step, is generated as C++ instead of Python. `skip_guard_on_all_nn_modules_unsafe`: Dynamo's check
before each call stops guarding the modules' parameters and attributes (1.4 ms of guards -> 0.5).
That is safe here because only batch-1 decode forwards run compiled, and nothing in them changes a
module: weights are loaded once (LoRA, which swaps weights, turns compiling off; EAGLE's layer
capture, above, keeps the step eager), and every per-step
value reaches the graph as a tensor or through the forward batch, which stays guarded.
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def compile_reason(settings, device: torch.device, quantized: bool, num_experts: int, lora: bool,
                   tp_size: int) -> str | None:
    """Why the batch-1 decode step is not compiled here (None: it is)."""
    if settings.enable_torch_compile is not None:
        return None if settings.enable_torch_compile else "enable_torch_compile is off"
    if device.type != "cpu":
        return f"enable_torch_compile unset: on for the CPU only, not {device.type}"
    for blocked, why in ((not quantized, "float32 weights: memory reads rule the step"),
                         (num_experts, "MoE routing reads expert counts on the host"), (lora, "LoRA is on"),
                         (tp_size > 1, "tensor parallelism")):
        if blocked:
            return f"{why} (enable_torch_compile forces it)"
    return None


class CompiledDecode:
    """The model's forward compiled for batch-1 decode steps; eager again for good if compiling fails."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.compiled = torch.compile(model.forward, dynamic=True, options={
            "cpp_wrapper": True, "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe})

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, fb) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(input_ids, positions, fb)
            except Exception:  # an operator inductor cannot lower: the eager step still works
                log.exception("compiling the decode step failed; decoding eagerly")
                self.compiled = None
        return self.model(input_ids, positions, fb)
