"""Hugging Face transformers as the peer of `jackfield bench`, side by side in the same command.

The peer runs the same model shape (and the same weights where the model has weights; random values
of the same shapes for `--load-format dummy`) on the same prompts:
- `measure_generate`: one static batch through `generate` (the `latency` peer, in process);
- `measure_continuous_batching`: all prompts through `generate_batch`, transformers' continuous
  batching (the `offline` peer). `run_offline_peer` runs it in a subprocess before jackfield
  starts, so the two never hold GPU memory at the same time:
  `python -m jackfield.bench.hf_peer --model M --load-format F --device D --dtype T --num-prompts N ...`
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def load_model(source, dtype, device):
    """The transformers model of a jackfield ModelSource: its weights, or random ones of the same
    shapes for `--load-format dummy` (or a directory without weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if source.load_format != "dummy" and any(Path(source.path).glob("*.safetensors")):
        return AutoModelForCausalLM.from_pretrained(str(source.path), dtype=dtype).to(device).eval()
    with torch.device(device):  # dummy weights: the same shapes, random values
        cfg = AutoConfig.for_model(**{k: v for k, v in source.hf_config.items() if k != "architectures"})
        return AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()


def measure_generate(model, device, bs: int, input_len: int, output_len: int, compile_: bool) -> dict:
    """Prefill time of one forward, then `generate` of output_len tokens for a static batch."""
    import torch

    from jackfield.bench.common import random_prompts, sync

    ids = torch.tensor(random_prompts(bs, input_len, model.config.vocab_size, 0), device=device)
    kwargs = dict(do_sample=False, max_new_tokens=output_len, min_new_tokens=output_len, pad_token_id=0)
    if compile_:
        # transformers compiles the decode step itself (CompileConfig, CUDA graphs) when generate runs
        # with a static cache; compiling model.forward by hand would also capture the prefill call below
        kwargs["cache_implementation"] = "static"
    with torch.inference_mode():
        model.generate(ids[:, :16], **dict(kwargs, max_new_tokens=4, min_new_tokens=4))
        if compile_:
            for _ in range(2):
                model.generate(ids, **kwargs)
        sync(device)
        t0 = time.perf_counter()
        model(ids)
        sync(device)
        prefill_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.generate(ids, **kwargs)
        sync(device)
        total = time.perf_counter() - t0
    decode_s = max(total - prefill_s, 1e-9)
    return {"batch_size": bs, "prefill_s": prefill_s, "decode_s": decode_s,
            "decode_tok_per_s": bs * (output_len - 1) / decode_s, "total_s": total, "compiled": compile_}


def measure_continuous_batching(model, prompts: list[list[int]], output_len: int) -> dict:
    """Every prompt through `generate_batch` (greedy, EOS disabled). The time runs from the first
    request leaving the queue to the last one finishing: the manager's start-up (KV allocation,
    CUDA-graph warm-up) is left out, as jackfield's engine start-up is.

    On a GPU transformers sizes its KV cache from free device memory. On a CPU it would take 90% of
    the free host memory, so there the cache holds exactly the workload's pages instead."""
    from transformers import ContinuousBatchingConfig, GenerationConfig

    config = GenerationConfig(max_new_tokens=output_len, do_sample=False, eos_token_id=-1, pad_token_id=0)
    cb_config = None
    if model.device.type == "cpu":
        page = ContinuousBatchingConfig().page_size
        pages = sum(-(-(len(p) + output_len) // page) for p in prompts)
        cb_config = ContinuousBatchingConfig(num_blocks=pages + 4)
    t0 = time.perf_counter()
    outs = list(model.generate_batch(inputs=prompts, generation_config=config,
                                     continuous_batching_config=cb_config).values())
    wall = time.perf_counter() - t0
    errors = [o.error for o in outs if o.error]
    if errors:
        raise RuntimeError(f"transformers generate_batch failed for {len(errors)} requests: {errors[0]}")
    span = max(o.lifespan[1] for o in outs) - min(o.lifespan[0] for o in outs)
    tokens = sum(len(o.generated_tokens) for o in outs)
    return {"engine": "transformers generate_batch", "requests": len(outs), "output_tokens": tokens,
            "total_s": span, "output_tok_per_s": tokens / span, "call_wall_s": wall}


def run_offline_peer(model: str, load_format: str, device: str, dtype: str, num_prompts: int, input_len: int,
                     output_len: int, seed: int) -> dict:
    """measure_continuous_batching in a fresh process; returns its JSON, or {"error": ...}."""
    cmd = [sys.executable, "-m", "jackfield.bench.hf_peer", "--model", model, "--load-format", load_format,
           "--device", device, "--dtype", dtype, "--num-prompts", str(num_prompts), "--input-len", str(input_len),
           "--output-len", str(output_len), "--seed", str(seed)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:  # the peer failing must not lose jackfield's own numbers
        return {"error": f"cannot start {cmd[0]}: {exc}"}
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-600:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="transformers continuous batching on jackfield's offline workload")
    p.add_argument("--model", required=True)
    p.add_argument("--load-format", default="auto")
    p.add_argument("--device", required=True)
    p.add_argument("--dtype", required=True, choices=["float32", "float16", "bfloat16"])
    p.add_argument("--num-prompts", type=int, required=True)
    p.add_argument("--input-len", type=int, required=True)
    p.add_argument("--output-len", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    import torch

    from jackfield.bench.common import random_prompts
    from jackfield.loader.source import resolve_model

    src = resolve_model(args.model, args.load_format)
    model = load_model(src, getattr(torch, args.dtype), torch.device(args.device))
    vocab = model.config.vocab_size
    measure_continuous_batching(model, random_prompts(min(args.num_prompts, 8), 16, vocab, 99), 4)  # warm-up
    result = measure_continuous_batching(model, random_prompts(args.num_prompts, args.input_len, vocab, args.seed),
                                         args.output_len)
    import transformers

    result["transformers"] = transformers.__version__
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
