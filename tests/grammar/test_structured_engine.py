"""Constrained generation with SmolLM2 on CPU, every grammar backend, through the offline Engine.

Each engine runs the whole matrix in one batch (20 schemas + 10 regexes per backend, greedy and
seeded sampling): one engine with jump-forward on, one with it off and the overlap scheduler forced
on (delayed sampling on CPU). Every output must finish with `stop` and validate (jsonschema,
re.fullmatch). The jump-forward engine runs without mixed chunks: on CPU the reference attention
computes a mixed batch's decodes one request at a time, which only slows the test down.
"""
from __future__ import annotations

import ast
import json
import re

import jsonschema
import pytest

from cases import ARITHMETIC, OUTLINES_REFUSES, REGEXES, SCHEMAS
from jackfield.engine import Engine

BACKENDS = ("xgrammar", "llguidance", "outlines")
ENGINE = dict(max_running_requests=192, kv_cache_bytes=1 << 30)


def _matrix():
    """(backend, kind, name, constraint, sampling params) for every case of the matrix."""
    cases = []
    for backend in BACKENDS:
        for name, schema in SCHEMAS.items():
            if backend != "outlines" or name not in OUTLINES_REFUSES:
                cases.append((backend, "json_schema", name, schema))
        cases += [(backend, "regex", rx, rx) for rx in REGEXES]
    runs = []
    for backend, kind, name, constraint in cases:
        for temperature in (0.0, 0.8):
            params = {kind: constraint, "grammar_backend": backend, "temperature": temperature, "seed": 7,
                      "max_new_tokens": 64}
            runs.append((backend, kind, name, constraint, params))
    return runs


MATRIX = _matrix()


def _prompt(kind: str) -> str:
    return "Reply in JSON:" if kind == "json_schema" else "Reply:"


def _generate_all(engine: Engine, runs) -> list[dict]:
    rids = [engine._submit(engine._encode(_prompt(r[1])), engine._params(r[4])) for r in runs]
    return [engine._collect(rid, engine._params(r[4])) for rid, r in zip(rids, runs)]


def _check(runs, outs) -> list[str]:
    bad = []
    for (backend, kind, name, constraint, params), out in zip(runs, outs):
        where = f"{backend} {name} T={params['temperature']}: {out['text']!r} ({out['finish_reason']})"
        if out["finish_reason"] != "stop":
            bad.append(where)
            continue
        if kind == "regex":
            if re.fullmatch(constraint, out["text"]) is None:
                bad.append(where)
            continue
        try:
            jsonschema.validate(json.loads(out["text"]), constraint)
        except (ValueError, jsonschema.ValidationError) as exc:
            bad.append(f"{where}: {str(exc).splitlines()[0]}")
    return bad


@pytest.fixture(scope="module")
def jump_engine():
    with Engine(**ENGINE, enable_mixed_chunk=False) as engine:
        yield engine


@pytest.fixture(scope="module")
def jump_outputs(jump_engine):
    return _generate_all(jump_engine, MATRIX)


def test_every_output_validates_with_jump_forward(jump_engine, jump_outputs):
    assert not _check(MATRIX, jump_outputs)
    assert jump_engine.loop.scheduler.stats.jump_forward_tokens > 100


def test_every_output_validates_without_jump_forward_under_overlap():
    with Engine(**ENGINE, disable_jump_forward=True, disable_overlap_schedule=False) as engine:
        assert engine.loop.scheduler.overlap
        outs = _generate_all(engine, MATRIX)
        assert engine.loop.scheduler.stats.jump_forward_tokens == 0
    assert not _check(MATRIX, outs)


def test_jump_forward_output_is_exact_without_the_radix_cache(jump_outputs):
    """Greedy outputs with jump-forward are the same when every re-admission recomputes its whole
    prefix (no radix cache): the KV the parked requests reuse is exact."""
    picks = [i for i, r in enumerate(MATRIX) if r[4]["temperature"] == 0 and r[2] in ("long_keys", "nested", "refs")]
    with Engine(**ENGINE, enable_mixed_chunk=False, disable_radix_cache=True) as engine:
        outs = _generate_all(engine, [MATRIX[i] for i in picks])
    assert [o["token_ids"] for o in outs] == [jump_outputs[i]["token_ids"] for i in picks]


def test_outlines_refuses_what_it_cannot_enforce(jump_engine):
    for name, keyword in OUTLINES_REFUSES.items():
        with pytest.raises(ValueError, match=f"grammar backend 'outlines' does not support .*'{keyword}'"):
            jump_engine.generate("x", {"json_schema": SCHEMAS[name], "grammar_backend": "outlines", "max_new_tokens": 4})


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance"])
def test_ebnf_arithmetic_parses(jump_engine, backend):
    outs = jump_engine.generate(["Compute:", "2+2="], {"ebnf": ARITHMETIC, "grammar_backend": backend,
                                                     "temperature": 0.8, "seed": 3, "max_new_tokens": 32})
    for out in outs:
        assert out["finish_reason"] == "stop", out
        tree = ast.parse(out["text"], mode="eval")
        assert all(isinstance(n, (ast.Expression, ast.BinOp, ast.Constant, ast.Add, ast.Sub, ast.Mult)) for n in ast.walk(tree))


def test_choices_and_ignore_eos_stop_at_termination(jump_engine):
    out = jump_engine.generate("Fruit:", {"choices": ["red apple", "green pear"], "temperature": 0,
                                          "ignore_eos": True, "max_new_tokens": 20})
    assert out["text"] in ("red apple", "green pear") and out["finish_reason"] == "stop"
