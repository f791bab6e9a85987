"""Test harness: start a real `jackfield serve` subprocess, wait for health, stop it, find its
children; and check the error shape of a response."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

SERVE = [sys.executable, "-c", "import sys; from jackfield.cli import main; sys.exit(main())", "serve"]
SMALL = ["--kv-cache-bytes", "268435456", "--max-running-requests", "48"]
HEALTH_TIMEOUT_S = 120
UPLOAD_LIMIT = 64 << 10  # the shared server's /v1/files limit: small, so a 413 costs nothing to provoke


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat(pid: int) -> tuple[int, str, str] | None:
    """(ppid, state, start time) of a live process, from /proc/<pid>/stat; None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), fields[0], fields[19]


def descendants(pid: int) -> dict[int, str]:
    """Every live descendant of `pid`: pid -> start time (to tell a reused pid apart)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None and st[1] != "Z":
            parents.setdefault(st[0], []).append(int(entry.name))
    found, todo = {}, [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            st = _stat(child)
            if st is not None:
                found[child] = st[2]
                todo.append(child)
    return found


def survivors(procs: dict[int, str]) -> list[int]:
    """Those of `procs` still running (zombies and reused pids do not count)."""
    return [pid for pid, start in procs.items() if (st := _stat(pid)) is not None and st[1] != "Z" and st[2] == start]


def wait_gone(procs: dict[int, str], timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := survivors(procs)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()[-4000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.kill()
        raise RuntimeError(f"server not healthy after {timeout} s:\n{self.output()[-4000:]}")

    def wait_exit(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait_exit(timeout)

    def kill(self) -> None:
        """Last-resort cleanup: kill the server's whole process group."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def start_server(log_dir: Path, *args: str, wait: bool = True, env: dict[str, str] | None = None) -> Server:
    """`jackfield serve --port <free> ARGS` in its own session; `env` adds environment variables."""
    port = free_port()
    log = log_dir / f"server-{port}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log, "wb") as out:
        proc = subprocess.Popen([*SERVE, "--port", str(port), *args], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    server = Server(proc, port, log)
    if wait:
        server.wait_healthy()
    return server


def assert_error(resp: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> dict:
    """The response is `status` with the OpenAI error shape (Anthropic's below /v1/messages, where
    `param` must be named in the message and `code` is not part of the shape); returns the error object."""
    assert resp.status_code == status, resp.text
    if resp.request.url.path.startswith("/v1/messages"):
        body = resp.json()
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
        assert body["error"]["message"] and "Traceback" not in body["error"]["message"]
        assert param is None or param in body["error"]["message"], body
        return body["error"]
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    assert "Traceback" not in err["message"]
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err
