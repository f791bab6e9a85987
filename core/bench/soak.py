"""`jackfield bench soak`: hours of mixed traffic with faults, and the checks that nothing leaked.

`--concurrency` clients send a seeded mix (soak_requests.py: chat, completions and native; streamed
or not; n up to 3; stop strings; JSON output where a grammar backend runs; short and long prompts)
for `--minutes`, disconnecting from some streams mid-way and abandoning some plain requests. Then:

* every request completed or errored with a notice: none lost, none duplicated;
* once idle, the KV pool holds only prefix-cache tokens (`jackfield_kv_used_tokens` 0), and after
  POST /flush_cache none at all (`kv_used_tokens + kv_cached_tokens` 0: no leaked slot);
* the resident memory of every server process, at the end of the warm-up window and at the end;
* p50/p99 latency of completed requests per window (`--window-seconds`, 60 by default), and the
  p99 drift between the first and the last full window.

Prints a summary and the JSON report (`--output-file` keeps it); exits 1 if a request was lost or
duplicated or KV leaked. It measures a server someone else started (`jackfield serve`).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter

import httpx
import numpy as np

from jackfield.bench.soak_requests import MixOptions, Outcome, make_request, run_request

SAMPLE_EVERY_S = 10.0
IDLE_TIMEOUT_S = 120.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("--base-url", default="http://127.0.0.1:30000", help="the server root")
    a("--minutes", type=float, default=30.0, help="how long to send traffic")
    a("--concurrency", type=int, default=16, help="clients sending at once")
    a("--seed", type=int, default=0)
    a("--max-tokens", type=int, default=64, help="largest max_tokens of a request (each draws 1..this)")
    a("--long-prompt-words", type=int, default=1200, help="length of the long prompts (15%% of requests)")
    a("--disconnect-rate", type=float, default=0.1, help="fraction of streams the client leaves mid-way")
    a("--abort-rate", type=float, default=0.05, help="fraction of plain requests the client abandons")
    a("--window-seconds", type=float, default=60.0, help="latency percentile window (and RSS warm-up)")
    a("--request-timeout", type=float, default=600.0, help="seconds after which an unanswered request is lost")
    a("--api-key", default=None, help="sent as a bearer token")
    a("--output-file", default=None, help="write the JSON report here")


def run(args: argparse.Namespace) -> int:
    from jackfield.bench.common import write_report

    try:
        metrics = asyncio.run(soak(args))
    except (httpx.HTTPError, OSError, RuntimeError) as exc:
        print(f"jackfield bench soak: error: {exc}", file=sys.stderr)
        return 1
    print_summary(metrics)
    write_report(args.output_file, "jackfield bench soak " + " ".join(sys.argv[3:]), metrics)
    return 0 if all(c["ok"] for c in metrics["checks"].values() if c["required"]) else 1


async def soak(args: argparse.Namespace) -> dict:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.concurrency + 4, max_keepalive_connections=args.concurrency + 4)
    async with httpx.AsyncClient(base_url=args.base_url, headers=headers, limits=limits, trust_env=False,
                                 timeout=30) as client:
        plugins = (await client.get("/v1/plugins")).json()
        grammar = bool((plugins.get("in_use", {}).get("grammar") or {}).get("name"))
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        opt = MixOptions(args.max_tokens, args.long_prompt_words, args.disconnect_rate, args.abort_rate, grammar, model)
        start = time.monotonic()
        end = start + args.minutes * 60
        rss = {"start": await process_rss(client)}
        outcomes: list[Outcome] = []
        sampler = asyncio.create_task(_sample_rss(client, start + args.window_seconds, rss))
        await asyncio.gather(*(_client(client, random.Random(args.seed * 1000 + i), opt, end, args.request_timeout,
                                       outcomes) for i in range(args.concurrency)))
        sampler.cancel()
        rss["end"] = await process_rss(client)
        kv = await kv_after_load(client)
    return report(args, outcomes, start, rss, kv, grammar)


async def _client(client, rng: random.Random, opt: MixOptions, end: float, timeout: float, out: list) -> None:
    while time.monotonic() < end:
        out.append(await run_request(client, make_request(rng, opt), timeout))


async def _sample_rss(client, warm_at: float, rss: dict) -> None:
    """Resident memory at the end of the warm-up window, and the peak seen every SAMPLE_EVERY_S."""
    await asyncio.sleep(max(warm_at - time.monotonic(), 0))
    rss["warm"] = await process_rss(client)
    while True:
        now = await process_rss(client)
        rss["peak"] = {k: max(v, rss.get("peak", {}).get(k, 0)) for k, v in now.items()}
        await asyncio.sleep(SAMPLE_EVERY_S)


def metric_values(text: str, name: str) -> dict[str, float]:
    """Prometheus text: `{label value or "": value}` of every sample of metric `name`."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, value = line.rsplit(" ", 1)
            label = key[len(name):].strip("{}")
            out[label.split('"')[1] if '"' in label else ""] = float(value)
    return out


async def process_rss(client) -> dict[str, float]:
    text = (await client.get("/metrics")).text
    return metric_values(text, "jackfield_process_resident_memory_bytes")


async def kv_after_load(client) -> dict:
    """Wait for the server to go idle; KV held by requests and by the cache, then again after a flush."""
    deadline = time.monotonic() + IDLE_TIMEOUT_S
    while True:
        info = (await client.get("/get_server_info")).json()
        if not (info["requests_in_flight"] or info["num_running"] or info["num_waiting"]):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server is still busy {IDLE_TIMEOUT_S:g} s after the load: {info}")
        await asyncio.sleep(0.5)

    async def kv() -> dict:
        text = (await client.get("/metrics")).text
        return {name: metric_values(text, f"jackfield_kv_{name}_tokens").get("", 0.0) for name in ("used", "cached", "total")}

    idle = await kv()
    flushed = (await client.post("/flush_cache")).json()
    return {"idle": idle, "flush_ok": bool(flushed.get("ok")), "after_flush": await kv()}


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    return {"count": len(values), "p50_s": float(np.percentile(values, 50)), "p99_s": float(np.percentile(values, 99))}


def report(args, outcomes: list[Outcome], start: float, rss: dict, kv: dict, grammar: bool) -> dict:
    kinds = Counter(o.kind for o in outcomes)
    windows: dict[int, list[float]] = {}
    for o in outcomes:
        if o.kind == "completed":
            windows.setdefault(int((o.finished_at - start) // args.window_seconds), []).append(o.latency_s)
    full = max(int(args.minutes * 60 // args.window_seconds), 1)  # windows wholly inside the load
    per_window = [{"window": w, "full": w < full, **_percentiles(windows.get(w, []))}
                  for w in range(max([full, *(k + 1 for k in windows)]))]
    first, last = per_window[0].get("p99_s"), per_window[full - 1].get("p99_s")
    drift = (last / first - 1) if first and last and full > 1 else None
    warm = rss.get("warm") or rss["start"]
    growth = {p: (rss["end"].get(p, 0) / v - 1) if v else None for p, v in warm.items()}
    leaked = kv["after_flush"]["used"] + kv["after_flush"]["cached"]
    checks = {
        "none_lost": {"ok": kinds["lost"] == 0, "required": True, "value": kinds["lost"]},
        "none_duplicated": {"ok": kinds["duplicated"] == 0, "required": True, "value": kinds["duplicated"]},
        "idle_kv_only_cached": {"ok": kv["idle"]["used"] == 0, "required": True, "value": kv["idle"]["used"]},
        "no_kv_leak_after_flush": {"ok": kv["flush_ok"] and leaked == 0, "required": True, "value": leaked},
        "rss_growth_below_5pct": {"ok": all(g is not None and g < 0.05 for g in growth.values()), "required": False,
                                  "value": growth},
        "p99_drift_below_10pct": {"ok": drift is not None and abs(drift) < 0.10, "required": False, "value": drift},
    }
    errors = Counter(o.detail.split(":")[0] for o in outcomes if o.kind == "errored")
    problems = [f"{o.kind}: {o.api} stream={o.stream}: {o.detail}" for o in outcomes if o.kind in ("lost", "duplicated")]
    return {"minutes": args.minutes, "concurrency": args.concurrency, "seed": args.seed, "grammar_requests": grammar,
            "requests": len(outcomes), "outcomes": dict(kinds), "errors_by_status": dict(errors),
            "by_api": dict(Counter(f"{o.api}/{'stream' if o.stream else 'plain'}" for o in outcomes)),
            "latency_per_window": per_window, "p99_drift": drift, "kv": kv, "rss_bytes": rss, "rss_growth": growth,
            "checks": checks, "problems": problems[:20]}


def print_summary(m: dict) -> None:
    o = m["outcomes"]
    print(f"soak: {m['requests']} requests in {m['minutes']:g} min at concurrency {m['concurrency']}: "
          f"{o.get('completed', 0)} completed, {o.get('errored', 0)} errored with notice, {o.get('dropped', 0)} "
          f"dropped by the client, {o.get('lost', 0)} lost, {o.get('duplicated', 0)} duplicated")
    for w in m["latency_per_window"]:
        if w["count"]:
            print(f"  window {w['window']}: {w['count']} completed, p50 {w['p50_s']:.2f} s, p99 {w['p99_s']:.2f} s")
    print(f"  KV after the load: {m['kv']['idle']}; after flush: {m['kv']['after_flush']}")
    print(f"  RSS growth after warm-up: {json.dumps({k: round(v, 4) if v is not None else None for k, v in m['rss_growth'].items()})}")
    for name, c in m["checks"].items():
        print(f"  {'ok  ' if c['ok'] else 'FAIL'} {name}{'' if c['required'] else ' (goal)'}: {c['value']}")
    for p in m["problems"]:
        print(f"  {p}")
