"""The grammar suite: a GrammarBackend over a small synthetic vocabulary, against a reference.

The vocabulary (`synthetic_vocab`) has one token per printable ASCII character, a few multi-byte
tokens (`{"`, `true`, `abc`, …), a special token that spells nothing, one EOS id, and logits wider
than the tokens. The reference matcher for regexes is the `regex` package's partial full-match: a
token is allowed after text `s` when `s + token` can still be completed to a full match, EOS when
`s` is one. A backend may allow fewer tokens than the reference (llguidance keeps forced text to
its canonical tokens) but never one it forbids. Checks walk seeded random paths through each constraint, comparing the backend's mask
with the reference at every step; JSON-schema walks must produce documents that validate.
"""
from __future__ import annotations

import json
import random
import re

import torch

from jackfield.sdk.grammar import (Grammar, GrammarBackend, GrammarError, GrammarSpec, GrammarVocab, UnsupportedGrammar,
                                   allocate_bitmask)
from jackfield.testing.kit import Check, KitFailure, KitTarget, expect
from jackfield.testing.suites.common import runs_on_device

EOS = 0
SPECIAL = 1
MULTI = [b'{"', b'":', b'", "', b'"}', b'true', b'false', b'null', b'ab', b'abc', b'12', b'name', b' "', b'-1', b'yes']
TOKENS = (b"", b"") + tuple(bytes([c]) for c in range(32, 127)) + tuple(MULTI)
VOCAB_SIZE = len(TOKENS) + 7  # logits wider than the tokenizer: the extra ids are never allowed
REGEXES = [r"[a-c]+", r"(yes|no|maybe)", r"[0-9]{2,3}-[a-z]{1,2}", r"abc(d|e)f?", r"\"[a-z ]{0,6}\"",
           r"(ab)*c", r"-?[1-9][0-9]{0,2}(\.[0-9])?"]
SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 4}, "ok": {"type": "boolean"}},
     "required": ["name", "ok"]},
    {"type": "array", "items": {"enum": ["a", "b", 12]}, "minItems": 1, "maxItems": 3},
    {"type": "object", "properties": {"tag": {"$ref": "#/$defs/tag"}, "n": {"type": "null"}}, "required": ["tag"],
     "$defs": {"tag": {"type": "string", "pattern": "^[a-c]{1,3}$"}}},
]
ROLLBACK_REGEX, ROLLBACK_TEXT = r"abc-(yes|no)", "abc-yes"
ARITHMETIC = 'root ::= expr\nexpr ::= term (("+" | "-") term)*\nterm ::= num | "(" expr ")"\nnum ::= [1-9] [0-9]?\n'
MAX_STEPS = 200


def greedy_encode(text: str) -> list[int]:
    """Longest-match tokenization over TOKENS (the synthetic vocabulary's tokenizer)."""
    data, ids = text.encode(), []
    by_bytes = {t: i for i, t in enumerate(TOKENS) if t}
    while data:
        n = max(k for k in range(1, len(data) + 1) if data[:k] in by_bytes)
        ids.append(by_bytes[data[:n]])
        data = data[n:]
    return ids


def synthetic_vocab() -> GrammarVocab:
    return GrammarVocab(TOKENS, VOCAB_SIZE, (EOS,), encode=greedy_encode)


def mask_ids(bitmask: torch.Tensor, row: int = 0) -> set[int]:
    """The allowed token ids of one bitmask row (ids below VOCAB_SIZE)."""
    bits = (bitmask[row].unsqueeze(1) >> torch.arange(32, dtype=torch.int32)) & 1
    return set(bits.flatten()[:VOCAB_SIZE].nonzero().flatten().tolist())


def current_mask(grammar: Grammar) -> set[int]:
    bitmask = allocate_bitmask(1, VOCAB_SIZE)
    grammar.fill_bitmask(bitmask, 0)
    return mask_ids(bitmask)


def reference_mask(pattern: str, text: str) -> set[int]:
    import regex

    compiled = regex.compile(pattern)
    allowed = {i for i, t in enumerate(TOKENS) if t and compiled.fullmatch(text + t.decode(), partial=True)}
    return allowed | ({EOS} if re.fullmatch(pattern, text) else set())


def reference_forced(pattern: str, text: str) -> str:
    """The text the regex forces after `text`: one character at a time while exactly one fits."""
    import regex

    compiled, forced = regex.compile(pattern), ""
    while not re.fullmatch(pattern, text + forced):
        fits = [chr(c) for c in range(32, 127) if compiled.fullmatch(text + forced + chr(c), partial=True)]
        if len(fits) != 1:
            break
        forced += fits[0]
    return forced


def _backend(t: KitTarget) -> GrammarBackend:
    return t.cls(synthetic_vocab())


def _compile(backend: GrammarBackend, kind: str, value: str) -> Grammar:
    try:
        return backend.compile(GrammarSpec(kind, value))
    except GrammarError as exc:
        raise KitFailure(f"compiling the {kind} {value!r} failed: {exc}") from None


def _supports(kind: str):
    def requires(t: KitTarget) -> str | None:
        why = runs_on_device(t)
        if why:
            return why
        try:
            _backend(t).compile(GrammarSpec(kind, {"json_schema": "{}", "regex": "a", "ebnf": 'root ::= "a"'}[kind]))
        except UnsupportedGrammar as exc:
            return str(exc)
        return None
    return requires


def _walk(grammar: Grammar, rng: random.Random, on_step=None) -> list[int]:
    """Accept random allowed tokens (EOS as soon as it is allowed) until the grammar terminates."""
    path = []
    for _ in range(MAX_STEPS):
        allowed = current_mask(grammar)
        if on_step is not None:
            on_step(path, allowed)
        expect(allowed, f"nothing is allowed after {_text(path)!r} and the grammar has not terminated")
        token = EOS if EOS in allowed else rng.choice(sorted(allowed))
        expect(grammar.accept_token(token), f"token {token} ({TOKENS[token]!r}) was in the mask but accept_token "
                                            f"refused it after {_text(path)!r}")
        path.append(token)
        if token == EOS:
            expect(grammar.is_terminated(), "accepting EOS did not terminate the grammar")
            return path[:-1]
    raise KitFailure(f"no EOS within {MAX_STEPS} random steps: {_text(path)!r}")


def _text(path: list[int]) -> str:
    return b"".join(TOKENS[i] for i in path).decode(errors="replace")


def _regex_masks(t: KitTarget) -> None:
    backend = _backend(t)
    for n, pattern in enumerate(REGEXES):
        def check(path, allowed, pattern=pattern):
            want, where = reference_mask(pattern, _text(path)), f"regex {pattern!r} after {_text(path)!r}"
            expect(allowed <= want, f"{where}: the mask allows {_names(allowed - want)}, which the regex forbids")
            expect((EOS in allowed) == (EOS in want), f"{where}: EOS is {'' if EOS in allowed else 'not '}allowed")
            expect(len(allowed) > (EOS in allowed) or len(want) == (EOS in want),
                   f"{where}: the mask allows no text token but the regex can go on with {_names(want - {EOS})}")
        for seed in range(3):
            _walk(_compile(backend, "regex", pattern), random.Random(seed * 31 + n), check)


def _names(ids: set[int]) -> str:
    return "{" + ", ".join(repr(TOKENS[i]) if TOKENS[i] else f"#{i}" for i in sorted(ids)[:8]) + \
        (", …" if len(ids) > 8 else "") + "}"


def _jump_forward(t: KitTarget) -> None:
    backend = _backend(t)
    for n, pattern in enumerate(REGEXES):
        grammar = _compile(backend, "regex", pattern)
        rng, path = random.Random(n), []
        while not grammar.is_terminated():
            expect(len(path) < MAX_STEPS, f"regex {pattern!r}: not terminated after {MAX_STEPS} steps")
            forced, want = grammar.jump_forward_string(), reference_forced(pattern, _text(path))
            expect(want.startswith(forced), f"regex {pattern!r} after {_text(path)!r}: jump-forward string "
                                            f"{forced!r} is not forced (the constraint forces only {want!r})")
            allowed = current_mask(grammar)
            token = EOS if EOS in allowed else rng.choice(sorted(allowed))
            expect(grammar.accept_token(token), f"token {TOKENS[token]!r} in the mask was refused")
            path.append(token)


def _rollback(t: KitTarget) -> None:
    backend = _backend(t)
    grammar = _compile(backend, "regex", ROLLBACK_REGEX)
    path = [TOKENS.index(bytes([c])) for c in ROLLBACK_TEXT.encode()]  # one character a token: every mask differs
    masks = [current_mask(grammar)]
    for token in path:
        expect(grammar.accept_token(token), f"{TOKENS[token]!r} refused")
        masks.append(current_mask(grammar))
    for k in (1, 2, 3):
        grammar.rollback(k)
        expect(current_mask(grammar) == masks[len(path) - k], f"after advancing {len(path)} tokens and rolling "
                                                              f"back {k}, the mask differs from the one {k} back")
        for token in path[len(path) - k:]:
            grammar.accept_token(token)
    grammar.rollback(len(path))
    expect(current_mask(grammar) == masks[0], "rolling back every token does not restore the start mask")
    for token in path:
        grammar.accept_token(token)
    expect(grammar.accept_token(EOS) and grammar.is_terminated(), "EOS after a full match did not terminate")
    grammar.rollback(1)
    expect(not grammar.is_terminated(), "rolling back the EOS left the grammar terminated")
    expect(current_mask(grammar) == {EOS}, f"after rolling back the EOS of {ROLLBACK_TEXT!r} only EOS should be "
                                           "allowed")
    grammar.accept_token(EOS)
    grammar.rollback(3)
    expect(current_mask(grammar) == masks[len(path) - 2], "rolling back an EOS and two tokens does not restore the "
                                                          "mask two tokens back")


def _termination_and_rejection(t: KitTarget) -> None:
    grammar = _compile(_backend(t), "regex", r"(yes|no)")
    before = current_mask(grammar)
    expect(SPECIAL not in before and not any(i >= len(TOKENS) for i in before),
           "special tokens (which spell nothing) or ids past the tokenizer's vocabulary are allowed")
    expect(not grammar.accept_token(greedy_encode("x")[0]), "accept_token took 'x', which (yes|no) forbids")
    expect(not grammar.accept_token(EOS), "accept_token took EOS before anything matched")
    expect(current_mask(grammar) == before, "a refused token changed the mask")
    for token in greedy_encode("yes"):
        expect(grammar.accept_token(token), "'yes' refused after a refused token")
    expect(not grammar.is_terminated(), "terminated before EOS")
    expect(current_mask(grammar) == {EOS}, "after a complete 'yes' only EOS should be allowed")
    expect(grammar.accept_token(EOS) and grammar.is_terminated(), "EOS did not terminate the grammar")
    expect(not grammar.accept_token(greedy_encode("y")[0]), "a token after termination was accepted")


def _copy_and_rows(t: KitTarget) -> None:
    grammar = _compile(_backend(t), "regex", r"abc(d|e)f?")
    start = current_mask(grammar)
    grammar.accept_token(greedy_encode("a")[0])
    fresh = grammar.copy()
    expect(current_mask(fresh) == start, "copy() is not in the start state")
    fresh.accept_token(greedy_encode("abc")[0])
    expect(current_mask(grammar) == reference_mask(r"abc(d|e)f?", "a"), "advancing a copy changed the original")
    bitmask = torch.full((3, allocate_bitmask(1, VOCAB_SIZE).shape[1]), 0x5A5A5A5A, dtype=torch.int32)
    grammar.fill_bitmask(bitmask, 1)
    expect(bitmask.dtype == torch.int32 and bitmask.shape[0] == 3, "fill_bitmask changed the bitmask's shape or dtype")
    expect(bool((bitmask[0] == 0x5A5A5A5A).all() and (bitmask[2] == 0x5A5A5A5A).all()),
           "fill_bitmask wrote outside its row")
    expect(mask_ids(bitmask, 1) == reference_mask(r"abc(d|e)f?", "a"), "fill_bitmask into row 1 differs from row 0")


def _json_schemas(t: KitTarget) -> None:
    import jsonschema

    backend = _backend(t)
    for n, schema in enumerate(SCHEMAS):
        for seed in range(4):
            text = _text(_walk(_compile(backend, "json_schema", json.dumps(schema)), random.Random(seed + 10 * n)))
            try:
                jsonschema.validate(json.loads(text), schema)
            except (ValueError, jsonschema.ValidationError) as exc:
                raise KitFailure(f"schema {json.dumps(schema)} produced {text!r}, which does not validate: "
                                 f"{str(exc).splitlines()[0]}") from None


def _needs_jsonschema(t: KitTarget) -> str | None:
    import importlib.util

    if importlib.util.find_spec("jsonschema") is None:
        return "the jsonschema package is not installed (pip install jsonschema)"
    return _supports("json_schema")(t)


def _ebnf(t: KitTarget) -> None:
    import ast

    backend = _backend(t)
    for seed in range(6):
        text = _text(_walk(_compile(backend, "ebnf", ARITHMETIC), random.Random(seed)))
        try:
            tree = ast.parse(text, mode="eval")
        except SyntaxError as exc:
            raise KitFailure(f"the arithmetic grammar produced {text!r}, which does not parse: {exc}") from None
        allowed = (ast.Expression, ast.BinOp, ast.Constant, ast.Add, ast.Sub)
        expect(all(isinstance(node, allowed) for node in ast.walk(tree)), f"{text!r} is not an arithmetic expression")


def _invalid(t: KitTarget) -> None:
    backend = _backend(t)
    bad = [("regex", "(ab"), ("json_schema", '{"type": 5}'), ("ebnf", "root ::= undefined_rule")]
    for kind, value in bad:
        try:
            backend.compile(GrammarSpec(kind, value))
        except UnsupportedGrammar as exc:
            expect(backend.name in str(exc), f"UnsupportedGrammar for {kind} does not name the backend: {exc}")
        except GrammarError as exc:
            expect(str(exc).strip() != "", f"the GrammarError for the invalid {kind} {value!r} has no message")
        except Exception as exc:
            raise KitFailure(f"the invalid {kind} {value!r} raised {type(exc).__name__} ({exc}), not GrammarError")
        else:
            raise KitFailure(f"the invalid {kind} {value!r} compiled without an error")


def checks(target: KitTarget) -> list[Check]:
    return [
        Check("regex masks allow nothing the reference forbids, EOS exactly where it does, and never block",
              _regex_masks, _supports("regex")),
        Check("accepting EOS terminates; refused tokens return False and change nothing; specials never allowed",
              _termination_and_rejection, _supports("regex")),
        Check("rollback(k) after k tokens restores the mask, termination included", _rollback, _supports("regex")),
        Check("copy() starts fresh and is independent; fill_bitmask writes only its int32 row", _copy_and_rows,
              _supports("regex")),
        Check("jump_forward_string forces only what the constraint forces", _jump_forward, _supports("regex")),
        Check("random walks through JSON schemas produce documents that validate", _json_schemas, _needs_jsonschema),
        Check("random walks through an EBNF arithmetic grammar parse", _ebnf, _supports("ebnf")),
        Check("invalid constraints raise GrammarError with the compiler's message", _invalid, runs_on_device),
    ]
