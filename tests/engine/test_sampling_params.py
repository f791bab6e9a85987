"""SamplingParams: defaults, normalization in from_dict, and validation messages naming the parameter."""
import dataclasses

import pytest

from jackfield.sampling.params import SamplingParamError, SamplingParams


def test_defaults_and_empty_dict():
    assert SamplingParams.from_dict(None) == SamplingParams()
    assert SamplingParams.from_dict({}) == SamplingParams()
    p = SamplingParams()
    assert (p.max_new_tokens, p.temperature, p.top_p, p.top_k, p.n) == (128, 1.0, 1.0, -1, 1)
    assert not p.is_greedy and not p.needs_penalties


def test_from_dict_normalizes():
    p = SamplingParams.from_dict({
        "temperature": 0, "top_k": 0, "stop": "###", "stop_token_ids": [5, 6],
        "logit_bias": {"7": 2.5, 3: -1}, "max_new_tokens": 16.0, "seed": 42, "top_p": None,
    }, vocab_size=10)
    assert p.temperature == 0.0 and isinstance(p.temperature, float)
    assert p.top_k == -1
    assert p.stop == ("###",)
    assert p.stop_token_ids == (5, 6)
    assert p.logit_bias == ((3, -1.0), (7, 2.5))
    assert p.max_new_tokens == 16 and isinstance(p.max_new_tokens, int)
    assert p.seed == 42
    assert p.top_p == 1.0
    assert SamplingParams.from_dict({"stop": ["a", "b"]}).stop == ("a", "b")


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SamplingParams().temperature = 0.5


def test_is_greedy_and_needs_penalties():
    assert SamplingParams(temperature=0.0).is_greedy
    assert SamplingParams(top_k=1).is_greedy
    assert not SamplingParams(temperature=0.7, top_k=2).is_greedy
    assert SamplingParams(repetition_penalty=1.1).needs_penalties
    assert SamplingParams(frequency_penalty=0.5).needs_penalties
    assert SamplingParams(presence_penalty=-0.5).needs_penalties


def test_boundary_values_accepted():
    SamplingParams.from_dict({"max_new_tokens": 0, "top_p": 1.0, "min_p": 1.0, "frequency_penalty": 2,
                              "presence_penalty": -2, "top_logprobs_num": 20, "logit_bias": {9: 100}},
                             vocab_size=10)


def test_unknown_key_rejected():
    with pytest.raises(SamplingParamError, match="unknown sampling parameter 'foo'") as e:
        SamplingParams.from_dict({"foo": 1})
    assert e.value.param == "foo"
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("key, value, fragment", [
    ("temperature", -1, "temperature must be >= 0, got -1.0"),
    ("temperature", "hot", "temperature must be a finite number"),
    ("temperature", float("nan"), "temperature must be a finite number"),
    ("top_p", 0, "top_p must be in (0, 1], got 0.0"),
    ("top_p", 1.5, "top_p must be in (0, 1], got 1.5"),
    ("top_k", -2, "top_k must be -1 (off) or >= 1, got -2"),
    ("top_k", 2.5, "top_k must be an integer, got 2.5"),
    ("min_p", 1.2, "min_p must be in [0, 1], got 1.2"),
    ("min_p", -0.1, "min_p must be in [0, 1], got -0.1"),
    ("repetition_penalty", 0, "repetition_penalty must be > 0, got 0.0"),
    ("frequency_penalty", 2.5, "frequency_penalty must be in [-2, 2], got 2.5"),
    ("presence_penalty", -3, "presence_penalty must be in [-2, 2], got -3.0"),
    ("max_new_tokens", -1, "max_new_tokens must be >= 0, got -1"),
    ("min_new_tokens", -1, "min_new_tokens must be >= 0, got -1"),
    ("n", 0, "n must be >= 1, got 0"),
    ("top_logprobs_num", 21, "top_logprobs_num must be in [0, 20], got 21"),
    ("top_logprobs_num", -1, "top_logprobs_num must be in [0, 20], got -1"),
    ("logprobs", "yes", "logprobs must be a boolean, got 'yes'"),
    ("ignore_eos", 1, "ignore_eos must be a boolean"),
    ("seed", "abc", "seed must be an integer, got 'abc'"),
    ("stop", 5, "stop must be a string or a list of strings"),
    ("stop", [""], "stop must be a non-empty string"),
    ("stop_token_ids", [-1], "stop_token_ids must be token ids >= 0, got -1"),
    ("stop_token_ids", 3, "stop_token_ids must be a list of integers"),
    ("logit_bias", {"x": 1}, "logit_bias must map token ids to numbers"),
    ("logit_bias", {3: 101}, "logit_bias must be in [-100, 100] (token 3), got 101.0"),
    ("logit_bias", {-1: 1}, "logit_bias must be token ids >= 0, got -1"),
])
def test_bad_values_name_the_parameter(key, value, fragment):
    with pytest.raises(SamplingParamError) as e:
        SamplingParams.from_dict({key: value})
    assert e.value.param == key
    assert fragment in str(e.value)


def test_min_new_tokens_above_max_new_tokens():
    with pytest.raises(SamplingParamError, match=r"min_new_tokens must be <= max_new_tokens \(4\), got 5") as e:
        SamplingParams.from_dict({"max_new_tokens": 4, "min_new_tokens": 5})
    assert e.value.param == "min_new_tokens"


def test_token_ids_checked_against_vocab_size():
    with pytest.raises(SamplingParamError, match="logit_bias must be token ids < vocab size 10, got 10") as e:
        SamplingParams.from_dict({"logit_bias": {10: 1.0}}, vocab_size=10)
    assert e.value.param == "logit_bias"
    with pytest.raises(SamplingParamError, match="stop_token_ids must be token ids < vocab size 10, got 12"):
        SamplingParams.from_dict({"stop_token_ids": [12]}, vocab_size=10)
    SamplingParams.from_dict({"logit_bias": {10: 1.0}})


def test_direct_construction_validates():
    with pytest.raises(SamplingParamError, match="top_p"):
        SamplingParams(top_p=0.0)


def test_constraint_fields():
    p = SamplingParams.from_dict({"json_schema": {"type": "object"}, "grammar_backend": "xgrammar"})
    assert p.constraint.kind == "json_schema" and p.constraint.value == '{"type": "object"}'
    assert p.grammar_backend == "xgrammar"
    assert SamplingParams.from_dict({"regex": "a+"}).constraint.value == "a+"
    assert SamplingParams().constraint is None
    choices = SamplingParams.from_dict({"choices": ["yes", "no", "a.b", "yes"]}).constraint
    assert choices.kind == "regex" and choices.value == r"(yes|no|a\.b)"


@pytest.mark.parametrize("values, param, fragment", [
    ({"regex": "a", "ebnf": "root ::= \"a\""}, "ebnf", "both regex and ebnf"),
    ({"json_schema": "{}", "regex": "a"}, "regex", "both json_schema and regex"),
    ({"choices": ["a"], "regex": "b"}, "choices", "both regex and choices"),
    ({"json_schema": "[1]"}, "json_schema", "must be a JSON object"),
    ({"json_schema": "{"}, "json_schema", "not valid JSON"),
    ({"choices": []}, "choices", "non-empty list"),
    ({"regex": 5}, "regex", "must be a string"),
    ({"regex": ""}, "regex", "non-empty string"),
    ({"grammar_backend": "no such", "regex": "a"}, "grammar_backend", "grammar backend name"),
    ({"grammar_backend": "xgrammar"}, "grammar_backend", "the request has none"),
])
def test_constraint_errors(values, param, fragment):
    with pytest.raises(SamplingParamError, match=fragment) as e:
        SamplingParams.from_dict(values)
    assert e.value.param == param
