"""Every grammar plugin passes the conformance kit's grammar suite on CPU; the suite catches a
backend whose masks or rollback are wrong."""
from __future__ import annotations

import pytest

from jackfield.plugins import load_plugins
from jackfield.registry import build_registry
from cases import OpenGrammar
from jackfield.sdk.grammar import GrammarBackend
from jackfield.testing import certify
from jackfield.testing.suites.grammar import greedy_encode, reference_forced, reference_mask

NAMES = ("xgrammar", "llguidance", "outlines")


def _registered(name: str):
    pm, records = load_plugins()
    (info,) = build_registry(pm, records).candidates("grammar", name)
    return info.cls


@pytest.mark.parametrize("name", NAMES)
def test_plugin_certified(name):
    cls = _registered(name)
    assert cls.availability().ok, cls.availability().reason
    report = certify(cls)
    assert report.ok, report.format()
    assert report.count("passed") >= 12, report.format()


def test_reference_matcher():
    assert reference_mask(r"(yes|no)", "") == {i for i in (greedy_encode("y")[0], greedy_encode("n")[0],
                                                          greedy_encode("yes")[0])}
    assert reference_mask(r"(yes|no)", "no") == {0}
    assert reference_forced(r"abc(d|e)f?", "") == "abc"
    assert reference_forced(r"abc(d|e)f?", "abcd") == ""


class WrongBackend(GrammarBackend):
    """Allows everything, never terminates, compiles anything."""

    name = "wrong"

    def compile_regex(self, regex):
        return OpenGrammar()


def test_kit_rejects_a_wrong_backend():
    report = certify(WrongBackend)
    assert not report.ok
    failed = {r.behaviour for r in report.failures()}
    assert any("regex masks" in b for b in failed) and any("invalid constraints" in b for b in failed)


def test_kit_catches_a_rollback_one_token_short():
    class ShortRollback(_registered("xgrammar")):
        name = "short_rollback"

        def compile(self, spec):
            grammar = super().compile(spec)
            rollback = grammar.rollback
            grammar.rollback = lambda n: rollback(max(n - 1, 0))
            return grammar

    failed = {r.behaviour for r in certify(ShortRollback).failures()}
    assert any(b.startswith("rollback(k)") for b in failed), failed
