"""Tool calls written as JSON objects `{"name": ..., "arguments": {...}}`: one scanner for every such format.

A format says where calls begin and end (`JsonCallFormat`); `JsonCallStream` follows a generation
through the states below, rescanning only the call in progress as text arrives:

    text  --start marker / bare '{' at the beginning-->  open  --'[' if array-->  call
    call  --the object closes-->  after  --separator or ','-->  call
    after --end marker, ']' or anything else-->  text

Arguments are streamed as the raw JSON text the model writes (their concatenation is exactly the
arguments' JSON), after the call's name. Text that turns out not to be a call (a malformed region)
is returned as plain text when none of its calls has been sent yet.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar, Sequence

from jackfield.sdk.json_scan import CallScan, arguments_text, scan_call, skip_ws
from jackfield.sdk.markers import WHITESPACE, partial_suffix
from jackfield.sdk.tool_parser import (CallDelta, ParseResult, StreamDelta, ToolCall, ToolCallParser, ToolCallStream,
                                       merge_calls)


@dataclass(frozen=True)
class JsonCallFormat:
    """Where the JSON calls of a format sit in the generated text."""

    start: str = ""
    """Text that opens a region of calls ("" : only `bare_start` opens one)."""
    end: str = ""
    """Text that closes a region ("" : the region ends with its JSON)."""
    array: bool = False
    """The region holds a JSON array of call objects."""
    separator: str = ""
    """Between call objects of one region outside an array (Llama 3: `;`)."""
    arguments_key: str = "arguments"
    """The key `format_calls` writes; both `arguments` and `parameters` are read."""
    bare_start: bool = False
    """A `{` (or `[` for an array) that begins the generation opens a region without `start`."""


class Malformed(Exception):
    """The region is not a well-formed sequence of calls."""


class JsonCallStream(ToolCallStream):
    """Incremental parse of JSON calls in the given format (see the module docstring)."""

    def __init__(self, fmt: JsonCallFormat):
        self.fmt = fmt
        self.buf = ""
        self.pos = 0                # buf[:pos] is decided
        self.state = "text"
        self.seen_text = False      # non-whitespace text came before (a bare start is then just text)
        self.region_start = 0       # where the current region began, returned as text if it is malformed
        self.region_calls = 0       # calls of the current region already sent
        self.in_array = False
        self.after_region = False   # a region just ended: skip the whitespace that follows it
        self.num_calls = 0
        self.name_sent = False      # of the call in progress
        self.args_sent = 0          # characters of its raw arguments already sent
        self.scan: CallScan | None = None  # its scan, resumed as text arrives

    def feed(self, text: str) -> StreamDelta:
        self.buf += text
        return self._advance(final=False)

    def finish(self) -> StreamDelta:
        return self._advance(final=True)

    def parse(self, text: str) -> ParseResult:
        """At once, knowing the text is complete: a call cut short is plain text, not a call."""
        self.buf += text
        delta = self._advance(final=True)
        return ParseResult(delta.text, merge_calls(delta.calls))

    def _advance(self, final: bool) -> StreamDelta:
        out = StreamDelta()
        step = {"text": self._text, "open": self._open, "call": self._call, "after": self._after}
        while True:
            try:
                if not step[self.state](out, final):
                    if self.state == "text":  # decided text is not needed again
                        self.buf, self.pos = self.buf[self.pos:], 0
                    return out
            except Malformed:
                if self.region_calls == 0 and not self.name_sent:
                    out.text += self.buf[self.region_start:self.pos]
                self.num_calls += self.name_sent  # a call already begun keeps its index
                self._end_call()
                self.state, self.seen_text = "text", True

    def _emit_text(self, out: StreamDelta, upto: int) -> None:
        piece = self.buf[self.pos:upto]
        out.text += piece
        self.seen_text = self.seen_text or bool(piece.strip(WHITESPACE))
        self.pos = upto

    def _open_region(self, at: int, skip: int) -> None:
        """A region opens at `at`; the undecided whitespace before it (from `pos`) is returned with the
        region as text if the region turns out not to be calls."""
        self.region_start, self.region_calls = self.pos, 0
        self.pos, self.state = at + skip, "open"

    def _text(self, out: StreamDelta, final: bool) -> bool:
        fmt = self.fmt
        if self.after_region:  # whitespace between a region and what follows is layout, not text
            self.pos = skip_ws(self.buf, self.pos)
            if self.pos == len(self.buf) and not final:
                return False
            self.after_region = False
        if fmt.bare_start and not self.seen_text:
            j = skip_ws(self.buf, self.pos)
            head = self.buf[j:]
            if not final and (not head or (fmt.start and fmt.start.startswith(head))):
                return False  # nothing yet, or maybe the start marker, which also opens with '['
            if head[:1] == ("[" if fmt.array else "{") and not (fmt.start and head.startswith(fmt.start)):
                self._open_region(j, 0)
                return True
        rest = self.buf[self.pos:]
        k = rest.find(fmt.start) if fmt.start else -1
        if k >= 0:
            at = self.pos + k
            self._emit_text(out, self.pos + len(rest[:k].rstrip(WHITESPACE)))
            self._open_region(at, len(fmt.start))
            return True
        upto = len(rest) - (0 if final or not fmt.start else partial_suffix(rest, fmt.start))
        if not (final and self.num_calls == 0):  # trailing whitespace waits to see what follows it
            upto = len(rest[:upto].rstrip(WHITESPACE))
        self._emit_text(out, self.pos + upto)
        if final:
            self.pos = len(self.buf)
        return False

    def _next(self, final: bool) -> int | None:
        """The next non-whitespace position, None to wait for more text; Malformed at the end."""
        j = skip_ws(self.buf, self.pos)
        if j < len(self.buf):
            return j
        if final:
            raise Malformed
        return None

    def _open(self, out: StreamDelta, final: bool) -> bool:
        j = self._next(final)
        if j is None:
            return False
        if self.fmt.array:
            if self.buf[j] != "[":
                raise Malformed
            self.pos, self.in_array = j + 1, True
        self.state = "call"
        return True

    def _call(self, out: StreamDelta, final: bool) -> bool:
        j = self._next(final)
        if j is None:
            return False
        if self.buf[j] != "{":
            raise Malformed
        try:
            scan = self.scan = scan_call(self.buf, self.scan or CallScan(j))
        except ValueError:
            raise Malformed from None
        done = scan.end is not None
        args = self.buf[scan.args_start:scan.args_end] if scan.args_start is not None and scan.args_end else None
        if not self.name_sent:
            if (final and not done) or (done and (scan.name is None or arguments_text(args) is None)):
                raise Malformed
            if scan.name is None:
                return False
            out.calls.append(CallDelta(self.num_calls, name=scan.name))
            self.name_sent = True
        if scan.args_start is not None and self.buf[scan.args_start] == "{":
            upto = scan.args_end or len(self.buf)
            piece = self.buf[scan.args_start + self.args_sent:upto]
            if piece:
                out.calls.append(CallDelta(self.num_calls, arguments=piece))
                self.args_sent += len(piece)
        if not done:
            return False
        if self.args_sent == 0:
            out.calls.append(CallDelta(self.num_calls, arguments=arguments_text(args) or "{}"))
        self.num_calls += 1
        self.region_calls += 1
        self._end_call()
        self.pos, self.state = scan.end, "after"
        return True

    def _end_call(self) -> None:
        self.name_sent, self.args_sent, self.scan = False, 0, None

    def _after(self, out: StreamDelta, final: bool) -> bool:
        fmt = self.fmt
        j = skip_ws(self.buf, self.pos)
        rest = self.buf[j:]
        if not rest:
            if final:
                self._close_region()
                return True
            return False
        if self.in_array and rest[0] in ",]":
            self.pos = j + 1
            self.in_array = rest[0] == ","
            self.state = "call" if self.in_array else "after"
            return True
        if fmt.end and rest.startswith(fmt.end):
            self.pos = j + len(fmt.end)
            self._close_region()
            return True
        if fmt.end and fmt.end.startswith(rest) and not final:
            return False
        if fmt.separator and not self.in_array and rest.startswith(fmt.separator):
            self.pos, self.state = j + len(fmt.separator), "call"
            return True
        self._close_region()
        return True

    def _close_region(self) -> None:
        self.state, self.in_array, self.after_region = "text", False, True


class JsonToolCallParser(ToolCallParser):
    """A parser of JSON calls: set `format`; streaming, parsing and formatting follow from it."""

    format: ClassVar[JsonCallFormat] = JsonCallFormat()

    def stream(self) -> ToolCallStream:
        return JsonCallStream(self.format)

    def call_json(self, call: ToolCall) -> str:
        """One call as the object `{"name": ..., key: args}`, its arguments' JSON text kept as is."""
        name, key = json.dumps(call.name, ensure_ascii=False), json.dumps(self.format.arguments_key)
        return f'{{"name": {name}, {key}: {call.arguments}}}'

    def format_calls(self, calls: Sequence[ToolCall]) -> str:
        """Each call wrapped in `start`/`end` when the format has an end marker, else one region:
        `start`, then an array of the calls or the calls joined by `separator`. Override for a
        format whose model writes calls differently."""
        fmt, objects = self.format, [self.call_json(c) for c in calls]
        if fmt.end:
            return "\n".join(f"{fmt.start}\n{o}\n{fmt.end}" for o in objects)
        body = "[" + ", ".join(objects) + "]" if fmt.array else f"{fmt.separator} ".join(objects)
        return f"{fmt.start} {body}" if fmt.start else body
