"""The scheduler's side of constrained decoding, on SmolLM2 with the overlap scheduler forced on:
compiles off the critical path (the batch goes on; abort while compiling), the compile cache
(errors included), timeouts, a refused token, abort_all with a grammar job in flight, and
rollback on the real vocabulary. Every path leaves the KV pool clean."""
from __future__ import annotations

import json
import threading

import pytest

from jackfield.config import settings_for
from jackfield.engine_loop import build_scheduler
from cases import OpenGrammar
from jackfield.sdk.grammar import GrammarBackend, GrammarError, GrammarSpec, allocate_bitmask
from sched_harness import Driver, check_pool_clean

BACKENDS = ("xgrammar", "llguidance", "outlines")


class GatedBackend(GrammarBackend):
    """Compiles once `gate` is set; counts compiles; "bad" regexes fail; "refuse:N" refuses token N."""

    name = "gated"
    gate = threading.Event()
    compiles = 0

    def compile_regex(self, regex):
        type(self).compiles += 1
        assert self.gate.wait(60)
        if regex == "bad":
            raise GrammarError("bad is not a regex")
        return OpenGrammar(frozenset(range(self.vocab.vocab_size)) if regex.startswith("refuse") else frozenset())


@pytest.fixture(scope="module")
def sched():
    s, _ = build_scheduler(settings_for(kv_cache_bytes=1 << 26, max_running_requests=8, disable_overlap_schedule=False,
                                        grammar_compile_timeout=30), progress=False)
    assert s.overlap
    s.grammars.classes["gated"] = GatedBackend
    yield s
    GatedBackend.gate.set()
    s.close()


def _driver(sched) -> Driver:
    return Driver(sched)


def test_compiling_request_waits_and_the_batch_goes_on(sched):
    GatedBackend.gate.clear()
    d = _driver(sched)
    d.submit("slow", [1, 2, 3], 4, regex="a+", grammar_backend="gated")
    d.submit("plain", [4, 5, 6], 6)
    assert len(sched.grammars) == 1
    while d.records["plain"].finish is None:
        d.step()
    assert d.records["slow"].finish is None and len(sched.grammars) == 1 and sched.has_work()
    d.abort("slow")
    assert d.records["slow"].finish.kind == "abort" and not sched.has_work()
    check_pool_clean(sched)
    GatedBackend.gate.set()


def test_cache_compiles_once_and_caches_errors(sched):
    GatedBackend.gate.set()
    d = _driver(sched)
    before = GatedBackend.compiles
    for i in range(3):
        d.submit(f"ok{i}", [7, 8], 3, regex="b+", grammar_backend="gated")
        d.submit(f"bad{i}", [7, 8], 3, regex="bad", grammar_backend="gated")
    d.run()
    assert GatedBackend.compiles - before == 2
    for i in range(3):
        assert d.records[f"ok{i}"].finish.kind in ("length", "stop")
        assert "bad is not a regex" in d.records[f"bad{i}"].finish.message
    check_pool_clean(sched)


def test_refused_token_aborts_with_a_clear_error(sched):
    GatedBackend.gate.set()
    d = _driver(sched)
    d.submit("refused", [9, 10], 5, regex="refuse", grammar_backend="gated")
    d.submit("plain", [9, 11], 5)
    d.run()
    finish = d.records["refused"].finish
    assert finish.kind == "abort" and "refused the sampled token" in finish.message
    assert d.records["plain"].finish.kind == "length"
    check_pool_clean(sched)


def test_compile_timeout_fails_the_request(sched):
    GatedBackend.gate.clear()
    d = _driver(sched)
    sched.grammars.timeout_s = 0.05
    try:
        d.submit("late", [1, 2], 3, regex="c+", grammar_backend="gated")
        d.run()
    finally:
        sched.grammars.timeout_s = 30
        GatedBackend.gate.set()
    assert "took longer than" in d.records["late"].finish.message
    check_pool_clean(sched)


def test_abort_all_with_a_grammar_job_in_flight(sched):
    d = _driver(sched)
    d.submit("g", [3, 4, 5], 20, json_schema=json.dumps({"type": "array", "items": {"type": "integer"}}))
    d.submit("p", [3, 4, 6], 20)
    while sched.inflight is None or sched.inflight[0].mask is None:
        d.step()
    d.collect(sched.abort_all("stopped for the test"))
    assert all(r.finish.kind == "abort" for r in d.records.values())
    check_pool_clean(sched)


def test_per_request_backend_must_be_installed(sched):
    d = _driver(sched)
    d.submit("x", [1], 2, regex="a", grammar_backend="nope")
    assert "grammar_backend 'nope' is not installed" in d.records["x"].finish.message
    assert "xgrammar" in d.records["x"].finish.message


@pytest.mark.parametrize("name", BACKENDS)
def test_rollback_restores_the_mask_on_the_real_vocabulary(sched, name):
    backend = sched.grammars.backend(name)
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10},
                                               "tags": {"type": "array", "items": {"enum": ["a", "b"]}}},
              "required": ["name", "tags"]}
    grammar = backend.compile(GrammarSpec("json_schema", json.dumps(schema)))
    tokens = sched.grammars.vocab.encode('{"name": "Ada", "tags": ["a", "b"]}')
    masks = []
    for token in tokens:
        bitmask = allocate_bitmask(1, sched.vocab_size)
        grammar.fill_bitmask(bitmask, 0)
        masks.append(bitmask)
        assert grammar.accept_token(token)
    for k in (1, 3, len(tokens) - 1):
        grammar.rollback(k)
        bitmask = allocate_bitmask(1, sched.vocab_size)
        grammar.fill_bitmask(bitmask, 0)
        assert (bitmask == masks[len(tokens) - k]).all(), f"{name}: rollback({k})"
        for token in tokens[len(tokens) - k:]:
            assert grammar.accept_token(token)
    assert grammar.accept_token(sched.eos_ids[0]) and grammar.is_terminated()
