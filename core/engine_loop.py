"""EngineLoop: builds the runtime (model, scheduler, tokenizer) and drives the scheduler in a thread.

Used by the offline Engine directly; the server's scheduler process runs the same Scheduler with
ZMQ in place of these queues.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from jackfield.config import Settings
from jackfield.embedding import EmbeddingSpec
from jackfield.io_struct import (AbortReq, BatchOutput, FlushCacheOut, FlushCacheReq, GetStatsReq, LoRAUpdateOut,
                                 ReqOutput, StatsOut)
from jackfield.model_runner import ModelRunner
from jackfield.runtime_setup import setup_runtime
from jackfield.scheduler.scheduler import Scheduler
from jackfield.sdk.model_config import ModelConfig
from jackfield.spec.setup import build_decoder, draft_memory

log = logging.getLogger(__name__)
IDLE_POLL_S = 0.05
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclass(frozen=True)
class EngineInfo:
    """What lifecycle hooks and /get_model_info see of a running engine."""

    settings: Settings
    model_config: ModelConfig
    model_path: str
    device: str
    dtype: str
    components: dict  # kind -> Choice.as_dict()
    max_total_tokens: int
    max_running_requests: int
    context_len: int
    weight_bytes: int = 0         # the model's parameters and buffers as stored (quantized weights packed)
    kv_cache_dtype: str = ""      # the KV pool's storage dtype
    lora_adapters: tuple = ()  # the LoRA adapters loaded at start (dicts of LoRAAdapter.describe); () when off
    lora_enabled: bool = False
    embedding: EmbeddingSpec = EmbeddingSpec()  # how embeddings are pooled; is_embedding: generation refused
    ranks: tuple = ()  # tensor parallelism: per rank, what it holds (heads, KV heads, experts, KV tokens); () on one rank


def load_tokenizer(settings: Settings, model_dir: Path):
    from jackfield.tokenizer.tokenizer import Tokenizer

    path = settings.tokenizer or (str(model_dir) if any((model_dir / f).exists() for f in TOKENIZER_FILES) else None)
    return Tokenizer.load(path) if path else None


def warn_unspellable_ids(tokenizer, vocab_size: int) -> None:
    """Dummy weights sample every id of the model's vocabulary; with a smaller tokenizer the ids past
    its end decode to no text, so streams skip them and clients time those tokens as waits."""
    if tokenizer is not None and tokenizer.vocab_size < vocab_size:
        log.warning("the tokenizer has %d ids and the model %d: dummy weights sample ids that decode to no text, "
                    "so a streaming client's TTFT and ITL include them (benchmarks/pad_tokenizer.py pads a "
                    "byte-level BPE tokenizer to the model's size)", tokenizer.vocab_size, vocab_size)


def build_scheduler(settings: Settings, progress: bool = True, as_replica: bool = False) -> tuple[Scheduler, EngineInfo]:
    """One engine's scheduler over its model runner. `as_replica`: built by a server's scheduler
    process, one of its `dp_size` replicas; anywhere else (the offline Engine, the in-process
    benchmarks) dp_size > 1 is refused, since only `jackfield serve` runs replicas. With tp_size > 1
    this process becomes rank 0 and starts the node's other ranks (jackfield.distributed) on CUDA
    devices 0 .. tp_size / nnodes - 1 of those it sees (a replica sees only its own)."""
    if settings.dp_size > 1 and not as_replica:
        raise ValueError(f"dp_size {settings.dp_size}: data parallelism runs replicas behind `jackfield serve "
                         f"--dp-size {settings.dp_size}`; an in-process engine is one replica (dp_size 1)")
    setup = setup_runtime(settings)
    tokenizer = load_tokenizer(settings, setup.source.path)
    if settings.load_format == "dummy":
        warn_unspellable_ids(tokenizer, setup.model_config.vocab_size)
    layout = ()
    if settings.tp_size > 1 or settings.ep_size > 1:  # this process is rank 0 (jackfield.distributed)
        from jackfield.distributed.ranks import start_rank_zero

        runner, layout = start_rank_zero(settings, setup, progress)
    else:
        runner = ModelRunner(setup, progress=progress, draft_memory=draft_memory(settings))
    decoder = build_decoder(setup, runner)
    info = EngineInfo(settings, setup.model_config, setup.source.origin, str(runner.device),
                      str(runner.dtype).removeprefix("torch."), {k: c.as_dict() for k, c in setup.choices.items()},
                      runner.max_total_tokens, runner.max_running_requests, runner.context_len, runner.weight_bytes,
                      str(runner.kv_dtype).removeprefix("torch."),
                      tuple(runner.lora.describe()) if runner.lora is not None else (), runner.lora is not None,
                      setup.embedding, tuple(layout))
    sched = Scheduler(runner, tokenizer, decoder)
    sched.pm = setup.pm
    return sched, info


class EngineLoop:
    def __init__(self, settings: Settings, progress: bool = True):
        self._inbox: queue.Queue = queue.Queue()
        self._outboxes: dict[str, queue.Queue] = {}
        self._control: queue.Queue = queue.Queue()
        self._replies: dict[str, queue.Queue] = {}  # LoRA load/unload request id -> its reply box
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # The scheduler is built on the thread that runs it, so one thread does all of the model's
        # work. On the CPU, OpenMP keeps a worker team per thread that starts parallel operators;
        # with a second team (the caller's, from loading the model) libgomp counts more workers
        # than cores and stops spin-waiting, so every parallel operator then waits for its workers
        # to wake up (SmolLM2 batch-1 decode: 39 instead of 66 tok/s on 2 cores).
        built: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._build_and_run, args=(settings, progress, built),
                                        name="jackfield-scheduler", daemon=True)
        self._thread.start()
        result = built.get()
        if isinstance(result, BaseException):
            self._thread.join()
            raise result
        self.scheduler, self.info = result
        self.tokenizer = self.scheduler.tokenizer
        _call_hook(self.scheduler.pm, "jackfield_engine_started", self.info)

    def _build_and_run(self, settings: Settings, progress: bool, built: queue.Queue) -> None:
        try:
            self.scheduler, self.info = build_scheduler(settings, progress)
        except BaseException as exc:  # handed to the constructor, which raises it
            built.put(exc)
            return
        built.put((self.scheduler, self.info))
        self._run()

    def submit(self, msg) -> None:
        with self._lock:
            self._outboxes[msg.rid] = queue.Queue()
        self._inbox.put(msg)

    def get(self, rid: str) -> ReqOutput:
        return self._outboxes[rid].get()

    def forget(self, rid: str) -> None:
        with self._lock:
            self._outboxes.pop(rid, None)

    def abort_and_forget(self, rid: str) -> None:
        if rid in self._outboxes:
            self._inbox.put(AbortReq(rid))
            self.forget(rid)

    def flush_cache(self) -> bool:
        self._inbox.put(FlushCacheReq())
        out: FlushCacheOut = self._control.get()
        return out.ok

    def stats(self) -> StatsOut:
        self._inbox.put(GetStatsReq())
        return self._control.get()

    def lora_update(self, msg) -> LoRAUpdateOut:
        """Send a LoadLoRAReq / UnloadLoRAReq and wait for its reply (an unload waits for the
        adapter's requests to finish)."""
        box: queue.Queue = queue.Queue()
        with self._lock:
            self._replies[msg.request_id] = box
        self._inbox.put(msg)
        try:
            return box.get()
        finally:
            with self._lock:
                self._replies.pop(msg.request_id, None)

    def _dispatch(self, outs: list) -> None:
        for out in outs:
            if isinstance(out, BatchOutput):
                for ro in out.outputs:
                    box = self._outboxes.get(ro.rid)
                    if box is not None:
                        box.put(ro)
            elif isinstance(out, LoRAUpdateOut):
                box = self._replies.get(out.request_id)
                if box is not None:
                    box.put(out)
            else:
                self._control.put(out)

    def _run(self) -> None:
        sched = self.scheduler
        while not self._stop.is_set():
            wait = _inbox_wait(sched)
            try:
                msg = self._inbox.get(timeout=wait) if wait > 0 else self._inbox.get_nowait()
            except queue.Empty:
                msg = None
            while msg is not None:
                self._dispatch(sched.handle(msg))
                try:
                    msg = self._inbox.get_nowait()
                except queue.Empty:
                    msg = None
            if sched.has_work() and sched.fatal is not None:  # the engine cannot go on: every request fails
                self._dispatch(sched.abort_all(sched.fatal, status=500))
            elif sched.has_work():
                try:
                    self._dispatch(sched.step())
                except Exception as exc:  # a failing forward fails the request at fault, not the engine
                    log.exception("scheduler step failed")
                    self._dispatch(sched.recover(exc))

    def shutdown(self) -> None:
        if self._stop.is_set():
            return
        _call_hook(self.scheduler.pm, "jackfield_engine_stopping", self.info)
        self._stop.set()
        self._thread.join(timeout=10)
        self.scheduler.close()


def _inbox_wait(sched) -> float:
    """Seconds the loop may wait for a message before stepping: a short poll while idle; with work,
    until the late launch's deadline (launch_clock.py), else none."""
    if not sched.has_work():
        return IDLE_POLL_S
    deadline = sched.launch_deadline()
    return 0.0 if deadline is None else deadline - time.monotonic()


def _call_hook(pm, name: str, info: EngineInfo) -> None:
    try:
        getattr(pm.hook, name)(engine=info)
    except Exception:
        log.exception("plugin hook %s failed", name)
