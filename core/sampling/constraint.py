"""Structured-output constraints as sampling parameters: their kinds and the request-side helpers.

A constraint is one of `json_schema` (a JSON Schema, as JSON text), `regex` or `ebnf` (a GBNF-style
grammar, `root ::= ...`). `choices` (SGLang's select among strings) is turned into the regex that
matches exactly one of the strings; `json_object` (OpenAI's and Ollama's "any JSON object") into
the schema ANY_JSON_OBJECT.
"""
from __future__ import annotations

import json
from typing import Any

CONSTRAINT_KINDS = ("json_schema", "regex", "ebnf")
ANY_JSON_OBJECT = '{"type": "object"}'
REGEX_SPECIAL = set("\\.^$|?*+()[]{}/")


def _error(param: str, message: str):
    from jackfield.sampling.params import SamplingParamError

    return SamplingParamError(param, message)


def regex_literal(text: str) -> str:
    """`text` as a regex that matches exactly it: only the metacharacters every backend's regex
    dialect knows are escaped (Python's re.escape also escapes characters some engines reject)."""
    return "".join("\\" + c if c in REGEX_SPECIAL else c for c in text)


def choices_constraint(choices: Any, regex: str | None) -> str:
    """The regex matching exactly one of `choices` (a non-empty list of non-empty strings)."""
    if regex is not None:
        raise _error("choices", "give at most one constraint; got both regex and choices")
    if (not isinstance(choices, (list, tuple)) or not choices
            or not all(isinstance(c, str) and c for c in choices)):
        raise _error("choices", f"choices must be a non-empty list of non-empty strings, got {choices!r}")
    return "(" + "|".join(regex_literal(c) for c in dict.fromkeys(choices)) + ")"


def json_schema_text(value: Any) -> str:
    """A JSON schema given as text or as an object, as JSON text (objects are serialized)."""
    if isinstance(value, (dict, bool)):
        return json.dumps(value)
    if not isinstance(value, str):
        raise _error("json_schema", f"json_schema must be a JSON schema (an object or its JSON text), got {value!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise _error("json_schema", f"json_schema is not valid JSON: {exc}") from None
    if not isinstance(parsed, (dict, bool)):
        raise _error("json_schema", f"json_schema must be a JSON object, got {value!r}")
    return value
