"""Shared pieces of the offline benchmarks: drive a Scheduler on token-id requests, time it, report."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import torch

from jackfield.io_struct import TokenizedGenerateReq
from jackfield.sampling.params import SamplingParams
from jackfield.selection import ATTENTION_MODES


@dataclass
class RunResult:
    outputs: dict[str, list[int]] = field(default_factory=dict)
    # (seconds, prefill tok, decode tok) per scheduler step, host time: under overlap scheduling a
    # step's time is mostly the wait for the previous forward
    step_times: list[tuple[float, int, int]] = field(default_factory=list)
    cached_tokens: dict[str, int] = field(default_factory=dict)
    first_token_s: float = 0.0  # until every request has its first token (the batch's prefill)
    total_s: float = 0.0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def replay_ms(calls: list, reps: int = 10) -> float:
    """Median device milliseconds per call of `calls`, run in order from one captured CUDA graph:
    no launch overhead counts. Calls that read different buffers keep each other's data out of L2."""
    for call in calls[:2]:
        call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    return graph_ms(graph, reps) / len(calls)


def graph_ms(graph, reps: int = 10) -> float:
    """Median device milliseconds of one replay of a captured CUDA graph (after one warm replay)."""
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def copy_gbps(nbytes: int) -> float:
    """The device's copy ceiling in GB/s: a device-to-device copy of `nbytes` (read + written), from
    one CUDA graph alternating over two buffer pairs so that L2 does not serve it."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    src2, dst2 = torch.empty_like(src), torch.empty_like(src)
    ms = replay_ms([lambda: dst.copy_(src), lambda: dst2.copy_(src2)])
    return 2 * nbytes / ms / 1e6


def submit_requests(sched, prompts: list[list[int]], max_new_tokens: int, prefix: str = "r",
                    params: SamplingParams | None = None, loras: list[str | None] | None = None) -> list[str]:
    """Hand every prompt to the scheduler as a streamed request (default: greedy, ignore_eos), running
    LoRA adapter `loras[i]` when given; returns the rids."""
    params = params or SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, ignore_eos=True)
    rids = [f"{prefix}{i}" for i in range(len(prompts))]
    for i, (rid, ids) in enumerate(zip(rids, prompts)):
        sched.handle(TokenizedGenerateReq(rid, ids, params, stream=True, lora=loras[i] if loras else None))
    return rids


def run_requests(sched, prompts: list[list[int]], max_new_tokens: int, prefix: str = "r",
                 params: SamplingParams | None = None, loras: list[str | None] | None = None) -> RunResult:
    """Submit all prompts at once (default: greedy, ignore_eos) and step the scheduler until they finish.

    The device is synchronized only before and after the run: a sync per step would stall the
    overlap scheduler, which launches the next forward before the previous one has finished."""
    res = RunResult()
    res.outputs = {rid: [] for rid in submit_requests(sched, prompts, max_new_tokens, prefix, params, loras)}
    dev = sched.runner.device
    sync(dev)
    start = time.perf_counter()
    while sched.has_work():
        before_pre, before_gen = sched.stats.prefill_tokens_computed, sched.stats.generated_tokens
        t0 = time.perf_counter()
        outs = sched.step()
        res.step_times.append((time.perf_counter() - t0, sched.stats.prefill_tokens_computed - before_pre,
                               sched.stats.generated_tokens - before_gen))
        for batch in outs:
            for o in batch.outputs:
                res.outputs[o.rid] += o.new_token_ids
                if o.finished is not None:
                    res.cached_tokens[o.rid] = o.cached_tokens
        if not res.first_token_s and all(res.outputs.values()):
            res.first_token_s = time.perf_counter() - start
    sync(dev)
    res.total_s = time.perf_counter() - start
    return res


def attention_name(components: dict) -> str:
    """The attention backend of a run: one name, or "prefill-backend+decode-backend" when they differ."""
    default = components["attention"]["name"]
    pre, dec = (components.get(k, {}).get("name") or default for k in ATTENTION_MODES)
    return pre if pre == dec else f"{pre}+{dec}"


def random_prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, vocab - 10, (n, length), generator=g).tolist()


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def git_commit() -> str:
    """The commit the code came from: $JACKFIELD_GIT_COMMIT when set, else git's HEAD, with "-dirty"
    when tracked files differ from it (a device copy of a working tree keeps an older HEAD)."""
    if os.environ.get("JACKFIELD_GIT_COMMIT"):
        return os.environ["JACKFIELD_GIT_COMMIT"]
    try:
        head = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True, stderr=subprocess.DEVNULL).strip()
        changed = subprocess.check_output(["git", "status", "--porcelain", "--untracked-files=no"], text=True,
                                          stderr=subprocess.DEVNULL).strip()
    except Exception:
        return "unknown"
    return f"{head}-dirty" if changed else head


def quantization_info(info) -> dict:
    """What a report says about the model's memory: quantization method, weight bytes as stored,
    KV cache dtype and the KV pool's capacity in tokens."""
    return {"quantization": info.components["quantization"]["name"], "weight_bytes": info.weight_bytes,
            "kv_cache_dtype": info.kv_cache_dtype, "max_total_tokens": info.max_total_tokens}


def provenance(command: str) -> dict:
    """Where a benchmark number comes from: date, command, git commit and machine."""
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command,
            "git_commit": git_commit(), "machine": machine()}


def write_report(path: str | None, command: str, metrics: dict, echo: bool = True) -> dict:
    """The report (provenance + metrics) to `path` and, with `echo`, to stdout."""
    report = {**provenance(command), "metrics": metrics}
    text = json.dumps(report, indent=2)
    if echo:
        print(text)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(text + "\n")
    return report
