"""`jackfield bench soak` (benchmarks/soak.sh): a few seconds of its mixed traffic with client
disconnects and aborts against the shared server finds nothing lost, duplicated or leaked; and its
verdicts do flag a lost request, a duplicated choice and leaked KV."""
from __future__ import annotations

import argparse
import asyncio

from jackfield.bench.soak import add_arguments, report, soak
from jackfield.bench.soak_requests import Outcome, SoakRequest, _judge, _stream_verdict


def soak_args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


def test_a_short_soak_loses_nothing(server):
    args = soak_args("--base-url", server.url, "--minutes", "0.2", "--concurrency", "3", "--window-seconds", "4",
                     "--max-tokens", "6", "--long-prompt-words", "60", "--disconnect-rate", "0.3",
                     "--abort-rate", "0.3", "--seed", "1")
    m = asyncio.run(soak(args))
    assert m["requests"] >= 3 and m["outcomes"].get("completed", 0) >= 1, m["outcomes"]
    assert set(m["outcomes"]) <= {"completed", "errored", "dropped"}, m["problems"]
    assert all(c["ok"] for c in m["checks"].values() if c["required"]), m["checks"]
    assert m["kv"]["flush_ok"] and m["kv"]["after_flush"]["used"] == m["kv"]["after_flush"]["cached"] == 0
    assert m["kv"]["idle"]["total"] > 0 and set(m["rss_bytes"]["end"]) == {"server", "scheduler", "detokenizer"}


def test_the_verdicts_catch_loss_duplication_and_leaks():
    req = SoakRequest("chat", True, 2, {}, None, None)
    assert _stream_verdict(req, {0: ["stop"], 1: ["stop"]}, {})[0] == "completed"
    assert _stream_verdict(req, {0: ["stop"]}, {})[0] == "lost"
    assert _stream_verdict(req, {0: ["stop", "stop"], 1: ["length"]}, {})[0] == "duplicated"
    assert _judge(req, 3, ["stop"] * 3, [""] * 3)[0] == "duplicated"
    outcomes = [Outcome("completed", "chat", False, 0.1, 1.0), Outcome("lost", "native", True, 5.0, 2.0)]
    kv = {"idle": {"used": 0.0, "cached": 9.0, "total": 99.0}, "flush_ok": True,
          "after_flush": {"used": 0.0, "cached": 3.0, "total": 99.0}}
    rss = {"start": {"scheduler": 1e9}, "end": {"scheduler": 1e9}}
    checks = report(soak_args("--minutes", "1"), outcomes, 0.0, rss, kv, False)["checks"]
    assert not checks["none_lost"]["ok"] and checks["none_duplicated"]["ok"]
    assert not checks["no_kv_leak_after_flush"]["ok"] and checks["idle_kv_only_cached"]["ok"]
