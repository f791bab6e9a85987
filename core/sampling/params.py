"""Per-request sampling parameters, named as in SGLang, validated once at the API boundary.

`SamplingParams.from_dict` turns a request's JSON dict into a frozen, normalized value; every bad
key or value raises `SamplingParamError`, whose message names the parameter and the value and
whose `param` attribute lets the HTTP layer fill the OpenAI error's `param` field.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from jackfield.sampling.constraint import CONSTRAINT_KINDS, choices_constraint, json_schema_text
from jackfield.sdk.grammar import GrammarSpec

_FLOATS = ("temperature", "top_p", "min_p", "repetition_penalty", "frequency_penalty", "presence_penalty")
_INTS = ("max_new_tokens", "min_new_tokens", "top_k", "n", "top_logprobs_num")
_BOOLS = ("ignore_eos", "skip_special_tokens", "no_stop_trim", "logprobs", "speculative")
_STRINGS = ("regex", "ebnf", "grammar_backend")
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 100.0


class SamplingParamError(ValueError):
    """A sampling parameter is unknown or out of range; `param` names it."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class SamplingParams:
    """How one request is sampled and when it stops. top_k -1 (or 0) and top_p 1.0 mean off."""

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    n: int = 1
    skip_special_tokens: bool = True
    no_stop_trim: bool = False
    logprobs: bool = False
    top_logprobs_num: int = 0
    # Structured outputs: at most one constraint (SGLang's names); `grammar_backend` picks the
    # grammar engine for this request's constraint (unset: the server's `grammar_backend`
    # setting); without a constraint it is refused, since it would change nothing.
    json_schema: str | None = None
    regex: str | None = None
    ebnf: str | None = None
    grammar_backend: str | None = None
    speculative: bool = True  # False: never speculate for this request (when the engine runs a decoder)

    def __post_init__(self):
        self.validate()

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, vocab_size: int | None = None) -> SamplingParams:
        """Build from a JSON-style dict; keys whose value is None take their default.

        `logit_bias` may be a dict {token_id (int or str): bias}, `stop` a string or a list. When
        `vocab_size` is given, token ids in `logit_bias` and `stop_token_ids` must lie below it.
        `json_schema` may be a JSON string or an object; `choices` (a list of strings, SGLang's
        select) becomes the `regex` that matches exactly one of them.
        """
        known = {f.name for f in fields(cls)}
        values = {}
        d = dict(d or {})
        if d.get("choices") is not None:
            d["regex"] = choices_constraint(d.pop("choices"), d.get("regex"))
        d.pop("choices", None)
        for key, value in d.items():
            if key not in known:
                raise SamplingParamError(key, f"unknown sampling parameter {key!r}")
            if value is not None:
                values[key] = _coerce(key, value)
        if values.get("top_k") == 0:
            values["top_k"] = -1
        params = cls(**values)
        if vocab_size is not None:
            params.validate(vocab_size)
        return params

    @property
    def constraint(self) -> GrammarSpec | None:
        """The structured-output constraint of this request, or None."""
        for kind in CONSTRAINT_KINDS:
            value = getattr(self, kind)
            if value is not None:
                return GrammarSpec(kind, value)
        return None

    @property
    def is_greedy(self) -> bool:
        """True when sampling reduces to argmax: temperature 0 or top_k 1."""
        return self.temperature == 0 or self.top_k == 1

    @property
    def needs_penalties(self) -> bool:
        """True when any of the repetition, frequency or presence penalties is active."""
        return self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0

    def validate(self, vocab_size: int | None = None) -> None:
        """Raise SamplingParamError for the first out-of-range value; token ids checked only with vocab_size."""
        _check("temperature", self.temperature, self.temperature >= 0, ">= 0")
        _check("top_p", self.top_p, 0 < self.top_p <= 1, "in (0, 1]")
        _check("top_k", self.top_k, self.top_k in (-1, 0) or self.top_k >= 1, "-1 (off) or >= 1")
        _check("min_p", self.min_p, 0 <= self.min_p <= 1, "in [0, 1]")
        _check("repetition_penalty", self.repetition_penalty, self.repetition_penalty > 0, "> 0")
        _check("frequency_penalty", self.frequency_penalty, -2 <= self.frequency_penalty <= 2, "in [-2, 2]")
        _check("presence_penalty", self.presence_penalty, -2 <= self.presence_penalty <= 2, "in [-2, 2]")
        _check("max_new_tokens", self.max_new_tokens, self.max_new_tokens >= 0, ">= 0")
        _check("min_new_tokens", self.min_new_tokens, self.min_new_tokens >= 0, ">= 0")
        _check("min_new_tokens", self.min_new_tokens, self.min_new_tokens <= self.max_new_tokens,
               f"<= max_new_tokens ({self.max_new_tokens})")
        _check("n", self.n, self.n >= 1, ">= 1")
        _check("top_logprobs_num", self.top_logprobs_num, 0 <= self.top_logprobs_num <= MAX_TOP_LOGPROBS,
               f"in [0, {MAX_TOP_LOGPROBS}]")
        for token_id, bias in self.logit_bias:
            _check_token("logit_bias", token_id, vocab_size)
            _check("logit_bias", bias, -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS,
                   f"in [-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}] (token {token_id})")
        for token_id in self.stop_token_ids:
            _check_token("stop_token_ids", token_id, vocab_size)
        for s in self.stop:
            _check("stop", s, isinstance(s, str) and s != "", "a non-empty string")
        given = [k for k in CONSTRAINT_KINDS if getattr(self, k) is not None]
        if len(given) > 1:
            raise SamplingParamError(given[1], f"give at most one constraint; got both {given[0]} and {given[1]}")
        for kind in given:
            _check(kind, getattr(self, kind), getattr(self, kind) != "", "a non-empty string")
        if self.grammar_backend is not None:
            _check("grammar_backend", self.grammar_backend, self.grammar_backend.isidentifier(),
                   "a grammar backend name")
            if not given:
                raise SamplingParamError("grammar_backend", (
                    f"grammar_backend ({self.grammar_backend!r}) picks the engine of a constraint, and the request has "
                    "none: give json_schema, regex, ebnf or choices (response_format on the OpenAI API) with it, or "
                    "leave it out"))


def _check(name: str, value: Any, ok: bool, rule: str) -> None:
    if not ok:
        raise SamplingParamError(name, f"{name} must be {rule}, got {value!r}")


def _check_token(name: str, token_id: int, vocab_size: int | None) -> None:
    _check(name, token_id, token_id >= 0, "token ids >= 0")
    if vocab_size is not None:
        _check(name, token_id, token_id < vocab_size, f"token ids < vocab size {vocab_size}")


def _coerce(name: str, value: Any) -> Any:
    if name in _FLOATS:
        return _number(name, value)
    if name in _INTS or name == "seed":
        return _integer(name, value)
    if name in _BOOLS:
        if not isinstance(value, bool):
            raise SamplingParamError(name, f"{name} must be a boolean, got {value!r}")
        return value
    if name in _STRINGS:
        if not isinstance(value, str):
            raise SamplingParamError(name, f"{name} must be a string, got {value!r}")
        return value
    if name == "json_schema":
        return json_schema_text(value)
    if name == "stop":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) for s in items):
            raise SamplingParamError(name, f"stop must be a string or a list of strings, got {value!r}")
        return tuple(items)
    if name == "stop_token_ids":
        if not isinstance(value, (list, tuple)):
            raise SamplingParamError(name, f"stop_token_ids must be a list of integers, got {value!r}")
        return tuple(_integer(name, v) for v in value)
    if name == "logit_bias":
        pairs = value.items() if isinstance(value, dict) else value
        try:
            biases = {_token_key(k): b for k, b in pairs}
        except (TypeError, ValueError) as e:
            raise SamplingParamError(name, f"logit_bias must map token ids to numbers, got {value!r}") from e
        return tuple(sorted((k, _number(name, b)) for k, b in biases.items()))
    return value


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SamplingParamError(name, f"{name} must be a finite number, got {value!r}")
    return float(value)


def _integer(name: str, value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SamplingParamError(name, f"{name} must be an integer, got {value!r}")
    return value


def _token_key(key: Any) -> int:
    if isinstance(key, str):
        return int(key)
    if isinstance(key, bool) or not isinstance(key, int):
        raise TypeError(f"not a token id: {key!r}")
    return key
