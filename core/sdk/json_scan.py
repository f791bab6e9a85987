"""Scanning the JSON of tool calls as far as a growing text goes: where values end, what a call holds.

Every function takes the text scanned so far and an index into it, and returns None where the text
ends before the answer is known (more text may settle it); malformed JSON raises ValueError.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from jackfield.sdk.markers import WHITESPACE

ARGUMENT_KEYS = ("arguments", "parameters")
LITERAL_CHARS = set("-+.0123456789eEtruefalsn")


def skip_ws(buf: str, i: int) -> int:
    while i < len(buf) and buf[i] in WHITESPACE:
        i += 1
    return i


STRING_STOP = re.compile(r'["\\]')
STRUCTURE = re.compile(r'["{}\[\]]')


class ValueScan:
    """Where the JSON string, object or array opening at `start` ends, found as the text grows.

    Resumable: each `advance` continues where the last one stopped, so a long argument value costs
    linear time over its whole stream, not a rescan per increment."""

    def __init__(self, start: int):
        self.start, self.at, self.depth, self.in_string, self.end = start, start, 0, False, None

    def advance(self, buf: str) -> int | None:
        """The end (exclusive) of the value, or None if `buf` ends first."""
        if self.end is not None:
            return self.end
        j, depth, in_string = self.at, self.depth, self.in_string
        while True:
            m = (STRING_STOP if in_string else STRUCTURE).search(buf, j)
            if m is None:
                j = len(buf)
                break
            j, c = m.start(), m.group()
            if c == "\\":
                if j + 1 >= len(buf):
                    break  # the escaped character has not come yet
                j += 2
                continue
            j += 1
            if c == '"':
                in_string = not in_string
            elif c in "{[":
                depth += 1
            else:
                depth -= 1
            if depth == 0 and not in_string:
                self.end = j
                return j
        self.at, self.depth, self.in_string = j, depth, in_string
        return None


def scan_string(buf: str, i: int) -> int | None:
    """End (exclusive) of the JSON string opening at buf[i] == '"', None if buf ends first."""
    return ValueScan(i).advance(buf)


def scan_value(buf: str, i: int, progress: dict[int, ValueScan] | None = None) -> int | None:
    """End (exclusive) of the JSON value starting at buf[i], None if buf ends first; ValueError if
    malformed. `progress` keeps the scans of strings, objects and arrays in progress by start index."""
    if buf[i] in '"{[':
        scan = ValueScan(i) if progress is None else progress.setdefault(i, ValueScan(i))
        return scan.advance(buf)
    j = i
    while j < len(buf) and buf[j] in LITERAL_CHARS:
        j += 1
    if j == i:
        raise ValueError(f"unexpected {buf[i]!r}")
    return j if j < len(buf) else None


@dataclass
class CallScan:
    """What is known of the call object opening at `start` (indices into the scanned text). Scanning
    resumes at `at` (before a key) or at the value of the `pending` pair; `values` resumes the scans
    of values in progress."""

    start: int
    at: int = -1
    name: str | None = None
    args_start: int | None = None
    args_end: int | None = None
    end: int | None = None
    pending: tuple[str, int] | None = None  # (key, value start) of the pair in progress
    values: dict[int, ValueScan] = field(default_factory=dict)


def scan_call(buf: str, scan: CallScan) -> CallScan:
    """Continue scanning the call object (buf[scan.start] == '{') as far as buf goes; ValueError if
    it is not one. Call again with the same `scan` as the text grows."""
    j = scan.at if scan.at >= 0 else scan.start + 1
    while True:
        if scan.pending is not None:
            key, j = scan.pending
        else:
            scan.at = j = skip_ws(buf, j)
            if j >= len(buf):
                return scan
            if buf[j] in "},":
                if buf[j] == "}":
                    scan.end = j + 1
                    return scan
                j += 1
                continue
            if buf[j] != '"':
                raise ValueError(f"expected a key, got {buf[j]!r}")
            key_end = scan_string(buf, j)
            if key_end is None:
                return scan
            key = json.loads(buf[j:key_end])
            j = skip_ws(buf, key_end)
            if j < len(buf) and buf[j] != ":":
                raise ValueError(f"expected ':' after key {key!r}")
            j = skip_ws(buf, j + 1)
            if j >= len(buf):
                return scan
            scan.pending = (key, j)
        value_end = scan_value(buf, j, scan.values)
        if key in ARGUMENT_KEYS:
            scan.args_start, scan.args_end = j, value_end
        if value_end is None:
            return scan
        if key == "name":
            name = json.loads(buf[j:value_end])
            if not isinstance(name, str):
                raise ValueError("the call's name is not a string")
            scan.name = name
        scan.pending, j = None, value_end


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
