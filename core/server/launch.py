"""`launch_server(settings) -> int`: start the engine subprocesses, then serve HTTP until told to stop.

Exit codes: 0 after Ctrl-C / SIGTERM (in-flight requests are drained first, drain.py, and every
child is stopped), 1 when the engine cannot start (the reason is printed) or a subprocess dies or
the scheduler gets stuck while serving (watchdog.py: the server turns unhealthy, fails the
requests in flight with 503 and shuts down instead of hanging).
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
import sys
import threading
from contextlib import nullcontext

import uvicorn

from jackfield.config import Settings
from jackfield.distributed.report import describe_ranks
from jackfield.plugins import load_plugins
from jackfield.registry import build_registry
from jackfield.selection import SelectionError
from jackfield.server.app import ServerState, build_app
from jackfield.server.dp_replicas import EngineReplicas
from jackfield.server.dp_tokenizer_manager import DPTokenizerManager
from jackfield.server.drain import Drain, DrainingServer
from jackfield.server.gc_freeze import freeze_startup_objects
from jackfield.server.generation import probe_group
from jackfield.server.messages import ReadyInfo
from jackfield.server.parsers import ChatParsers, select_parsers
from jackfield.server.metrics import ServerMetrics
from jackfield.server.processes import StartupFailed

log = logging.getLogger(__name__)
GRACEFUL_SHUTDOWN_S = 5  # uvicorn's wait for open connections once the drain (or a failure) is over
WARMUP_TEXT = "The capital of France is"


class SignalGuard:
    """SIGINT/SIGTERM: a KeyboardInterrupt while starting; while serving they start a drain
    (drain.py); one that arrives between the two is noted and starts the drain at once."""

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
    if settings.node_rank > 0:  # a node other than 0 runs tensor-parallel ranks only, no HTTP server
        from jackfield.distributed.ranks import run_node

        return run_node(settings)
    signals = SignalGuard()
    signals.install()
    busy = port_in_use(settings.host, settings.port)
    if busy:
        print(f"jackfield: error: cannot serve on {settings.host}:{settings.port}: {busy}; pass another port, "
              f"e.g. --port {settings.port + 1}", file=sys.stderr, flush=True)
        return 1
    engine = EngineReplicas(settings)
    try:
        pm, records = load_plugins()
        engine.start()
        print("jackfield: loading the model...", flush=True)
        ready = engine.wait_ready()
        print_ready(ready)
        if engine.data_parallel:
            print(f"jackfield: data parallel, {settings.dp_size} replicas behind the cache-aware router:", flush=True)
            for line in engine.describe():
                print(f"  {line}", flush=True)
        tokenizer = _load_tokenizer(ready.tokenizer_path)
        parsers = select_parsers(build_registry(pm, records), settings, tokenizer.chat_template if tokenizer else None)
        for kind, entry in parsers.as_dict().items():
            print(f"  {kind:<13} {entry['name'] or '-':<16} {entry['reason']}", flush=True)
        signals.raise_interrupt = False
        return asyncio.run(_serve(settings, ready, tokenizer, parsers, engine, pm, records, signals))
    except StartupFailed as exc:
        print(f"jackfield: error: the engine failed to start: {exc}", file=sys.stderr, flush=True)
        return 1
    except SelectionError as exc:
        print(f"jackfield: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("jackfield: interrupted while starting; stopping", file=sys.stderr, flush=True)
        return 0
    except SystemExit:  # uvicorn exits this way when it cannot bind the port (logged above)
        print(f"jackfield: error: cannot serve on {settings.host}:{settings.port}", file=sys.stderr, flush=True)
        return 1
    finally:
        signals.raise_interrupt = False
        engine.stop()
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
    for line in describe_ranks(info.ranks):
        print(f"  {line}", flush=True)


async def _serve(settings: Settings, ready: ReadyInfo, tokenizer, parsers: ChatParsers, engine: EngineReplicas,
                 pm, records, signals: SignalGuard) -> int:
    metrics = ServerMetrics()
    tm = engine.tokenizer_manager(tokenizer, metrics)
    tm.start()
    state = ServerState(settings, ready.info, tm, metrics, pm, records, ready.tokenizer_path,
                        {"server": os.getpid(), **engine.process_ids()}, parsers=parsers)
    _warn_if_exposed(settings)
    config = uvicorn.Config(build_app(state), host=settings.host, port=settings.port, log_level=settings.log_level,
                            access_log=settings.log_level == "debug", lifespan="off",
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    server = DrainingServer(config)
    drain = Drain(state, settings.shutdown_timeout)
    server.on_signal = drain.request

    def fail(why: str) -> None:
        if state.failure is not None:  # another replica's watchdog came first
            return
        log.error("%s; shutting the server down", why)
        state.failure = why
        tm.fail_all(why)
        server.should_exit = True

    watchdogs = engine.watchdogs(fail)
    for watchdog in watchdogs:
        watchdog.start()
    tasks = [asyncio.create_task(_warm_up(state, server)), asyncio.create_task(drain.run(server))]
    if signals.received:
        drain.request()
    try:
        await server.serve()
    finally:
        for watchdog in watchdogs:
            watchdog.stop()
        for task in tasks:
            task.cancel()
        await state.batches.close()
        _call_hook(pm, "jackfield_engine_stopping", ready.info)
        tm.fail_all(state.failure or "the server is shutting down")
        tm.close()
    return 1 if state.failure else 0


def _warn_if_exposed(settings: Settings) -> None:
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        log.warning("serving on %s without --api-key: anyone who can reach this address can use the API",
                    settings.host)


async def _warm_up(state: ServerState, server: uvicorn.Server) -> None:
    """Run one short generation (an embedding for an embedding model), then two at once, on every
    replica, through the normal path, then report ready (GET /health -> 200). One and then two
    requests decode at batch 1 and 2: on the CPU each compiles its decode graph (decode_compile.py)
    here rather than in a client's request."""
    tm = state.tokenizer_manager
    if state.settings.warmup:
        ids = tm.encode(WARMUP_TEXT) if tm.tokenizer is not None else [0]
        dp = isinstance(tm, DPTokenizerManager)
        for copies in (1, 2):
            groups = []
            pins = [tm.pinned(i) for i in range(tm.num_replicas)] if dp else [nullcontext()]  # one use each
            try:
                for pin in pins:  # every replica at once
                    with pin:
                        groups.append(probe_group(state, ids, 4, copies).start())
                await asyncio.gather(*(group.collect() for group in groups))
            except Exception as exc:
                state.failure = f"the warm-up generation failed: {getattr(exc, 'message', exc)}"
                log.error("%s", state.failure)
                server.should_exit = True
                return
            finally:
                for group in groups:
                    group.close()
    while not server.started and not server.should_exit:
        await asyncio.sleep(0.05)
    freeze_startup_objects("server")
    state.ready = True
    _call_hook(state.pm, "jackfield_engine_started", state.info)
    s = state.settings
    print(f"jackfield: ready; serving '{state.model_name}' on http://{s.host}:{s.port}", flush=True)


def _call_hook(pm, name: str, info) -> None:
    try:
        getattr(pm.hook, name)(engine=info)
    except Exception:
        log.exception("plugin hook %s failed", name)
