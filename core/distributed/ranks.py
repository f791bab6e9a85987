"""The rank processes of a tensor-parallel engine.

Node 0's rank 0 is the process that runs the scheduler (the server's scheduler process, or the
offline Engine's own process): `start_rank_zero` starts node 0's other ranks, meets them and every
other node's ranks, and returns rank 0's groups. Every other rank is a `run_rank` process: a node
other than 0 runs only those (`run_node`, what `jackfield serve --node-rank N` does), each building
its share of the model and then following rank 0's batches (lockstep.py) until rank 0 stops.

A rank that fails to start (a bad size, an unreachable --dist-init-addr, a model that does not
load) ends with an error on every rank: the sizes are checked alike everywhere before the ranks
meet (layout.py), a rank that does not come is waited for only the layout's timeout (group.py),
and a failure while building the model is exchanged at the startup barrier (RankGroup.agree).
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
import time
from dataclasses import replace

import torch

from jackfield.config import Settings
from jackfield.distributed.group import JoinError, RankGroup, free_loopback_addr, join
from jackfield.distributed.layout import LayoutError, ParallelLayout

log = logging.getLogger(__name__)
STOP_TIMEOUT_S = 10.0


def rank_device(settings: Settings, layout: ParallelLayout, rank: int) -> torch.device:
    """The device of `rank` on its node: cuda:<local index> on GPU, the CPU otherwise."""
    from jackfield.runtime_setup import resolve_device

    device = resolve_device(settings)
    if device.type != "cuda":
        return device
    device = torch.device("cuda", layout.local_index(rank))
    torch.cuda.set_device(device)
    return device


def check_layout(settings: Settings, layout: ParallelLayout, setup) -> None:
    """Every startup check of the sizes (LayoutError naming the values)."""
    visible = torch.cuda.device_count() if setup.device.type == "cuda" else None
    layout.check(visible)
    latent = setup.choices["model"].info.cls.kv_layout(setup.model_config).v_in_k
    layout.check_model(setup.model_config, latent, settings)
    quant = setup.choices["quantization"].info.cls
    if layout.enabled and not quant.supports_tensor_parallel:
        raise LayoutError(f"the quantization method '{quant.name}' does not support tensor parallelism (tp_size "
                          f"{layout.tp_size}); choose another with --quantization")


def describe_rank(runner) -> dict:
    """What this rank holds, for the startup layout report."""
    cfg, tp = runner.config, runner.tp
    heads = cfg.num_heads // tp.size
    kv = runner.kv_layout.num_kv_heads
    kv_first = tp.head_share(cfg.num_kv_heads)[0] if tp.size > 1 else 0
    out = {"rank": tp.rank, "device": str(runner.device), "heads": [tp.rank * heads, (tp.rank + 1) * heads],
           "kv_heads": [kv_first, kv_first + kv], "kv_tokens": runner.max_total_tokens,
           "kv_bytes": runner.kv_layout.bytes_per_token(cfg.num_layers, runner.kv_dtype) * runner.max_total_tokens,
           "weight_bytes": runner.weight_bytes}
    if cfg.num_experts:
        per = cfg.num_experts // runner.setup.settings.ep_size
        first = tp.rank * per if runner.setup.settings.ep_size > 1 else 0
        out["experts"] = [first, first + per]
    return out


def build_rank_runner(setup, group: RankGroup, progress: bool):
    """This rank's ModelRunner; any failure of any rank raises on every rank (the startup barrier).
    Returns (runner, every rank's `describe_rank`)."""
    import torch.distributed as dist

    from jackfield.model_runner import ModelRunner
    from jackfield.plugin_faults import describe

    runner, error = None, None
    try:
        runner = ModelRunner(setup, progress=progress, ranks=group)
    except Exception as exc:  # noqa: BLE001 - reported to every rank below
        log.debug("rank %d failed to build its model", group.rank, exc_info=True)
        error = describe(exc, setup.pm)
    group.agree(error)
    layout: list = [None] * group.size
    dist.all_gather_object(layout, describe_rank(runner), group=group.cpu_group)
    return runner, layout


class Followers:
    """Node 0's follower rank processes, started by rank 0."""

    def __init__(self, settings: Settings, layout: ParallelLayout, addr: str):
        ctx = mp.get_context("spawn")
        self.procs = [ctx.Process(target=run_rank, args=(settings, r, addr, layout), name=f"jackfield-rank{r}",
                                  daemon=True) for r in layout.node_ranks[1:]]
        for p in self.procs:
            p.start()

    def dead(self) -> str | None:
        for p in self.procs:
            if not p.is_alive() and p.exitcode not in (None, 0):
                return f"rank process {p.name} exited with code {p.exitcode}"
        return None

    def kill(self) -> None:
        """End the ranks at once (after a failed forward: they may be stuck in a collective)."""
        for p in self.procs:
            if p.is_alive():
                p.kill()
            p.join(STOP_TIMEOUT_S)

    def join(self) -> None:
        """Wait for the ranks to exit (they do once rank 0 stops them); kill what does not."""
        for p in self.procs:
            p.join(STOP_TIMEOUT_S)
            if p.is_alive():
                log.warning("%s did not stop; killing it", p.name)
                p.kill()
                p.join(STOP_TIMEOUT_S)


def start_rank_zero(settings: Settings, setup, progress: bool = True):
    """Rank 0's side of startup: check the sizes, start node 0's other ranks, meet every rank,
    build rank 0's runner. Returns the runner (its `followers` set) and the layout report.

    Without --dist-init-addr the ranks meet at a free loopback port, one per engine, so the
    data-parallel replicas of one server (each a TP engine on its own devices) never meet."""
    layout = ParallelLayout.of(settings)
    check_layout(settings, layout, setup)
    addr = layout.dist_init_addr or free_loopback_addr()
    followers = Followers(settings, layout, addr)
    try:
        group = join(layout, 0, addr, rank_device(settings, layout, 0), followers.dead)
        runner, report = build_rank_runner(replace(setup, device=rank_device(settings, layout, 0)), group, progress)
    except BaseException:
        followers.join()
        raise
    runner.followers = followers
    return runner, report


def run_rank(settings: Settings, rank: int, addr: str | None, layout: ParallelLayout) -> None:
    """A follower rank's process: check, meet, build this rank's model, follow rank 0."""
    from jackfield.distributed.lockstep import follow
    from jackfield.runtime_setup import setup_runtime
    from jackfield.server.ipc import setup_child

    setup_child(f"rank{rank}", settings.log_level)
    # a follower holds no state worth saving, and SIGTERM may find it blocked inside a collective
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    try:
        device = rank_device(settings, layout, rank)
        if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:  # else set for each process already
            torch.set_num_threads(max(1, torch.get_num_threads() // layout.ranks_per_node))
        setup = replace(setup_runtime(settings), device=device)
        check_layout(settings, layout, setup)
        group = join(layout, rank, addr or layout.dist_init_addr, device)
        runner, _ = build_rank_runner(setup, group, progress=False)
    except (LayoutError, JoinError, RuntimeError, ValueError) as exc:
        print(f"jackfield: error: rank {rank}: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    follow(runner, group)
    group.close()


def run_node(settings: Settings) -> int:
    """`jackfield serve` on a node other than 0: run this node's ranks until rank 0 stops them.
    Returns the exit code (1 when a rank failed)."""
    layout = ParallelLayout.of(settings)
    try:
        layout.check(None)
    except LayoutError as exc:
        print(f"jackfield: error: {exc}", file=sys.stderr, flush=True)
        return 1
    print(f"jackfield: node {layout.node_rank} of {layout.nnodes}: ranks {layout.node_ranks.start}.."
          f"{layout.node_ranks.stop - 1} joining {layout.dist_init_addr}", flush=True)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=run_rank, args=(settings, r, None, layout), name=f"jackfield-rank{r}")
             for r in layout.node_ranks]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            if any(p.exitcode not in (None, 0) for p in procs):
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    for p in procs:
        if p.is_alive():
            p.terminate()
        p.join(STOP_TIMEOUT_S)
    codes = [p.exitcode for p in procs]
    if any(c != 0 for c in codes):
        print(f"jackfield: error: node {layout.node_rank}: rank exit codes {codes}", file=sys.stderr, flush=True)
        return 1
    return 0
