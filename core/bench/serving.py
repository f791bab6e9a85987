"""`jackfield bench serving`: a streaming load generator for OpenAI-compatible and native servers.

Requests arrive as a Poisson process (`--request-rate`, inf sends all at once), optionally capped
by `--max-concurrency`. Each request streams over SSE; the benchmark records time to first token,
inter-token gaps and end-to-end latency, then prints a table and can write a JSON report. Against a
jackfield server it also reports where TTFT went inside the server (stage_metrics.py).
Python API: `await run_benchmark(BenchConfig(...))` returns the report dict.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import numpy as np

from jackfield.bench.http_stream import StreamClient
from jackfield.bench.datasets import (
    BenchRequest, count_tokens, load_tokenizer, sample_random_requests, sample_sharegpt_requests, with_shared_prefixes,
)
from jackfield.bench.sse import StreamState, iter_sse_json, parse_chunk
from jackfield.bench.report import RequestResult, format_table, jsonable, summarize, write_json
from jackfield.bench.stage_metrics import scrape, stage_means_ms

BACKENDS = ("openai", "openai-chat", "jackfield")
ENDPOINTS = {"openai": "/v1/completions", "openai-chat": "/v1/chat/completions", "jackfield": "/generate"}


@dataclass
class BenchConfig:
    """Everything one benchmark run needs; mirrors the command-line flags."""

    base_url: str = "http://127.0.0.1:30000"
    backend: str = "openai"
    model: str | None = None
    dataset: str = "random"
    dataset_path: str | None = None
    num_prompts: int = 100
    random_input_len: int = 256
    random_output_len: int = 128
    random_range_ratio: float = 0.0
    sharegpt_output_len: int | None = None
    shared_prefix_groups: int = 8
    shared_prefix_len: int = 1024
    tokenizer: str | None = None
    request_rate: float = float("inf")
    max_concurrency: int | None = None
    seed: int = 0
    ignore_eos: bool = True
    timeout: float = 300.0
    output_file: str | None = None
    disable_tqdm: bool = False
    extra_request_body: dict[str, Any] = field(default_factory=dict)


def build_requests(config: BenchConfig, tokenizer: Any = None) -> list[BenchRequest]:
    """The prompts for this run, from the random generator or a ShareGPT file."""
    if config.num_prompts < 1:
        raise ValueError("--num-prompts must be >= 1")
    if config.dataset == "sharegpt":
        if not config.dataset_path:
            raise ValueError("--dataset sharegpt needs --dataset-path")
        return sample_sharegpt_requests(
            config.dataset_path, config.num_prompts, tokenizer, config.seed, config.sharegpt_output_len)
    if config.dataset == "random":
        return sample_random_requests(
            config.num_prompts, config.random_input_len, config.random_output_len,
            config.random_range_ratio, tokenizer, config.seed)
    if config.dataset == "shared-prefix":  # random prompts, each after one of the groups' prefixes
        own = sample_random_requests(config.num_prompts, config.random_input_len, config.random_output_len,
                                     config.random_range_ratio, tokenizer, config.seed + 1)
        return with_shared_prefixes(own, config.shared_prefix_groups, config.shared_prefix_len, tokenizer,
                                    config.seed)
    raise ValueError(f"unknown dataset {config.dataset!r} (choose random, shared-prefix or sharegpt)")


def request_body(config: BenchConfig, model: str, req: BenchRequest) -> dict[str, Any]:
    """The JSON body for one streaming request in the configured backend's dialect."""
    if config.backend == "jackfield":
        params = {"max_new_tokens": req.output_len, "temperature": 0, "ignore_eos": config.ignore_eos}
        body: dict[str, Any] = {"sampling_params": params, "stream": True}
        if req.prompt_ids is not None:
            body["input_ids"] = req.prompt_ids
        else:
            body["text"] = req.prompt
    else:
        body = {"model": model, "max_tokens": req.output_len, "temperature": 0.0, "stream": True,
                "stream_options": {"include_usage": True}}
        if config.backend == "openai-chat":
            body["messages"] = [{"role": "user", "content": req.prompt}]
        else:
            body["prompt"] = req.prompt
        if config.ignore_eos:
            body["ignore_eos"] = True
    body.update(config.extra_request_body)
    return body


async def send_request(client: StreamClient, config: BenchConfig, model: str,
                       req: BenchRequest, tokenizer: Any = None) -> RequestResult:
    """Send one streaming request and time its content chunks; errors become a failed result."""
    result = RequestResult(prompt_len=req.prompt_len)
    state = StreamState()
    body = request_body(config, model, req)
    start = last = time.perf_counter()
    try:
        async with client.stream(ENDPOINTS[config.backend], body) as resp:
            if resp.status_code != 200:
                detail = (await resp.aread()).decode("utf-8", "replace").strip()
                result.error = f"HTTP {resp.status_code}: {detail[:300]}"
                return result
            async for chunk in iter_sse_json(resp.aiter_lines()):
                delta = parse_chunk(config.backend, chunk, state)
                if state.error:
                    result.error = f"server error: {state.error}"
                    return result
                if delta:
                    now = time.perf_counter()
                    if state.chunks == 0:
                        result.ttft = now - start
                    else:
                        result.itl.append(now - last)
                    last = now
                    state.chunks += 1
    except Exception as exc:  # network errors, bad payloads: count as failed, keep going
        result.error = f"{type(exc).__name__}: {exc}".rstrip(": ")
        return result
    result.latency = time.perf_counter() - start
    if state.events == 0:
        result.error = "response had no SSE data events (is streaming supported?)"
        return result
    if state.completion_tokens is not None:
        result.output_len = state.completion_tokens
    elif tokenizer is not None:
        result.output_len = count_tokens(state.text, tokenizer)
    else:
        result.output_len = state.chunks
    if state.prompt_tokens:
        result.prompt_len = state.prompt_tokens
    result.success = True
    return result


async def resolve_model(client: httpx.AsyncClient, base_url: str) -> str:
    """The first model id listed by GET {base_url}/v1/models, or "default" if that fails."""
    try:
        resp = await client.get(base_url + "/v1/models", timeout=10.0)
        models = resp.json().get("data") or []
        if resp.status_code == 200 and models:
            return str(models[0]["id"])
    except Exception:
        pass
    return "default"


async def arrivals(requests: list[BenchRequest], rate: float, seed: int):
    """Yield requests with exponential inter-arrival gaps (a Poisson process of `rate` req/s)."""
    rng = np.random.default_rng(seed + 1)
    for i, req in enumerate(requests):
        yield req
        if rate != float("inf") and rate > 0 and i + 1 < len(requests):
            await asyncio.sleep(float(rng.exponential(1.0 / rate)))


def _progress_bar(total: int, disable: bool):
    if disable:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="requests", file=sys.stderr)


async def run_benchmark(config: BenchConfig) -> dict[str, Any]:
    """Run one benchmark and return the JSON-ready report (metrics, per-request data, args)."""
    config.base_url = config.base_url.rstrip("/")
    if config.backend not in BACKENDS:
        raise ValueError(f"unknown backend {config.backend!r} (choose from {', '.join(BACKENDS)})")
    tokenizer = load_tokenizer(config.tokenizer)
    requests = build_requests(config, tokenizer)
    timeout = httpx.Timeout(config.timeout)
    sem = asyncio.Semaphore(config.max_concurrency) if config.max_concurrency else None
    bar = _progress_bar(len(requests), config.disable_tqdm)
    streams = StreamClient(config.base_url)  # the timed requests (http_stream.py); httpx for the rest
    async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
        model = config.model
        if not model:
            model = await resolve_model(client, config.base_url) if config.backend != "jackfield" else "default"

        async def one(req: BenchRequest) -> RequestResult:
            if sem is not None:
                await sem.acquire()
            try:
                return await asyncio.wait_for(send_request(streams, config, model, req, tokenizer), config.timeout)
            except asyncio.TimeoutError:
                return RequestResult(prompt_len=req.prompt_len, error=f"timed out after {config.timeout:g}s")
            finally:
                if sem is not None:
                    sem.release()
                if bar is not None:
                    bar.update(1)

        stages_before = await scrape(client, config.base_url)
        start = time.perf_counter()
        tasks = [asyncio.create_task(one(req)) async for req in arrivals(requests, config.request_rate, config.seed)]
        results = list(await asyncio.gather(*tasks))
        duration = time.perf_counter() - start
        stages = stage_means_ms(stages_before, await scrape(client, config.base_url))
    await streams.close()
    if bar is not None:
        bar.close()
    report = {"backend": config.backend, "model": model, "base_url": config.base_url}
    report.update(summarize(results, duration))
    report["first_token_stages_ms"] = stages  # the server's own account of TTFT (jackfield servers only)
    report["args"] = asdict(config)
    return jsonable(report)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the `bench serving` flags on `parser`."""
    d = BenchConfig()
    a = parser.add_argument
    a("--base-url", default=d.base_url, help="server root, e.g. http://127.0.0.1:30000")
    a("--backend", choices=BACKENDS, default=d.backend, help="request dialect (default: openai completions)")
    a("--model", default=None, help="model name for OpenAI bodies (default: first id from /v1/models)")
    a("--dataset", choices=("random", "shared-prefix", "sharegpt"), default=d.dataset,
      help="shared-prefix: random prompts in groups that start alike (the random lengths are each prompt's own part)")
    a("--dataset-path", default=None, help="ShareGPT JSON file for --dataset sharegpt")
    a("--num-prompts", type=int, default=d.num_prompts)
    a("--random-input-len", type=int, default=d.random_input_len)
    a("--random-output-len", type=int, default=d.random_output_len)
    a("--random-range-ratio", type=float, default=d.random_range_ratio,
      help="lengths are uniform in [len * ratio, len]")
    a("--sharegpt-output-len", type=int, default=None, help="override ShareGPT answer lengths")
    a("--shared-prefix-groups", type=int, default=d.shared_prefix_groups, help="shared-prefix: number of groups")
    a("--shared-prefix-len", type=int, default=d.shared_prefix_len, help="shared-prefix: tokens of each group's prefix")
    a("--tokenizer", default=None, help="HF tokenizer path for exact token counts")
    a("--request-rate", type=float, default=d.request_rate, help="requests/s, Poisson arrivals (inf = all at once)")
    a("--max-concurrency", type=int, default=None, help="cap on requests in flight")
    a("--seed", type=int, default=d.seed)
    a("--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
      help="ask the server to ignore EOS so outputs reach the requested length")
    a("--timeout", type=float, default=d.timeout, help="seconds allowed per request")
    a("--extra-request-body", default=None, help="JSON object merged into every request body")
    a("--output-file", default=None, help="write the JSON report here")
    a("--disable-tqdm", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Build a BenchConfig from parsed command-line arguments."""
    names = set(BenchConfig.__dataclass_fields__) - {"extra_request_body"}
    config = BenchConfig(**{k: v for k, v in vars(args).items() if k in names})
    if getattr(args, "extra_request_body", None):
        extra = json.loads(args.extra_request_body)
        if not isinstance(extra, dict):
            raise ValueError("--extra-request-body must be a JSON object")
        config.extra_request_body = extra
    return config


def run(args: argparse.Namespace) -> int:
    """CLI entry: run the benchmark, print the table, write JSON; 0 if any request succeeded."""
    try:
        config = config_from_args(args)
        report = asyncio.run(run_benchmark(config))
    except (OSError, ValueError, ImportError) as exc:
        print(f"jackfield bench serving: error: {exc}", file=sys.stderr)
        return 1
    header = {"Backend": config.backend, "Model": report["model"], "Dataset": config.dataset,
              "Request rate (req/s)": config.request_rate, "Max concurrency": config.max_concurrency or "none"}
    print(format_table(report, header))
    if config.output_file:
        from jackfield.bench.common import provenance

        report = {**provenance("jackfield bench serving " + " ".join(sys.argv[3:])), **report}
        write_json(config.output_file, report)
        print(f"report written to {config.output_file}")
    total = report["completed"] + report["failed"]
    if report["completed"] == 0:
        print(f"jackfield bench serving: error: all {total} requests to {config.base_url} failed; "
              f"first error: {report['errors'][0]}", file=sys.stderr)
        return 1
    if report["failed"]:
        print(f"warning: {report['failed']} of {total} requests failed; first error: {report['errors'][0]}",
              file=sys.stderr)
    return 0
