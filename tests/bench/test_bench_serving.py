"""`jackfield bench serving` against a tiny fake streaming server running in a background thread."""
from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, StreamingResponse

from jackfield.bench import serving
from jackfield.bench.datasets import sample_random_requests, sample_sharegpt_requests, with_shared_prefixes
from jackfield.bench.serving import BenchConfig, run_benchmark

TOKEN_SLEEP = 0.002


def make_app(stats: dict) -> FastAPI:
    """Fake server: OpenAI completions SSE (usage optional), /v1/models, and native /generate SSE."""
    app = FastAPI()

    @app.get("/metrics")
    async def metrics():
        """A jackfield server's TTFT stages: 1 ms queued and 20 ms of prefill per request so far."""
        n = stats["requests"]
        lines = [f'jackfield_first_token_stage_seconds_{kind}{{stage="{stage}"}} {value}'
                 for stage, per in (("prefill", 0.020), ("queue", 0.001))
                 for kind, value in (("count", float(n)), ("sum", per * n))]
        return PlainTextResponse("\n".join(lines) + "\n")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        stats["requests"] += 1
        stats["models"].append(body.get("model"))
        n = int(body["max_tokens"])
        send_usage = stats["usage"] and (body.get("stream_options") or {}).get("include_usage")

        async def events():
            for i in range(n):
                await asyncio.sleep(TOKEN_SLEEP)
                stats["tokens"] += 1
                chunk = {"id": "x", "object": "text_completion", "choices": [{"index": 0, "text": f" t{i}"}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            yield ": keep-alive comment\n\n"
            if send_usage:
                usage = {"prompt_tokens": len(body["prompt"].split()), "completion_tokens": n, "total_tokens": 0}
                yield f"data: {json.dumps({'id': 'x', 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/generate")
    async def generate(request: Request):
        body = await request.json()
        n = int(body["sampling_params"]["max_new_tokens"])

        async def events():
            text = ""
            for i in range(n):
                await asyncio.sleep(TOKEN_SLEEP)
                stats["tokens"] += 1
                text += f" t{i}"
                meta = {"prompt_tokens": len(body["text"].split()), "completion_tokens": i + 1}
                yield f"data: {json.dumps({'text': text, 'meta_info': meta})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.fixture(scope="module")
def server():
    """Start the fake server on a free port; yield (base_url, stats)."""
    stats = {"tokens": 0, "usage": True, "models": [], "requests": 0}
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(make_app(stats), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not srv.started and time.time() < deadline:
        time.sleep(0.02)
    assert srv.started, "fake server did not start"
    yield f"http://127.0.0.1:{port}", stats
    srv.should_exit = True
    thread.join(timeout=5)
    sock.close()


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def check_report(report: dict, sent_tokens: int) -> None:
    assert report["completed"] == 8 and report["failed"] == 0
    assert report["total_output_tokens"] == sent_tokens
    for metric in ("ttft", "itl", "e2e"):
        assert 0 < report[f"median_{metric}_ms"] <= report[f"p90_{metric}_ms"] <= report[f"p99_{metric}_ms"]
        assert report[f"mean_{metric}_ms"] > 0
    assert report["mean_ttft_ms"] < report["mean_e2e_ms"]
    assert all(t < e for t, e in zip(report["ttfts_ms"], report["e2e_latencies_ms"]))
    assert report["request_throughput"] > 0 and report["output_throughput"] > 0
    assert report["total_throughput"] == pytest.approx(report["input_throughput"] + report["output_throughput"])
    json.dumps(report)  # JSON-ready, including request_rate=inf in args


@pytest.mark.parametrize("backend", ["openai", "jackfield"])
def test_backends(server, backend):
    base, stats = server
    stats["tokens"], stats["usage"] = 0, True
    config = BenchConfig(base_url=base, backend=backend, num_prompts=8, max_concurrency=4,
                         random_input_len=32, random_output_len=12, random_range_ratio=0.5, disable_tqdm=True)
    report = asyncio.run(run_benchmark(config))
    check_report(report, stats["tokens"])
    assert report["total_input_tokens"] == sum(report["input_lens"])
    stages = report["first_token_stages_ms"]  # the server's /metrics, before and after the run
    if backend == "openai":
        assert report["model"] == "fake-model" and stats["models"][-1] == "fake-model"
        assert list(stages) == ["queue", "prefill"]  # in the path's order
        assert stages["queue"] == pytest.approx(1.0) and stages["prefill"] == pytest.approx(20.0)
        assert "TTFT by stage" in serving.format_table(report)
    else:  # /generate requests are not counted by this fake
        assert stages == {}


def test_chunk_counting_without_usage(server):
    base, stats = server
    stats["tokens"], stats["usage"] = 0, False
    config = BenchConfig(base_url=base, num_prompts=8, max_concurrency=4, random_input_len=16,
                         random_output_len=10, random_range_ratio=1.0, request_rate=200.0,
                         model="given", disable_tqdm=True)
    report = asyncio.run(run_benchmark(config))
    stats["usage"] = True
    check_report(report, 80)
    assert stats["tokens"] == 80 and stats["models"][-1] == "given"


def test_cli_path(server, tmp_path, capsys):
    base, stats = server
    stats["tokens"] = 0
    out = tmp_path / "report.json"
    parser = argparse.ArgumentParser()
    serving.add_arguments(parser)
    args = parser.parse_args(["--base-url", base, "--num-prompts", "8", "--max-concurrency", "4",
                              "--random-input-len", "20", "--random-output-len", "8",
                              "--output-file", str(out), "--disable-tqdm", "--no-ignore-eos"])
    assert serving.run(args) == 0
    printed = capsys.readouterr().out
    assert "Serving Benchmark Result" in printed and "Median TTFT" in printed
    report = json.loads(out.read_text())
    check_report(report, stats["tokens"])
    assert report["args"]["request_rate"] == "inf" and report["args"]["ignore_eos"] is False


def test_dead_server_counts_failures(capsys):
    parser = argparse.ArgumentParser()
    serving.add_arguments(parser)
    args = parser.parse_args(["--base-url", dead_url(), "--num-prompts", "3", "--disable-tqdm", "--timeout", "5"])
    assert serving.run(args) == 1
    err = capsys.readouterr().err
    assert "all 3 requests" in err and "failed" in err and "Traceback" not in err
    report = asyncio.run(run_benchmark(BenchConfig(base_url=dead_url(), num_prompts=2, disable_tqdm=True)))
    assert report["completed"] == 0 and report["failed"] == 2 and report["model"] == "default"


def test_sharegpt_loading(tmp_path):
    data = [
        {"conversations": [{"from": "human", "value": "tell me a story about a small red fox"},
                           {"from": "gpt", "value": " ".join(["word"] * 20)}]},
        {"conversations": [{"from": "system", "value": "be nice"},
                           {"from": "human", "value": "what is the capital city of France please"},
                           {"from": "gpt", "value": "The capital of France is Paris, a large city."}]},
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello there friend"}]},
        {"conversations": [{"from": "human", "value": "a question with no answer at all"}]},
    ]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(data))
    reqs = sample_sharegpt_requests(str(path), 10, seed=1)
    assert len(reqs) == 2  # the too-short and the unanswered conversations are dropped
    by_prompt = {r.prompt: r for r in reqs}
    assert by_prompt["tell me a story about a small red fox"].output_len == 26  # ceil(20 * 1.3)
    assert all(r.prompt_len >= 4 for r in reqs)
    assert len(sample_sharegpt_requests(str(path), 1, seed=1)) == 1
    fixed = sample_sharegpt_requests(str(path), 10, fixed_output_len=7)
    assert {r.output_len for r in fixed} == {7}


def test_sharegpt_run(server, tmp_path):
    base, stats = server
    stats["tokens"] = 0
    convs = [{"conversations": [{"from": "human", "value": f"prompt number {i} with some words"},
                                {"from": "gpt", "value": "answer " * (5 + i)}]} for i in range(8)]
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(convs))
    config = BenchConfig(base_url=base, dataset="sharegpt", dataset_path=str(path), num_prompts=8,
                         max_concurrency=4, disable_tqdm=True)
    check_report(asyncio.run(run_benchmark(config)), stats["tokens"])


def test_random_lengths():
    reqs = sample_random_requests(50, 40, 20, range_ratio=0.5, seed=3)
    assert all(20 <= r.prompt_len <= 40 and 10 <= r.output_len <= 20 for r in reqs)
    assert all(len(r.prompt.split()) == r.prompt_len for r in reqs)
    assert [r.prompt for r in reqs] == [r.prompt for r in sample_random_requests(50, 40, 20, 0.5, seed=3)]
    with pytest.raises(ValueError):
        sample_random_requests(2, 10, 10, range_ratio=1.5)


def test_shared_prefix_prompts_start_alike_per_group():
    def make():
        return with_shared_prefixes(sample_random_requests(12, 10, 5, range_ratio=1.0, seed=2), 3, 30, seed=1)

    reqs = make()
    starts = [" ".join(r.prompt.split()[:30]) for r in reqs]
    assert len(set(starts)) == 3 and all(starts.count(s) == 4 for s in starts)
    assert all(r.prompt_len == 40 and len(r.prompt.split()) == 40 and r.output_len == 5 for r in reqs)
    assert len({r.prompt for r in reqs}) == 12
    assert [r.prompt for r in make()] == [r.prompt for r in reqs]
    with pytest.raises(ValueError):
        with_shared_prefixes(reqs, 0, 10)


def test_tpot_counts_every_token_itl_only_text_chunks():
    """TPOT spreads the time after the first token over all later tokens; ITL only sees the gaps
    between chunks that carried text (here 3 chunks for 9 tokens)."""
    from jackfield.bench.report import RequestResult, summarize

    r = RequestResult(success=True, ttft=0.1, itl=[0.4, 0.4], latency=0.9, output_len=9)
    s = summarize([r, RequestResult(error="boom")], duration=1.0)
    assert s["mean_tpot_ms"] == pytest.approx(100.0)
    assert s["mean_itl_ms"] == pytest.approx(400.0)
    assert s["completed"] == 1 and s["failed"] == 1
