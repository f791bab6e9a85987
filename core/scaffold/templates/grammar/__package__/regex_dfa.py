"""A small regex engine: pattern -> syntax tree -> NFA over bytes -> DFA, built lazily.

Syntax: literal characters and escaped metacharacters (`\\.`), `\\n \\t \\r \\f \\v \\xHH`, the classes
`\\d \\w \\s \\D \\W \\S`, `.` (any character but newline), `[a-z_]` and `[^"]`, groups `( )`,
`(?: )` and `(?P<name> )`, alternation `|`, the quantifiers `* + ?`, `{m}`, `{m,}`, `{m,n}`
(a lazy `?` after them changes nothing: a constraint has no preference), and `^` / `$` at the
ends of the pattern. A match is always a full match. Classes, `.` and the class escapes range over
ASCII; a literal non-ASCII character matches its UTF-8 bytes. Backreferences, lookaround,
anchors inside the pattern and non-ASCII class members raise `RegexUnsupported`; malformed
patterns raise `RegexError`.

The DFA's states are numbered; `step(state, byte)` computes (and caches) a transition on first
use, -1 being the dead state. Every state but the dead one can still reach a match: no syntax
here builds a path that cannot be completed (an empty class is an error).
"""
from __future__ import annotations

import re

ASCII = frozenset(range(128))
DIGIT = frozenset(b"0123456789")
WORD = DIGIT | frozenset(b"_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
SPACE = frozenset(b" \t\n\r\f\v")
CLASS_ESCAPES = {"d": DIGIT, "w": WORD, "s": SPACE, "D": ASCII - DIGIT, "W": ASCII - WORD, "S": ASCII - SPACE}
CHAR_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v"}
MAX_NFA_STATES = 200_000  # bounded repeats are unrolled: a{1000000} is refused, not built
DEAD = -1
BOUNDS = re.compile(r"\{(\d*)(,?)(\d*)\}")


class RegexError(ValueError):
    """The pattern is not a valid regex; the message says where."""


class RegexUnsupported(RegexError):
    """The pattern uses a feature this engine does not implement; the message names it."""


def parse(pattern: str):
    """The syntax tree of `pattern`: ("set", bytes) | ("cat", nodes) | ("alt", nodes) | ("rep", node, lo, hi)."""
    return _Parser(pattern).parse()


class _Parser:
    def __init__(self, pattern: str):
        self.p, self.i = pattern, 0

    def parse(self):
        if self.p.startswith("^"):
            self.i = 1
        node = self.alternation(depth=0)
        if self.i < len(self.p):
            raise RegexError(f"unbalanced parenthesis at position {self.i}")
        return node

    def peek(self) -> str:
        return self.p[self.i] if self.i < len(self.p) else ""

    def take(self) -> str:
        if self.i >= len(self.p):
            raise RegexError("the pattern ends too early")
        self.i += 1
        return self.p[self.i - 1]

    def alternation(self, depth: int):
        options = [self.sequence(depth)]
        while self.peek() == "|":
            self.i += 1
            options.append(self.sequence(depth))
        return options[0] if len(options) == 1 else ("alt", tuple(options))

    def sequence(self, depth: int):
        items = []
        while self.peek() not in ("", "|", ")"):
            if self.peek() == "$" and depth == 0 and self.i == len(self.p) - 1:
                self.i += 1  # the end anchor: every match is a full match anyway
                break
            atom = self.atom(depth)
            items.append(self.quantified(atom))
        return items[0] if len(items) == 1 else ("cat", tuple(items))

    def atom(self, depth: int):
        start, c = self.i, self.take()
        if c == "(":
            if self.p.startswith("?:", self.i):
                self.i += 2
            elif self.p.startswith("?P<", self.i):
                self.i = self.p.index(">", self.i) + 1 if ">" in self.p[self.i:] else len(self.p)
            elif self.peek() == "?":
                raise RegexUnsupported(f"the group syntax '(?{self.p[self.i + 1:self.i + 2]}' (lookaround, flags "
                                       f"or backreferences) at position {start}")
            node = self.alternation(depth + 1)
            if self.peek() != ")":
                raise RegexError(f"missing ), unterminated subpattern at position {start}")
            self.i += 1
            return node
        if c == "[":
            return ("set", self.char_class(start))
        if c == ".":
            return ("set", ASCII - {ord("\n")})
        if c == "\\":
            return self.escape(start)
        if c in "*+?":
            raise RegexError(f"nothing to repeat at position {start}")
        if c in "^$":
            raise RegexUnsupported(f"the anchor '{c}' inside the pattern (position {start})")
        return literal(c)

    def escape(self, start: int):
        found = self.escaped(start)
        return ("set", found) if isinstance(found, frozenset) else literal(found)

    def escaped(self, start: int) -> str | frozenset[int]:
        """The character (or class) after a backslash."""
        c = self.take()
        if c in CLASS_ESCAPES:
            return CLASS_ESCAPES[c]
        if c == "x":
            digits = self.p[self.i:self.i + 2]
            if not re.fullmatch(r"[0-9a-fA-F]{2}", digits):
                raise RegexError(f"incomplete escape \\x{digits} at position {start}")
            self.i += 2
            return chr(int(digits, 16))
        if c in CHAR_ESCAPES:
            return CHAR_ESCAPES[c]
        if c.isdigit():
            raise RegexUnsupported(f"backreferences and octal escapes (\\{c} at position {start})")
        if c.isalnum():
            raise RegexUnsupported(f"the escape \\{c} (position {start})")
        return c

    def char_class(self, start: int) -> frozenset[int]:
        negate = self.peek() == "^"
        self.i += negate
        members: set[int] = set()
        first = True
        while first or self.peek() != "]":
            if self.i >= len(self.p):
                raise RegexError(f"unterminated character set at position {start}")
            lo = self.class_member()
            first = False
            if isinstance(lo, frozenset):
                members |= lo
            elif self.peek() == "-" and self.p[self.i + 1:self.i + 2] not in ("]", ""):
                self.i += 1
                hi = self.class_member()
                if isinstance(hi, frozenset) or hi < lo:
                    raise RegexError(f"bad character range at position {start}")
                members |= set(range(lo, hi + 1))
            else:
                members.add(lo)
        self.i += 1
        found = frozenset(ASCII - members if negate else members)
        if not found:
            raise RegexError(f"the character set at position {start} matches nothing")
        return found

    def class_member(self) -> int | frozenset[int]:
        start, c = self.i, self.take()
        if c == "\\":
            c = self.escaped(start)
            if isinstance(c, frozenset):
                return c
        if ord(c) > 127:
            raise RegexUnsupported(f"non-ASCII characters in character sets ({c!r})")
        return ord(c)

    def quantified(self, atom):
        c, start = self.peek(), self.i
        if c in ("*", "+", "?"):
            self.i += 1
            lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
        elif c == "{" and (bounds := self.bounds()) is not None:
            lo, hi = bounds
        else:
            return atom
        if self.peek() == "?":
            self.i += 1  # lazy: the same set of strings
        if self.peek() in ("*", "+", "?") or (self.peek() == "{" and self.bounds(look=True) is not None):
            raise RegexError(f"multiple repeat at position {self.i}")
        if hi is not None and hi < lo:
            raise RegexError(f"min repeat greater than max repeat at position {start}")
        return ("rep", atom, lo, hi)

    def bounds(self, look: bool = False) -> tuple[int, int | None] | None:
        """`{m}`, `{m,}`, `{,n}` or `{m,n}` at the cursor (consumed unless `look`) as (min, max or
        None); None when the brace starts no quantifier (it is then a literal, as in Python)."""
        m = BOUNDS.match(self.p, self.i)
        if m is None or not (m.group(1) or m.group(2)):  # "{}" is a literal too
            return None
        if not look:
            self.i = m.end()
        lo, comma, hi = m.groups()
        return int(lo or 0), (int(hi) if hi else None) if comma else int(lo)


def literal(c: str):
    data = c.encode("utf-8")
    return ("set", frozenset(data)) if len(data) == 1 else ("cat", tuple(("set", frozenset([b])) for b in data))


class DFA:
    """The automaton of one pattern. Not thread-safe: one thread steps it at a time."""

    def __init__(self, tree):
        self.edges: list[list[tuple[frozenset[int], int]]] = []
        self.eps: list[list[int]] = []
        begin = self._new()
        self.accept = self._build(tree, begin)
        self.sets: list[frozenset[int]] = []
        self.index: dict[frozenset[int], int] = {}
        self.next: list[dict[int, int]] = []
        self.start = self._intern(self._closure([begin]))

    def step(self, state: int, byte: int) -> int:
        """The state after `byte`, or DEAD."""
        nxt = self.next[state]
        target = nxt.get(byte)
        if target is None:
            moved = [dst for s in self.sets[state] for members, dst in self.edges[s] if byte in members]
            target = nxt[byte] = self._intern(self._closure(moved)) if moved else DEAD
        return target

    def accepting(self, state: int) -> bool:
        return self.accept in self.sets[state]

    def live_bytes(self, state: int) -> list[int]:
        """The bytes that do not lead to the dead state."""
        return [b for b in range(256) if self.step(state, b) != DEAD]

    # ---- construction ---------------------------------------------------------------------------
    def _new(self) -> int:
        if len(self.edges) >= MAX_NFA_STATES:
            raise RegexUnsupported(f"patterns this large (over {MAX_NFA_STATES} automaton states)")
        self.edges.append([])
        self.eps.append([])
        return len(self.edges) - 1

    def _build(self, node, start: int) -> int:
        """Add `node` to the NFA from `start`; returns its end state (Thompson's construction)."""
        kind = node[0]
        if kind == "set":
            end = self._new()
            self.edges[start].append((node[1], end))
            return end
        if kind == "cat":
            for child in node[1]:
                start = self._build(child, start)
            return start
        if kind == "alt":
            end = self._new()
            for child in node[1]:
                self.eps[self._build(child, start)].append(end)
            return end
        _, child, lo, hi = node
        for _ in range(lo):
            start = self._build(child, start)
        if hi is None:  # a loop: start -> body -> start
            loop = self._new()
            self.eps[start].append(loop)
            self.eps[self._build(child, loop)].append(loop)
            return loop
        for _ in range(hi - lo):  # each further copy may be skipped
            end = self._new()
            self.eps[start].append(end)
            self.eps[self._build(child, start)].append(end)
            start = end
        return start

    def _closure(self, states) -> frozenset[int]:
        seen, stack = set(states), list(states)
        while stack:
            for nxt in self.eps[stack.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return frozenset(seen)

    def _intern(self, states: frozenset[int]) -> int:
        found = self.index.get(states)
        if found is None:
            found = self.index[states] = len(self.sets)
            self.sets.append(states)
            self.next.append({})
        return found
