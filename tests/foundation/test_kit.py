"""The conformance kit: every built-in component passes it on CPU, and each faulty fixture component
(tests/fixtures/jackfield-faulty-plugin, one plausible bug each) fails it with a report that names
the broken behaviour and says what went wrong."""
from __future__ import annotations

import pytest

from jackfield.plugins import load_plugins
from jackfield.registry import build_registry
from jackfield.testing import Check, KitFailure, KitTarget, certify, expect, run_checks


def builtin_components() -> list[tuple[str, str]]:
    registry = build_registry(*load_plugins(env={}))
    return sorted({(i.kind, i.name) for infos in registry.components.values() for i in infos
                   if i.distribution == "jackfield"})


@pytest.fixture(scope="module")
def builtins():
    registry = build_registry(*load_plugins(env={}))
    return {(i.kind, i.name): i.cls for infos in registry.components.values() for i in infos}


@pytest.mark.parametrize("kind, name", builtin_components(), ids=lambda v: v)
def test_every_builtin_component_passes_the_kit_on_cpu(builtins, kind, name):
    report = certify(builtins[kind, name], "cpu")
    assert report.ok, report.format()
    assert report.count("passed") >= 5


@pytest.mark.parametrize("name, behaviour, detail", [
    ("faulty_scale", "extend then decode match the reference: MHA", "output differs from the float32 reference"),
    ("faulty_bf16", "declared dtype bfloat16", "raised KeyError: torch.bfloat16"),
    ("faulty_incomplete", "implements every abstract method", "does not implement forward_decode"),
    ("faulty_int8", "layer output within max_relative_error of the float32 layer, in float32",
     "exceeds the declared bound 0.02"),
    ("faulty_positions", "give the logits of one full prefill", "chunk 8 over the cached prefix"),
])
def test_each_faulty_component_fails_naming_the_behaviour(plugin_path, name, behaviour, detail):
    import jackfield_faulty_plugin as faulty

    cls = next(c for c in vars(faulty).values() if isinstance(c, type) and getattr(c, "name", "") == name)
    report = certify(cls, "cpu")
    assert not report.ok
    failed = [r for r in report.failures() if behaviour in r.behaviour]
    assert failed, report.format()
    assert detail in failed[0].detail, report.format()
    text = report.format()
    assert f"FAIL  {failed[0].behaviour}" in text and "NOT certified" in text


def test_only_the_broken_dtype_fails(plugin_path):
    from jackfield_faulty_plugin import Bf16Crash

    report = certify(Bf16Crash, "cpu")
    assert [r.behaviour for r in report.failures()] == [
        "declared dtype bfloat16: extend then decode match the reference (GQA 4:1, head_dim 128, page 16)"]


def test_an_incomplete_class_gets_no_behaviour_checks(plugin_path):
    from jackfield_faulty_plugin import Incomplete

    report = certify(Incomplete, "cpu")
    assert len(report.results) == 6  # the interface checks; constructing it would only raise TypeError


def test_undeclared_device_skips_behaviour_checks_with_the_reason(builtins):
    report = certify(builtins["quantization", "int4_weight_only"], "cuda")
    skipped = [r for r in report.results if r.outcome == "skipped"]
    assert skipped and all("does not declare device 'cuda'" in r.detail for r in skipped)


def test_runner_reports_failures_errors_and_skips():
    def broken_precondition(t):
        raise RuntimeError("probe failed")

    checks = [Check("holds", lambda t: expect(True, "unused")),
              Check("says why", lambda t: expect(False, "the output was 3, expected 4")),
              Check("crashes", lambda t: {}["missing"]),
              Check("does not apply", lambda t: None, lambda t: "needs a GPU"),
              Check("cannot tell", lambda t: None, broken_precondition)]
    report = run_checks(KitTarget("attention", object), checks)
    outcome = {r.behaviour: (r.outcome, r.detail) for r in report.results}
    assert outcome["holds"] == ("passed", "")
    assert outcome["says why"] == ("failed", "the output was 3, expected 4")
    assert outcome["crashes"][0] == "failed" and outcome["crashes"][1].startswith("raised KeyError: 'missing'")
    assert outcome["does not apply"] == ("skipped", "needs a GPU")
    assert outcome["cannot tell"] == ("failed", "its precondition raised RuntimeError: probe failed")
    assert not report.ok and report.count("failed") == 3
    with pytest.raises(KitFailure, match="why"):
        expect(False, "why")


def test_plugin_check_certifies_an_installed_component(cli):
    code, out, err = cli("plugin", "check", "example_sdpa", "--device", "cpu", JACKFIELD_DISABLE_PLUGINS="dup")
    assert code == 0, out + err
    assert out.startswith("jackfield-example-plugin 0.1.0 (plugin 'example')")
    assert "FAIL" not in out and out.rstrip().endswith(": certified")


def test_plugin_check_fails_a_faulty_component_and_names_the_behaviour(cli):
    code, out, err = cli("plugin", "check", "faulty_positions", "--kind", "model")
    assert code == 1
    assert "FAIL  prefill, chunked prefill over a cached prefix" in out
    assert "position 9: relative error" in out and out.rstrip().endswith("NOT certified")


def test_plugin_check_unknown_name_lists_the_installed_names_of_that_kind(cli):
    code, out, err = cli("plugin", "check", "nosuch", "--kind", "quant")
    assert code == 2 and out == ""
    assert "no installed quantization component named 'nosuch'" in err
    assert "int4_weight_only" in err and "unquantized" in err and "faulty_int8" in err
    assert "torch_native" not in err  # names of the other kinds are not listed
    code, out, err = cli("plugin", "check", "nosuch")
    assert code == 2 and "attention: " in err and "model: " in err and "faulty_positions" in err


def test_plugin_check_rejects_an_unknown_kind(cli):
    code, out, err = cli("plugin", "check", "torch_native", "--kind", "nonsense")
    assert code == 2 and "unknown kind 'nonsense'" in err
