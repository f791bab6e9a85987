"""The server's time-to-first-token stages over one benchmark run, read from its /metrics.

A jackfield server exports `jackfield_first_token_stage_seconds{stage}` (jackfield/server/first_token.py);
`bench serving` reads /metrics before and after the run, and the difference of each stage's sum and
count is the run's mean per stage. Other servers have no such metric: the report then has none.
"""
from __future__ import annotations

import re

import httpx

from jackfield.server.first_token import STAGES

METRIC = "jackfield_first_token_stage_seconds"
LINE = re.compile(METRIC + r'_(sum|count)\{stage="([a-z_]+)"\} ([0-9.eE+-]+)')


def parse(text: str) -> dict[str, tuple[float, float]]:
    """stage -> (sum of seconds, count) from a Prometheus text exposition."""
    found: dict[str, dict[str, float]] = {}
    for kind, stage, value in LINE.findall(text):
        found.setdefault(stage, {})[kind] = float(value)
    return {stage: (v.get("sum", 0.0), v.get("count", 0.0)) for stage, v in found.items()}


async def scrape(client: httpx.AsyncClient, base_url: str) -> dict[str, tuple[float, float]] | None:
    """The stage sums and counts the server reports now; None when it reports none."""
    try:
        resp = await client.get(base_url + "/metrics", timeout=10.0)
    except httpx.HTTPError:
        return None
    stages = parse(resp.text) if resp.status_code == 200 else {}
    return stages or None


def stage_means_ms(before: dict | None, after: dict | None) -> dict[str, float]:
    """Mean milliseconds per stage over the requests between the two scrapes."""
    if not after:
        return {}
    before = before or {}
    means = {}
    for stage in sorted(after, key=lambda name: STAGES.index(name) if name in STAGES else len(STAGES)):
        (total, count), (total0, count0) = after[stage], before.get(stage, (0.0, 0.0))
        if count > count0:
            means[stage] = (total - total0) / (count - count0) * 1000.0
    return means
