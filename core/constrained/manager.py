"""GrammarManager: compiles constraints off the scheduler's critical path and caches them.

A constrained request either finds its compiled grammar in the cache (it gets a fresh copy and
goes straight to the waiting queue), or waits in the grammar queue while a compile thread works
(SGLang's grammar_manager). The cache key is (backend, kind, constraint); a constraint that fails
to compile is cached as its error, so the next request with it fails at once. The scheduler polls
before it plans a batch: ready requests join the waiting queue, failed ones finish with the error.
Requests in the grammar queue hold no KV, so aborting one only drops it from the queue.

Backends are built on the compile threads the first time a request names them, from the registry:
a request may choose any installed backend (`grammar_backend`), not only the engine's default.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable

from jackfield.io_struct import FinishReason
from jackfield.sdk.grammar import Grammar, GrammarBackend, GrammarError, GrammarSpec, GrammarVocab, UnsupportedGrammar

log = logging.getLogger(__name__)
CACHE_ENTRIES = 512
COMPILE_THREADS = 2


class CompileFailed:
    """A cached compile error."""

    def __init__(self, message: str):
        self.message = message


class GrammarManager:
    def __init__(self, backends: dict[str, type[GrammarBackend]], default: str | None,
                 make_vocab: Callable[[], GrammarVocab] | None, timeout_s: float):
        self.classes, self.default, self.timeout_s = backends, default, timeout_s
        self._make_vocab = make_vocab
        self._vocab: GrammarVocab | None = None
        self._backends: dict[str, GrammarBackend] = {}
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._cache: OrderedDict[tuple, Grammar | CompileFailed | Future] = OrderedDict()
        self.queue: list[tuple[object, Future, tuple, float]] = []  # (req, future, key, enqueued at)

    @classmethod
    def from_setup(cls, setup, tokenizer, vocab_size: int, eos_ids: tuple[int, ...]) -> GrammarManager:
        """The engine's manager: every installed grammar backend by name, the configured default."""
        backends = {}
        for info in setup.registry.of_kind("grammar"):
            if len(setup.registry.candidates("grammar", info.name)) == 1 and info.availability().ok:
                backends[info.name] = info.cls
        choice = setup.choices.get("grammar")
        default = choice.name if choice is not None else None
        if default is not None:
            backends[default] = choice.info.cls  # a name conflict resolved by plugin_choice
        make_vocab = None
        if tokenizer is not None:
            from jackfield.tokenizer.token_bytes import grammar_vocab

            def make_vocab() -> GrammarVocab:
                return grammar_vocab(tokenizer, vocab_size, eos_ids)
        return cls(backends, default, make_vocab, setup.settings.grammar_compile_timeout)

    def __len__(self) -> int:
        return len(self.queue)

    @property
    def vocab(self) -> GrammarVocab | None:
        """The vocabulary the backends were built with (None until the first compile started one)."""
        return self._vocab

    # ---- requests -----------------------------------------------------------------------------
    def submit(self, req) -> FinishReason | None:
        """Give `req` its grammar (cached), queue it (compiling; `req.grammar` stays None), or
        return why it is refused."""
        spec: GrammarSpec = req.sampling_params.constraint
        name = req.sampling_params.grammar_backend or self.default
        refusal = self._refusal(name)
        if refusal:
            return FinishReason("abort", message=refusal)
        key = (name, spec.kind, spec.value)
        entry = self._cache.get(key)
        if entry is None:
            entry = self._cache[key] = self._pool().submit(self._compile, name, spec)
            self._trim()
        else:
            self._cache.move_to_end(key)
        if isinstance(entry, Future) and not entry.done():
            self.queue.append((req, entry, key, time.monotonic()))
            return None
        return self._attach(req, self._settle(key, entry))

    def poll(self) -> tuple[list, list]:
        """(requests whose grammar is ready, requests that failed, with finished_reason set)."""
        ready, failed, waiting = [], [], []
        now = time.monotonic()
        for item in self.queue:
            req, future, key, since = item
            if future.done():
                reason = self._attach(req, self._settle(key, future))
                (failed if reason else ready).append(req)
                req.finished_reason = reason
            elif now - since > self.timeout_s:
                req.finished_reason = FinishReason("abort", message=(
                    f"compiling the {key[1]} constraint took longer than {self.timeout_s:g} s "
                    f"(grammar_compile_timeout)"))
                failed.append(req)
            else:
                waiting.append(item)
        self.queue = waiting
        return ready, failed

    def abort(self, rid: str):
        """Take the request `rid` out of the grammar queue; returns it, or None if it is not there.
        Its compile goes on (another request may share it) and its result is cached."""
        for i, (req, *_rest) in enumerate(self.queue):
            if req.rid == rid:
                return self.queue.pop(i)[0]
        return None

    def drain(self) -> list:
        """Every queued request (abort_all); the queue is left empty."""
        reqs, self.queue = [item[0] for item in self.queue], []
        return reqs

    def wait(self, timeout: float) -> None:
        """Block until some queued compile finishes or `timeout` seconds pass (an idle scheduler)."""
        if self.queue:
            wait({item[1] for item in self.queue}, timeout=timeout, return_when=FIRST_COMPLETED)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # ---- internals ----------------------------------------------------------------------------
    def _refusal(self, name: str | None) -> str | None:
        installed = ", ".join(self.classes) or "none"
        if name is None:
            return ("constrained decoding is off (grammar_backend is 'none' or no grammar backend is installed); "
                    f"installed grammar backends: {installed}")
        if name not in self.classes:
            return f"grammar_backend '{name}' is not installed; installed grammar backends: {installed}"
        if self._make_vocab is None:
            return "this model has no tokenizer, so its output cannot be constrained"
        return None

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(COMPILE_THREADS, thread_name_prefix="jackfield-grammar")
        return self._executor

    def backend(self, name: str) -> GrammarBackend:
        """The backend `name` over this engine's vocabulary, built on first use (thread-safe)."""
        with self._lock:
            if name not in self._backends:
                if self._vocab is None:
                    self._vocab = self._make_vocab()
                self._backends[name] = self.classes[name](self._vocab)
            return self._backends[name]

    def _compile(self, name: str, spec: GrammarSpec) -> Grammar | CompileFailed:
        """Runs on a compile thread; never raises."""
        try:
            return self.backend(name).compile(spec)
        except UnsupportedGrammar as exc:  # its message names the backend and the feature
            return CompileFailed(str(exc))
        except GrammarError as exc:
            return CompileFailed(f"invalid {spec.kind} for grammar backend '{name}': {exc}")
        except Exception as exc:  # a backend bug fails this constraint, not the engine
            log.exception("grammar backend %s failed to compile a %s constraint", name, spec.kind)
            return CompileFailed(f"grammar backend '{name}' failed on this {spec.kind}: {type(exc).__name__}: {exc}")

    def _settle(self, key: tuple, entry) -> Grammar | CompileFailed:
        if isinstance(entry, Future):
            entry = entry.result()
            if key in self._cache:
                self._cache[key] = entry
        return entry

    def _attach(self, req, entry: Grammar | CompileFailed) -> FinishReason | None:
        if isinstance(entry, CompileFailed):
            return FinishReason("abort", message=entry.message)
        req.grammar = entry.copy()
        return None

    def _trim(self) -> None:
        while len(self._cache) > CACHE_ENTRIES:
            key, entry = next(iter(self._cache.items()))
            if isinstance(entry, Future) and not entry.done():
                break
            del self._cache[key]
