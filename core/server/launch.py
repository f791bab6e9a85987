"""`launch_server(settings) -> int`: start the engine subprocesses, then serve HTTP until told to stop.

Exit codes: 0 after Ctrl-C / SIGTERM (every child is stopped first), 1 when the engine cannot
start (the reason is printed) or a subprocess dies while serving (the server turns unhealthy,
fails the requests in flight and shuts down instead of hanging).
"""
from __future__ import annotations

import asyncio
import errno
import functools
import logging
import signal
import socket
import sys
import threading

import uvicorn

from jackfield.config import Settings
from jackfield.plugins import load_plugins
from jackfield.server.app import ServerState, build_app
from jackfield.server.generation import probe_group
from jackfield.server.ipc import PortArgs
from jackfield.server.messages import ReadyInfo
from jackfield.server.metrics import ServerMetrics
from jackfield.server.processes import EngineProcesses, StartupFailed
from jackfield.server.tokenizer_manager import TokenizerManager

log = logging.getLogger(__name__)
WATCHDOG_S = 0.5
GRACEFUL_SHUTDOWN_S = 5
WARMUP_TEXT = "The capital of France is"


class SignalGuard:
    """SIGINT/SIGTERM: a KeyboardInterrupt while starting; while serving uvicorn handles them and
    re-raises them once it has shut down, and then they are only noted."""

    def __init__(self):
        self.received: list[int] = []
        self.raise_interrupt = True
        self._old: dict = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.received.append(signum)
        if self.raise_interrupt:
            self.raise_interrupt = False
            raise KeyboardInterrupt


def launch_server(settings: Settings) -> int:
    logging.getLogger("jackfield").setLevel(settings.log_level.upper())
    signals = SignalGuard()
    signals.install()
    busy = port_in_use(settings.host, settings.port)
    if busy:
        print(f"jackfield: error: cannot serve on {settings.host}:{settings.port}: {busy}; pass another port, "
              f"e.g. --port {settings.port + 1}", file=sys.stderr, flush=True)
        return 1
    ports = PortArgs.create()
    procs = EngineProcesses(settings, ports)
    try:
        pm, records = load_plugins()
        procs.start()
        print("jackfield: loading the model...", flush=True)
        ready = procs.wait_ready()
        print_ready(ready)
        tokenizer = _load_tokenizer(ready.tokenizer_path)
        signals.raise_interrupt = False
        return asyncio.run(_serve(settings, ready, tokenizer, ports, procs, pm, records, signals))
    except StartupFailed as exc:
        print(f"jackfield: error: the engine failed to start: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("jackfield: interrupted while starting; stopping", file=sys.stderr, flush=True)
        return 0
    except SystemExit:  # uvicorn exits this way when it cannot bind the port (logged above)
        print(f"jackfield: error: cannot serve on {settings.host}:{settings.port}", file=sys.stderr, flush=True)
        return 1
    finally:
        signals.raise_interrupt = False
        procs.stop()
        ports.cleanup()
        signals.restore()


def port_in_use(host: str, port: int) -> str | None:
    """Why uvicorn could not bind host:port, checked before the model loads; None when it can."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot resolve the host ({exc})"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(address)
        except OSError as exc:
            return "the port is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
    return None


def _load_tokenizer(path: str | None):
    if path is None:
        return None
    from jackfield.tokenizer.tokenizer import Tokenizer

    return Tokenizer.load(path)


def print_ready(ready: ReadyInfo) -> None:
    info = ready.info
    print(f"jackfield: model {info.model_path} ({', '.join(info.model_config.architectures)}) on "
          f"{info.device}/{info.dtype}, loaded in {ready.load_seconds:.1f} s", flush=True)
    print("jackfield: components in use:", flush=True)
    for kind, choice in info.components.items():
        print(f"  {kind:<13} {choice.get('name') or '-':<16} {choice.get('reason', '')}", flush=True)
    print(f"jackfield: KV cache {info.max_total_tokens} tokens, up to {info.max_running_requests} running "
          f"requests, context length {info.context_len}", flush=True)


async def _serve(settings: Settings, ready: ReadyInfo, tokenizer, ports: PortArgs, procs: EngineProcesses, pm,
                 records, signals: SignalGuard) -> int:
    metrics = ServerMetrics()
    tm = TokenizerManager(ports, tokenizer, ready.info, metrics)
    tm.start()
    state = ServerState(settings, ready.info, tm, metrics, pm, records, ready.tokenizer_path,
                        {"scheduler": procs.scheduler.pid, "detokenizer": procs.detokenizer.pid})
    config = uvicorn.Config(build_app(state), host=settings.host, port=settings.port, log_level=settings.log_level,
                            access_log=settings.log_level == "debug", lifespan="off",
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    server = DrainingServer(config, functools.partial(_end_requests, state))
    tasks = [asyncio.create_task(_watchdog(procs, state, server)), asyncio.create_task(_warm_up(state, server))]
    if signals.received:
        server.should_exit = True
    try:
        await server.serve()
    finally:
        for task in tasks:
            task.cancel()
        await _end_requests(state)
        _call_hook(pm, "jackfield_engine_stopping", ready.info)
        tm.close()
    return 1 if state.failure else 0


class DrainingServer(uvicorn.Server):
    """uvicorn's Server that ends every request in flight as soon as shutdown begins: streams finish
    with an error event ("the server is shutting down") and `data: [DONE]` and their connections
    close, instead of being cancelled when the graceful period runs out (which logs a traceback)."""

    def __init__(self, config: uvicorn.Config, before_shutdown):
        super().__init__(config)
        self.before_shutdown = before_shutdown

    async def shutdown(self, sockets=None) -> None:
        await self.before_shutdown()
        await super().shutdown(sockets)


async def _end_requests(state: ServerState) -> None:
    """Cancel the running batches, then fail every request in flight (idempotent)."""
    await state.batches.close()
    state.tokenizer_manager.fail_all(state.failure or "the server is shutting down")


async def _watchdog(procs: EngineProcesses, state: ServerState, server: uvicorn.Server) -> None:
    """Notice a dead subprocess: log why, turn unhealthy, fail pending requests, stop uvicorn."""
    while True:
        await asyncio.sleep(WATCHDOG_S)
        why = procs.dead()
        if why is not None:
            log.error("%s; shutting the server down", why)
            state.failure = why
            state.tokenizer_manager.fail_all(why)
            server.should_exit = True
            return


async def _warm_up(state: ServerState, server: uvicorn.Server) -> None:
    """Run one short generation (an embedding for an embedding model) through the normal path, then
    report ready (GET /health -> 200)."""
    tm = state.tokenizer_manager
    if state.settings.warmup:
        ids = tm.encode(WARMUP_TEXT) if tm.tokenizer is not None else [0]
        try:
            with probe_group(state, ids, 4) as group:
                await group.collect()
        except Exception as exc:
            state.failure = f"the warm-up generation failed: {getattr(exc, 'message', exc)}"
            log.error("%s", state.failure)
            server.should_exit = True
            return
    while not server.started and not server.should_exit:
        await asyncio.sleep(0.05)
    state.ready = True
    _call_hook(state.pm, "jackfield_engine_started", state.info)
    s = state.settings
    print(f"jackfield: ready; serving '{state.model_name}' on http://{s.host}:{s.port}", flush=True)


def _call_hook(pm, name: str, info) -> None:
    try:
        getattr(pm.hook, name)(engine=info)
    except Exception:
        log.exception("plugin hook %s failed", name)
