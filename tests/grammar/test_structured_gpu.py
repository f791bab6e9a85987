"""Constrained generation on CUDA (SmolLM2): the Triton bitmask kernel inside the sampler, delayed
sampling through the stream launcher (overlap, the default on CUDA), CUDA graphs and jump-forward;
every output validates, with overlap on and off."""
from __future__ import annotations

import json
import re

import jsonschema
import pytest

from cases import REGEXES, SCHEMAS

pytestmark = pytest.mark.gpu
PICK = ("flat", "nested", "refs", "long_keys", "bounded_int", "enum_pair")


@pytest.mark.parametrize("overlap", [True, False])
def test_constrained_generation_on_cuda(overlap):
    from jackfield.engine import Engine

    with Engine(device="cuda", disable_overlap_schedule=not overlap, max_running_requests=64) as engine:
        assert engine.loop.scheduler.overlap == overlap
        runs = [({"json_schema": SCHEMAS[n]}, SCHEMAS[n]) for n in PICK] + [({"regex": rx}, rx) for rx in REGEXES]
        for backend in ("xgrammar", "llguidance"):
            for temperature in (0.0, 0.8):
                params = [{**c, "grammar_backend": backend, "temperature": temperature, "seed": 5,
                           "max_new_tokens": 64} for c, _ in runs]
                rids = [engine._submit(engine._encode("Reply:"), engine._params(p)) for p in params]
                outs = [engine._collect(rid, engine._params(p)) for rid, p in zip(rids, params)]
                for (_, constraint), out in zip(runs, outs):
                    assert out["finish_reason"] == "stop", (backend, constraint, out)
                    if isinstance(constraint, str):
                        assert re.fullmatch(constraint, out["text"]), (backend, constraint, out["text"])
                    else:
                        jsonschema.validate(json.loads(out["text"]), constraint)
