"""EngineReplicas: the `dp_size` engines behind one server, each an EngineProcesses with its own
channels (PortArgs), so each replica has its own scheduler process(es), detokenizer and KV pool.

A replica's processes are started with their own environment:
* CUDA: `CUDA_VISIBLE_DEVICES` holds the replica's devices, [i*tp, (i+1)*tp) of those visible to the
  server, so inside a replica they are devices 0..tp-1 whatever its index;
* CPU: the replicas share the cores, so unless `OMP_NUM_THREADS` is set each process gets
  cores / (dp_size x tp_size) torch threads (every core's threads in each would oversubscribe them).

With `dp_size` 1 there is one replica, started exactly as a single engine is, with the plain
TokenizerManager; with more, the DPTokenizerManager routes between them.
"""
from __future__ import annotations

import contextlib
import os

from jackfield.config import Settings
from jackfield.router.cache_aware import CacheAwareRouter, RouterConfig
from jackfield.server.dp_tokenizer_manager import DPTokenizerManager
from jackfield.server.ipc import PortArgs
from jackfield.server.messages import ReadyInfo
from jackfield.server.processes import EngineProcesses, StartupFailed
from jackfield.server.tokenizer_manager import TokenizerManager
from jackfield.server.watchdog import EngineWatchdog


def check_single_node(settings: Settings) -> None:
    """Replicas run on one node: each replica's tensor-parallel ranks meet at their own loopback
    address, while several nodes share one --dist-init-addr. Raises StartupFailed naming the values."""
    if settings.dp_size > 1 and settings.nnodes > 1:
        raise StartupFailed(f"dp_size {settings.dp_size} with nnodes {settings.nnodes}: data-parallel replicas "
                            "run on one node; use --dp-size 1 across nodes")


def uses_cuda(settings: Settings) -> bool:
    if settings.device != "auto":
        return settings.device == "cuda"
    import torch

    return torch.cuda.is_available()


def replica_devices(settings: Settings) -> list[list[str]] | None:
    """The CUDA device ids each replica uses, from those visible; None off CUDA. Raises
    StartupFailed naming the values when dp_size x tp_size devices are not visible."""
    if not uses_cuda(settings):
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [d.strip() for d in visible.split(",") if d.strip()]
    else:
        import torch

        ids = [str(i) for i in range(torch.cuda.device_count())]
    dp, tp = settings.dp_size, settings.tp_size
    if dp * tp > len(ids):
        raise StartupFailed(f"dp_size {dp} x tp_size {tp} needs {dp * tp} CUDA devices, but {len(ids)} "
                            f"are visible ({', '.join(ids) or 'none'}); lower --dp-size or --tp-size")
    return [ids[i * tp:(i + 1) * tp] for i in range(dp)]


@contextlib.contextmanager
def child_env(overrides: dict[str, str]):
    """os.environ with `overrides` while processes are spawned (a spawned child copies it)."""
    before = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class EngineReplicas:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.ports = [PortArgs.create() for _ in range(settings.dp_size)]
        self.replicas = [EngineProcesses(settings, p) for p in self.ports]
        self.ready: list[ReadyInfo] = []
        if self.data_parallel:  # the replica in what is reported of its processes (a startup failure, a death)
            for i, procs in enumerate(self.replicas):
                for proc in procs.processes:
                    proc.name = f"{proc.name}-{i}"

    @property
    def data_parallel(self) -> bool:
        return len(self.replicas) > 1

    def start(self) -> None:
        check_single_node(self.settings)
        devices = replica_devices(self.settings) if self.data_parallel else None
        threads = max(1, (os.cpu_count() or 1) // (len(self.replicas) * self.settings.tp_size))
        for i, procs in enumerate(self.replicas):
            env = {}
            if devices is not None:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(devices[i])
            elif self.data_parallel and "OMP_NUM_THREADS" not in os.environ:
                env["OMP_NUM_THREADS"] = str(threads)
            with child_env(env):
                procs.start()

    def wait_ready(self) -> ReadyInfo:
        """Wait for every replica; returns replica 0's ReadyInfo (they serve the same model)."""
        for i, procs in enumerate(self.replicas):
            self.ready.append(procs.wait_ready())
        return self.ready[0]

    def describe(self) -> list[str]:
        """One line per replica for the startup report (data parallel only)."""
        devices = replica_devices(self.settings)
        return [f"replica {i}: {'devices ' + ','.join(devices[i]) if devices else r.info.device}, KV cache "
                f"{r.info.max_total_tokens} tokens, up to {r.info.max_running_requests} running requests"
                for i, r in enumerate(self.ready)]

    def tokenizer_manager(self, tokenizer, metrics) -> TokenizerManager:
        s, info = self.settings, self.ready[0].info
        if not self.data_parallel:
            return TokenizerManager(self.ports[0], tokenizer, info, metrics, s.max_queued_requests, s.request_timeout)
        router = CacheAwareRouter(RouterConfig.from_settings(s, [r.info.max_total_tokens for r in self.ready]))
        return DPTokenizerManager(self.ports, tokenizer, info, metrics, router, s.max_queued_requests,
                                  s.request_timeout)

    def process_ids(self) -> dict[str, int]:
        """Role -> pid: scheduler, detokenizer; scheduler-<i>, detokenizer-<i> for replica i."""
        return {p.name.removeprefix("jackfield-"): p.pid for procs in self.replicas for p in procs.processes}

    def watchdogs(self, on_failure) -> list[EngineWatchdog]:
        return [EngineWatchdog(p, p.heartbeat, self.settings.watchdog_timeout, on_failure) for p in self.replicas]

    def stop(self) -> None:
        for procs in self.replicas:
            procs.stop()
        for ports in self.ports:
            ports.cleanup()
