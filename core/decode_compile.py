"""torch.compile of the decode step where no CUDA graph replays it (the CPU).

On the CPU a small model's decode step is largely per-operator overhead: SmolLM2-135M runs ~2,700
PyTorch operators per step, and at several microseconds each they cost as much as its quantized
weight matmuls at batch 1 (and ~20% of a batch-16 step). Inductor fuses the elementwise chains
(norms, rotary, activation) into a few C++ loops and calls the rest from one generated wrapper:
SmolLM2 batch-1 decode on 2 cores goes from 41 to 66 tok/s with the gguf method, 29 to 45 with
int4_weight_only; batch 16 from 208-227 to 245-268 tok/s (gguf, 2-core AMD EPYC, in one process
alternating).

Decode forwards of every batch size run compiled, through two graphs: batch 1 (Dynamo specializes
a size of 1) and batch 2 and up (the batch and key counts dynamic). Prefill and mixed forwards stay
eager, so a prompt of a new length never waits for a compile. The server's warm-up runs one request
and then two at once, so both graphs are compiled before it reports ready (on 2 cores ~25 s and
~35 s, the batched graph ~2 min the first time on a machine, before Inductor's on-disk cache has
it).

`enable_torch_compile` unset turns it on where it pays and the whole step traces into one graph:
quantized weights (float32 weights are read from memory for most of the step: +16% for a 55 s
compile), a dense model (no MoE routing on the host), no LoRA, one rank. With a speculative
decoder the plain decode steps run compiled (the load policy picks them where speculating loses),
the verify forwards eagerly, unless the decoder reads hidden states (EAGLE): it switches the
model's layer capture between forwards, a module attribute the compiled step does not guard, so
that engine decodes eagerly. A compile that fails leaves the step eager, with the error logged.

Two options take host time out of the compiled step (SmolLM2 gguf, 2 cores: ~1 ms each of an
~11 ms batch-1 step). `cpp_wrapper`: Inductor's wrapper, which calls the ~300 kernels and operators
of the step, is generated as C++ instead of Python. `skip_guard_on_all_nn_modules_unsafe`: Dynamo's
check before each call stops guarding the modules' parameters and attributes (1.4 ms of guards ->
0.5). That is safe here because only decode forwards run compiled, and nothing in them changes a
module: weights are loaded once (LoRA, which swaps weights, turns compiling off; EAGLE's layer
capture, above, keeps the step eager), and every per-step value reaches the graph as a tensor or
through the forward batch, which stays guarded.
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def compile_reason(settings, device: torch.device, quantized: bool, num_experts: int, lora: bool,
                   tp_size: int) -> str | None:
    """Why the decode step is not compiled here (None: it is)."""
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
    """The model's forward compiled for decode steps; eager again for good if compiling fails."""

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
