"""Scanning the JSON of tool calls as far as a growing text goes: where values end, what a call holds.

Every function takes the text scanned so far and an index into it, and returns None where the text
ends before the answer is known (more text may settle it); malformed JSON raises ValueError.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from jackfield.sdk.markers import WHITESPACE

ARGUMENT_KEYS = ("arguments", "parameters")
LITERAL_CHARS = set("-+.0123456789eEtruefalsn")


def skip_ws(buf: str, i: int) -> int:
    while i < len(buf) and buf[i] in WHITESPACE:
        i += 1
    return i


def scan_string(buf: str, i: int) -> int | None:
    """End (exclusive) of the JSON string opening at buf[i] == '"', None if buf ends first."""
    j = i + 1
    while j < len(buf):
        c = buf[j]
        if c == "\\":
            j += 2
            continue
        if c == '"':
            return j + 1
        j += 1
    return None


def scan_value(buf: str, i: int) -> int | None:
    """End (exclusive) of the JSON value starting at buf[i], None if buf ends first; ValueError if malformed."""
    c = buf[i]
    if c == '"':
        return scan_string(buf, i)
    if c in "{[":
        depth, j = 0, i
        while j < len(buf):
            c = buf[j]
            if c == '"':
                end = scan_string(buf, j)
                if end is None:
                    return None
                j = end
                continue
            if c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    return j + 1
            j += 1
        return None
    j = i
    while j < len(buf) and buf[j] in LITERAL_CHARS:
        j += 1
    if j == i:
        raise ValueError(f"unexpected {c!r}")
    return j if j < len(buf) else None


@dataclass
class CallScan:
    """What is known of a call object so far (indices into the scanned buffer)."""

    name: str | None = None
    args_start: int | None = None
    args_end: int | None = None
    end: int | None = None


def scan_call(buf: str, i: int) -> CallScan:
    """Scan the call object opening at buf[i] == '{' as far as buf goes; ValueError if it is not one."""
    scan, j = CallScan(), i + 1
    while True:
        j = skip_ws(buf, j)
        if j >= len(buf):
            return scan
        if buf[j] == "}":
            scan.end = j + 1
            return scan
        if buf[j] == ",":
            j += 1
            continue
        if buf[j] != '"':
            raise ValueError(f"expected a key, got {buf[j]!r}")
        key_end = scan_string(buf, j)
        if key_end is None:
            return scan
        key = json.loads(buf[j:key_end])
        j = skip_ws(buf, key_end)
        if j >= len(buf):
            return scan
        if buf[j] != ":":
            raise ValueError(f"expected ':' after key {key!r}")
        j = skip_ws(buf, j + 1)
        if j >= len(buf):
            return scan
        value_end = scan_value(buf, j)
        if key in ARGUMENT_KEYS:
            scan.args_start, scan.args_end = j, value_end
        if value_end is None:
            return scan
        if key == "name":
            name = json.loads(buf[j:value_end])
            if not isinstance(name, str):
                raise ValueError("the call's name is not a string")
            scan.name = name
        j = value_end


def arguments_text(raw: str | None) -> str | None:
    """A complete arguments value as JSON text of an object; None if it is not one."""
    if raw is None:
        return "{}"
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return None
    if isinstance(value, str):  # arguments given as a JSON string holding the object
        try:
            value, raw = json.loads(value), value
        except json.JSONDecodeError:
            return None
    if value is None:
        return "{}"
    return raw if isinstance(value, dict) else None
