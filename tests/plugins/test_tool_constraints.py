"""The JSON schema of a constrained tool call (`tool_choice` required or a named function), compiled
by every grammar backend: seeded random walks through the grammar over the kit's synthetic
vocabulary give texts that validate against the schema, and the constrained stream parses each into
calls whose arguments validate against their tool's own parameters (`$defs`, draft-7
`definitions` and references into the tool's own properties included)."""
from __future__ import annotations

import json
import random

import jsonschema
import pytest

from jackfield.plugins import load_plugins
from jackfield.registry import build_registry
from jackfield.sdk import GrammarSpec, Tool
from jackfield.testing.suites.grammar import EOS, TOKENS, current_mask, synthetic_vocab
from jackfield_plugins.parsers.hermes import HermesParser
from jackfield_plugins.parsers.llama3 import Llama3JsonParser

REGISTRY = build_registry(*load_plugins())
TOOLS = [  # keywords every backend enforces; strings and arrays bounded so that walks end
    Tool("book", "", {"type": "object", "additionalProperties": False, "required": ["city", "nights"],
                      "properties": {"city": {"enum": ["Paris", "Oslo"]}, "nights": {"type": "integer"},
                                     "late": {"type": "boolean"}}}),
    Tool("tag", "", {"type": "object", "required": ["tags"], "$defs": {"t": {"type": "string", "maxLength": 3}},
                     "properties": {"tags": {"type": "array", "items": {"$ref": "#/$defs/t"}, "maxItems": 2}}}),
    Tool("move", "", {"type": "object", "required": ["src", "dst"], "definitions": {"at": {"enum": ["a", "b"]}},
                      "properties": {"src": {"$ref": "#/definitions/at"}, "dst": {"$ref": "#/properties/src"}}}),
]
PARAMETERS = {t.name: t.parameters for t in TOOLS}
CHOICES = [("book", False), (None, False), (None, True)]  # a named function, required, required + parallel
MAX_STEPS = 400


def grammar_backends() -> list:
    return [info.cls for info in REGISTRY.of_kind("grammar")]


def walk(grammar, rng: random.Random) -> str:
    """Random allowed tokens, EOS as soon as it is allowed, `}` and `]` preferred half the time."""
    out = b""
    for _ in range(MAX_STEPS):
        allowed = sorted(current_mask(grammar))
        assert allowed, f"nothing allowed after {out!r}"
        closing = [i for i in allowed if TOKENS[i] in (b"}", b"]", b'"')]
        token = EOS if EOS in allowed else rng.choice(closing if closing and rng.random() < 0.5 else allowed)
        assert grammar.accept_token(token)
        if token == EOS:
            return out.decode()
        out += TOKENS[token]
    raise AssertionError(f"no end within {MAX_STEPS} steps: {out!r}")


@pytest.mark.parametrize("backend", grammar_backends(), ids=lambda c: c.name)
@pytest.mark.parametrize("parser", [HermesParser, Llama3JsonParser], ids=lambda c: c.name)
def test_constrained_calls_validate_on_every_backend(backend, parser):
    if not (available := backend.availability()).ok:
        pytest.skip(f"{backend.name}: {available.reason}")
    compiler = backend(synthetic_vocab())
    for name, parallel in CHOICES:
        schema = parser(TOOLS).constraint_schema(name, parallel)
        grammar = compiler.compile(GrammarSpec("json_schema", json.dumps(schema)))
        for seed in range(3):
            text = walk(grammar.copy(), random.Random(seed))
            jsonschema.validate(json.loads(text), schema)
            calls = parser(TOOLS).constrained_stream(parallel).parse(text).calls
            assert calls and (parallel or len(calls) == 1), text
            for call in calls:
                assert name in (None, call.name), text
                jsonschema.validate(json.loads(call.arguments), PARAMETERS[call.name])
