"""Reliability figures of `jackfield serve`, measured end to end from the outside.

    python benchmarks/reliability_probe.py [--trials 3] [--output results/reliability_probe.json] [-- serve flags]

* child death: a stream is running; `kill -9` of the scheduler (or the detokenizer); the time until
  the client holds the stream's 503 error event, until the server process has exited (code 1), and
  whether any child outlived it;
* stuck scheduler: the same with SIGSTOP of the scheduler under `--watchdog-timeout 3`: the time until
  the error event (the timeout plus the stack dump's wait);
* drain: `--drain-streams` streams in flight (`--drain-tokens` each) and one 4000-token stream;
  SIGTERM with `--shutdown-timeout`; how many completed, how many were aborted, what a new request
  got, the exit code and the time to exit.

Each trial starts a fresh server on the embedded model (extra `serve` flags after `--`).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx

from jackfield.bench.common import write_report

LONG = {"text": "Count forever:", "stream": True, "sampling_params": {"max_new_tokens": 4000, "ignore_eos": True}}


class Served:
    def __init__(self, extra: list[str]):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "jackfield.cli", "serve", "--port", str(self.port),
                                      "--no-warmup", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        self.pids = httpx.get(self.url + "/get_server_info").json()["process_ids"]

    def children_left(self) -> list[int]:
        return [pid for name, pid in self.pids.items() if name != "server" and os.path.exists(f"/proc/{pid}")
                and open(f"/proc/{pid}/stat").read().split(")")[1].split()[0] != "Z"]

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _until_error(url: str, act) -> tuple[float, dict]:
    """Start a long stream, call `act()` after its first event; seconds until its error event."""
    with httpx.stream("POST", url + "/generate", json=LONG, timeout=120) as resp:
        lines = resp.iter_lines()
        next(line for line in lines if line.startswith("data: {"))
        act()
        start = time.monotonic()
        for line in lines:
            if line.startswith("data: {") and '"error"' in line:
                return time.monotonic() - start, json.loads(line[6:])["error"]
    return float("nan"), {}


def child_death(extra: list[str], child: str) -> dict:
    srv = Served(extra)
    try:
        killed = {}
        noticed, err = _until_error(srv.url, lambda: (os.kill(srv.pids[child], signal.SIGKILL),
                                                      killed.setdefault("t", time.monotonic())))
        code = srv.proc.wait(60)
        return {"child": child, "error_event_s": round(noticed, 3), "error_type": err.get("type"),
                "exit_code": code, "exit_s": round(time.monotonic() - killed["t"], 3),
                "children_left": srv.children_left()}
    finally:
        srv.close()


def stuck_scheduler(extra: list[str], timeout: float) -> dict:
    srv = Served([*extra, "--watchdog-timeout", str(timeout)])
    try:
        noticed, err = _until_error(srv.url, lambda: os.kill(srv.pids["scheduler"], signal.SIGSTOP))
        return {"watchdog_timeout_s": timeout, "error_event_s": round(noticed, 3), "error_type": err.get("type"),
                "exit_code": srv.proc.wait(60), "children_left": srv.children_left()}
    finally:
        srv.close()


def drain(extra: list[str], streams: int, tokens: int, shutdown_timeout: float) -> dict:
    srv = Served([*extra, "--shutdown-timeout", str(shutdown_timeout)])
    try:
        ends: list[str] = []
        started = [threading.Event() for _ in range(streams + 1)]

        def one(i: int, max_new: int) -> None:
            body = {**LONG, "sampling_params": {"max_new_tokens": max_new, "ignore_eos": True}}
            last = "no event"
            with httpx.stream("POST", srv.url + "/generate", json=body, timeout=120) as resp:
                for line in resp.iter_lines():
                    if line.startswith("data: {"):
                        started[i].set()
                        event = json.loads(line[6:])
                        last = "error" if "error" in event else (event["meta_info"]["finish_reason"] or {}).get("type")
            ends.append(last)

        threads = [threading.Thread(target=one, args=(i, tokens if i < streams else 4000)) for i in range(streams + 1)]
        for t in threads:
            t.start()
        for ev in started:
            ev.wait(120)
        sent = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        refused = httpx.get(srv.url + "/v1/models", timeout=10)
        for t in threads:
            t.join(shutdown_timeout + 60)
        code = srv.proc.wait(shutdown_timeout + 60)
        return {"in_flight": streams + 1, "completed": ends.count("length"), "aborted_with_error": ends.count("error"),
                "new_request_status": refused.status_code, "retry_after": refused.headers.get("retry-after"),
                "exit_code": code, "exit_s": round(time.monotonic() - sent, 3), "children_left": srv.children_left()}
    finally:
        srv.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--parts", default="death,stuck,drain", help="which measurements, comma-separated")
    p.add_argument("--drain-streams", type=int, default=8)
    p.add_argument("--drain-tokens", type=int, default=16)
    p.add_argument("--shutdown-timeout", type=float, default=20.0)
    p.add_argument("--output", default=None)
    p.add_argument("serve_flags", nargs="*", help="extra `jackfield serve` flags (after --)")
    args = p.parse_args()
    extra, parts = args.serve_flags, args.parts.split(",")
    metrics: dict = {}
    if "death" in parts:
        deaths = [child_death(extra, child) for child in ("scheduler", "detokenizer") for _ in range(args.trials)]
        metrics["child_death"] = deaths
        metrics["child_death_max_error_event_s"] = max(d["error_event_s"] for d in deaths)
    if "stuck" in parts:
        metrics["stuck_scheduler"] = [stuck_scheduler(extra, 3.0) for _ in range(args.trials)]
    if "drain" in parts:
        metrics["drain"] = drain(extra, args.drain_streams, args.drain_tokens, args.shutdown_timeout)
    write_report(args.output, "python benchmarks/reliability_probe.py " + " ".join(sys.argv[1:]), metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
