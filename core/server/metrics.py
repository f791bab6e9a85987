"""Prometheus metrics of the server, kept in a private CollectorRegistry and served at GET /metrics.

Request counts come from the HTTP middleware; latencies and token counts from the tokenizer
manager as outputs arrive; scheduler gauges (running, queued, KV usage, cache hit rate) are fetched
with a GetStatsReq at scrape time, and so is the resident memory of every server process (Linux).
"""
from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from jackfield.io_struct import StatsOut

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
STAGE_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 10.0)
TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServerMetrics:
    """Every metric the server exports; `render()` is the /metrics body."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("jackfield_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.time_to_first_token = Histogram("jackfield_time_to_first_token_seconds",
                                             "Time from request arrival to its first token", buckets=LATENCY_BUCKETS,
                                             registry=r)
        self.inter_token_latency = Histogram("jackfield_inter_token_latency_seconds",
                                             "Time between consecutive output tokens", buckets=TOKEN_LATENCY_BUCKETS,
                                             registry=r)
        self.first_token_stage = Histogram("jackfield_first_token_stage_seconds",
                                           "Time to first token by stage of the request's path (first_token.py)",
                                           ["stage"], buckets=STAGE_BUCKETS, registry=r)
        self.e2e_latency = Histogram("jackfield_e2e_request_latency_seconds",
                                     "Time from request arrival to its last token", buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("jackfield_prompt_tokens", "Prompt tokens of finished requests", registry=r)
        self.generation_tokens = Counter("jackfield_generation_tokens", "Generated tokens", registry=r)
        self.cached_tokens = Counter("jackfield_cached_tokens", "Prompt tokens served from the prefix cache",
                                     registry=r)
        self.num_running = Gauge("jackfield_num_running_reqs", "Requests in the running batch", registry=r)
        self.num_queued = Gauge("jackfield_num_queued_reqs", "Requests waiting to be scheduled", registry=r)
        self.kv_used_tokens = Gauge("jackfield_kv_used_tokens", "KV slots held by requests", registry=r)
        self.kv_cached_tokens = Gauge("jackfield_kv_cached_tokens", "KV slots held only by the prefix cache (evictable)",
                                      registry=r)
        self.kv_total_tokens = Gauge("jackfield_kv_total_tokens", "KV slots in the pool", registry=r)
        self.kv_usage = Gauge("jackfield_kv_usage", "Fraction of the KV pool held by requests", registry=r)
        self.resident_memory = Gauge("jackfield_process_resident_memory_bytes", "Resident memory of each server "
                                     "process", ["process"], registry=r)
        self.cache_hit_rate = Gauge("jackfield_cache_hit_rate", "Prompt tokens served from the cache / all",
                                    registry=r)
        self.spec_accept_length = Gauge("jackfield_spec_accept_length",
                                        "Speculative decoding: mean tokens a request gains per verify forward",
                                        registry=r)
        self.spec_accept_rate = Gauge("jackfield_spec_accept_rate",
                                      "Speculative decoding: accepted draft tokens / proposed draft tokens", registry=r)
        self.spec_verify_steps = Gauge("jackfield_spec_verify_steps",
                                       "Speculative decoding: request-steps verified so far", registry=r)

    def observe_tokens(self, now: float, created: float, first: float | None, last: float | None, count: int) -> None:
        """Record `count` new tokens of one request that arrived at `now`."""
        if count <= 0:
            return
        self.generation_tokens.inc(count)
        if first is None:
            self.time_to_first_token.observe(now - created)
        elif last is not None:
            per_token = (now - last) / count
            for _ in range(count):
                self.inter_token_latency.observe(per_token)

    def observe_first_token_stages(self, stages: dict[str, float]) -> None:
        for name, seconds in stages.items():
            self.first_token_stage.labels(stage=name).observe(seconds)

    def observe_finished(self, now: float, created: float, prompt_tokens: int, cached_tokens: int) -> None:
        self.e2e_latency.observe(now - created)
        self.prompt_tokens.inc(prompt_tokens)
        self.cached_tokens.inc(cached_tokens)

    def update_scheduler(self, stats: StatsOut) -> None:
        self.num_running.set(stats.num_running)
        self.num_queued.set(stats.num_waiting)
        self.kv_used_tokens.set(stats.kv_used_tokens)
        self.kv_cached_tokens.set(stats.kv_cached_tokens)
        self.kv_total_tokens.set(stats.kv_total_tokens)
        self.kv_usage.set(stats.kv_used_tokens / stats.kv_total_tokens if stats.kv_total_tokens else 0.0)
        self.cache_hit_rate.set(stats.cache_hit_rate)
        steps = stats.spec_verify_steps
        self.spec_verify_steps.set(steps)
        self.spec_accept_length.set(stats.spec_emitted / steps if steps else 0.0)
        self.spec_accept_rate.set(stats.spec_accepted / stats.spec_proposed if stats.spec_proposed else 0.0)

    def update_processes(self, pids: dict[str, int]) -> None:
        """Resident memory of each named process, from /proc (skipped where there is none)."""
        page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        for name, pid in pids.items():
            try:
                with open(f"/proc/{pid}/statm") as f:
                    self.resident_memory.labels(process=name).set(int(f.read().split()[1]) * page)
            except (OSError, ValueError, IndexError):
                continue

    def render(self) -> bytes:
        return generate_latest(self.registry)
