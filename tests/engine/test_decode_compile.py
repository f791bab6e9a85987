"""The compiled decode step on the CPU (jackfield.decode_compile): where `enable_torch_compile` unset
turns it on, and that it decodes what the eager step decodes on the embedded model, at batch 1 and 2."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch._dynamo.utils import counters

from jackfield import Engine
from jackfield.decode_compile import compile_reason

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def settings(compile_: bool | None = None, spec: str | None = None):
    return SimpleNamespace(enable_torch_compile=compile_, speculative_algorithm=spec)


@pytest.mark.parametrize("kwargs, on", [
    (dict(), True),                                   # quantized, dense, CPU: on
    (dict(quantized=False), False),                   # float32 weights: memory reads rule the step
    (dict(device=CUDA), False),                       # CUDA graphs instead
    (dict(num_experts=8), False),
    (dict(lora=True), False),
    (dict(settings=settings(spec="ngram")), True),    # plain steps compiled, verify forwards eager
    (dict(tp_size=2), False),
    (dict(quantized=False, settings=settings(True)), True),   # forced on
    (dict(settings=settings(False)), False),                  # forced off
])
def test_when_unset_compiles_only_where_it_pays(kwargs, on):
    args = dict(settings=settings(), device=CPU, quantized=True, num_experts=0, lora=False, tp_size=1) | kwargs
    reason = compile_reason(**args)
    assert (reason is None) == on, reason


# Inductor fuses and reorders float operations, so the compiled step's activations differ from the
# eager step's in the last bits. Both methods round the activations before every matmul, where such
# a difference can flip a rounding: int4_weight_only casts them to bfloat16 (most steps agree
# exactly; one flipped rounding moved a logprob by 0.027 nats), gguf quantizes them to int8 blocks,
# coarser, so its logprobs move by up to ~0.15 nats (the method's own error against float weights,
# see docs/performance.md) and greedy paths may part at a near-tie.
TOLERANCE = {"int4_weight_only": 0.05, "gguf": 0.15}
NEAR_TIE = 0.1  # nats between the eager step's top two tokens


@pytest.mark.parametrize("quantization", ["int4_weight_only", "gguf"])
def test_compiled_decode_matches_eager(quantization):
    """Greedy tokens and their logprobs, batch 1 then two prompts at once (the two compiled graphs),
    against the eager step."""
    if quantization == "gguf":
        from jackfield.sdk import ggml_unavailable

        if ggml_unavailable():
            pytest.skip(ggml_unavailable())
    prompts = ["The capital of France is", "def fibonacci(n):"]
    params = {"temperature": 0, "max_new_tokens": 12, "logprobs": True, "top_logprobs_num": 2}
    runs = {}
    counters.clear()
    for compiled in (True, False):
        with Engine(quantization=quantization, enable_torch_compile=compiled, kv_cache_bytes=64 << 20) as engine:
            assert (engine.loop.scheduler.runner.compiled_decode is not None) == compiled
            runs[compiled] = [engine.generate(p, params) for p in prompts] + engine.generate(prompts, params)
            if compiled:  # both graphs were compiled and ran (no fallback to eager)
                assert engine.loop.scheduler.runner.compiled_decode.compiled is not None
                assert counters["stats"]["unique_graphs"] == 2
        torch._dynamo.reset()  # Dynamo's cache entries live on the model class's code: drop them with the engine
    for got, want in zip(runs[True], runs[False]):
        for step, (a, b) in enumerate(zip(got["logprobs"], want["logprobs"])):
            if a["token_id"] != b["token_id"]:
                top = sorted((lp for _, lp in b["top_logprobs"]), reverse=True)
                assert top[0] - top[1] < NEAR_TIE, f"step {step}: {a} against {b}"
                break
            assert abs(a["logprob"] - b["logprob"]) < TOLERANCE[quantization], f"step {step}: {a} against {b}"
        else:
            assert got["token_ids"] == want["token_ids"]


@pytest.mark.parametrize("capture_hidden, compiled", [(False, True), (True, False)])
def test_a_decoder_reading_hidden_states_keeps_the_step_eager(capture_hidden, compiled):
    """With a speculative decoder the batch-1 decode step runs compiled, except when the decoder reads
    hidden states (EAGLE switches the model's layer capture, which the compiled step does not guard)."""
    from jackfield.model_runner import ModelRunner
    from jackfield.sdk.forward_batch import ForwardMode

    calls = []
    runner = SimpleNamespace(
        attn_backend=SimpleNamespace(init_forward_metadata=lambda fb: None), lora=None, capture_hidden=capture_hidden,
        compiled_decode=lambda ids, pos, fb: calls.append("compiled") or ids.float(),
        model=lambda ids, pos, fb: calls.append("eager") or ids.float())
    fb = SimpleNamespace(mode=ForwardMode.DECODE, batch_size=1, input_ids=torch.tensor([3]), positions=torch.tensor([7]),
                         extras={})
    ModelRunner._hidden(runner, fb)
    assert calls == ["compiled" if compiled else "eager"]
    assert ("spec_hidden" in fb.extras) == capture_hidden
