"""Plugin API versioning: a plugin states the jackfield plugin API versions it supports
(JACKFIELD_API); one whose range excludes this jackfield is listed as incompatible with the reason,
its hooks never run, and selecting its components fails at startup with that reason."""
from __future__ import annotations

import json
import re
import types

import pytest

from jackfield.plugins import load_plugins
from jackfield.registry import build_registry
from jackfield.sdk import API_VERSION, SelectionContext
from jackfield.sdk.version import api_incompatibility, default_api_range
from jackfield.selection import SelectionError, choose
from jackfield.testing import certify


def test_api_version_is_semver_and_the_default_range_holds_it():
    assert re.fullmatch(r"\d+\.\d+\.\d+", API_VERSION)
    major = int(API_VERSION.split(".")[0])
    assert default_api_range() == f">={major}.{API_VERSION.split('.')[1]},<{major + 1}"
    assert api_incompatibility(default_api_range()) is None


@pytest.mark.parametrize("declared, reason", [
    (">=2.0,<3", "supports jackfield plugin API >=2.0,<3, but this jackfield provides API"),
    ("<1.0", "supports jackfield plugin API <1.0"),
    ("version one", "is not a valid version specifier"),
    (1, "must be a version specifier string"),
])
def test_incompatible_or_malformed_ranges_say_why(declared, reason):
    assert reason in api_incompatibility(declared)


def test_incompatible_installed_plugin_is_listed_with_the_reason(run_cli):
    done = run_cli("plugins", "--json", JACKFIELD_PLUGINS="future,torch_native")
    assert done.returncode == 0, done.stderr
    row = next(r for r in json.loads(done.stdout) if r["plugin"] == "future")
    assert row["kind"] == "plugin" and row["available"] is False
    assert row["reason"] == (f"incompatible: supports jackfield plugin API >=2.0,<3, but this jackfield provides "
                             f"API {API_VERSION} (jackfield.sdk.API_VERSION)")


def test_selecting_a_component_of_an_incompatible_plugin_names_the_reason(plugin_path):
    pm, records = load_plugins(env={"JACKFIELD_PLUGINS": "future,torch_native"})
    assert {r.name: r.status for r in records if r.name == "future"} == {"future": "incompatible"}
    assert not pm.has_plugin("future")  # its hooks (written for another API) are never registered
    registry = build_registry(pm, records)
    with pytest.raises(SelectionError, match=r"future \(jackfield-future-plugin\) incompatible: supports "
                                             r"jackfield plugin API >=2.0,<3"):
        choose(registry, "attention", "future_attention", SelectionContext())


def test_in_process_plugins_are_checked_too():
    old = types.ModuleType("old_plugin")
    old.JACKFIELD_API = "<1"
    _, records = load_plugins(env={"JACKFIELD_PLUGINS": ","}, extra=[("old", old)])
    assert [(r.name, r.status) for r in records if r.name == "old"] == [("old", "incompatible")]


def test_the_kit_requires_a_declared_compatible_range(plugin_path, monkeypatch):
    import jackfield_faulty_plugin as faulty

    behaviour = "declares the plugin API versions it supports (JACKFIELD_API), this jackfield's among them"
    assert certify(faulty.Incomplete).results[-1].behaviour == behaviour
    assert certify(faulty.Incomplete).results[-1].outcome == "passed"
    monkeypatch.setattr(faulty, "JACKFIELD_API", ">=2")
    result = next(r for r in certify(faulty.Incomplete).results if r.behaviour == behaviour)
    assert result.outcome == "failed" and "jackfield_faulty_plugin.JACKFIELD_API: supports jackfield plugin API >=2" \
        in result.detail
    monkeypatch.delattr(faulty, "JACKFIELD_API")
    result = next(r for r in certify(faulty.Incomplete).results if r.behaviour == behaviour)
    assert result.outcome == "failed" and f'add JACKFIELD_API = "{default_api_range()}"' in result.detail
