"""Joining the ranks of one engine: a TCP store at dist_init_addr, then torch.distributed groups.

`join` returns a `RankGroup`: the layers' group (`tp`, NCCL on CUDA, gloo on CPU) and a gloo group
on the CPU for control (lockstep.py broadcasts each batch over it, and startup failures are
exchanged over it). Rank 0 hosts the store and waits up to the layout's timeout for every rank; the
others wait as long to reach it. Either way a rank that gives up raises `JoinError` naming the
address, the sizes and what to check, so every node fails with a clear error instead of hanging.
"""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from jackfield.distributed.layout import ParallelLayout, split_addr
from jackfield.sdk.parallel import ParallelGroup

IDLE_WAIT = timedelta(days=3650)  # a follower waits this long for rank 0's next batch (a server may idle)


class JoinError(RuntimeError):
    """The ranks could not meet; the message names the address and the sizes."""


@dataclass(frozen=True)
class RankGroup:
    rank: int
    layout: ParallelLayout
    tp: ParallelGroup   # the layers' collectives
    cpu_group: Any      # gloo: batches and startup status

    @property
    def size(self) -> int:
        return self.layout.tp_size

    def agree(self, error: str | None) -> None:
        """Startup barrier: every rank passes its own failure (None when fine); every rank then
        raises the first failure of any rank, so all of them stop with the same message."""
        import torch.distributed as dist

        errors: list = [None] * self.size
        dist.all_gather_object(errors, error, group=self.cpu_group)
        bad = [(r, e) for r, e in enumerate(errors) if e is not None]
        if bad:
            rank, message = bad[0]
            raise RuntimeError(f"rank {rank} failed to start: {message}")

    def min_over_ranks(self, value: int) -> int:
        """The smallest of the ranks' `value` (the KV capacity every rank can hold)."""
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.cpu_group)
        return int(t.item())

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def free_loopback_addr() -> str:
    """A free port on 127.0.0.1, as 'host:port' (one node without --dist-init-addr)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def join(layout: ParallelLayout, rank: int, addr: str, device: torch.device, dead=None) -> RankGroup:
    """Meet the other ranks at `addr`; returns this rank's groups or raises JoinError. Rank 0 also
    calls `dead()` while it waits (a reason when one of its own follower processes died, else None)."""
    import torch.distributed as dist

    host, port = split_addr(addr)
    world = layout.tp_size
    timeout = timedelta(seconds=layout.timeout_s)
    sizes = f"tp_size {world} over nnodes {layout.nnodes}"
    try:
        store = dist.TCPStore(host, port, world, is_master=rank == 0, timeout=timeout, wait_for_workers=False)
    except Exception as exc:  # noqa: BLE001 - the store raises RuntimeError / DistNetworkError / TimeoutError
        if rank == 0:
            why = f"cannot host the rank rendezvous at --dist-init-addr {addr}; pass another address or port"
        else:
            why = (f"rank {rank} could not reach node 0 at --dist-init-addr {addr} within {layout.timeout_s:g} s "
                   f"({sizes}); check the address and that node 0 is started")
        raise JoinError(f"{why} ({type(exc).__name__}: {_first_line(exc)})") from None
    store.add(JOINED, 1)
    if rank == 0:
        _wait_for_ranks(store, layout, addr, sizes, dead)
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" and device.index is not None else {}
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout, **kwargs)
    cpu_group = dist.new_group(backend="gloo", timeout=IDLE_WAIT)
    if backend == "nccl":  # create the communicator now: a first collective inside a CUDA-graph capture cannot
        dist.all_reduce(torch.zeros(1, device=device))
        torch.cuda.synchronize(device)
    return RankGroup(rank, layout, ParallelGroup(rank, world, dist.group.WORLD), cpu_group)


JOINED = "jackfield/joined"


def _wait_for_ranks(store, layout: ParallelLayout, addr: str, sizes: str, dead) -> None:
    deadline = time.monotonic() + layout.timeout_s
    while True:
        joined = store.add(JOINED, 0)
        if joined >= layout.tp_size:
            return
        reason = dead() if dead is not None else None
        if reason:
            raise JoinError(f"{reason} before every rank joined ({sizes})")
        if time.monotonic() > deadline:
            raise JoinError(f"only {joined} of {layout.tp_size} ranks joined {addr} within {layout.timeout_s:g} s "
                            f"({sizes}); check that every node runs with the same --dist-init-addr and --nnodes "
                            f"and its own --node-rank")
        time.sleep(0.05)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
