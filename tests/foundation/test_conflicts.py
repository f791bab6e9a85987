"""Two distributions registering one component name: a loud error until `plugin_choice` picks one."""
from __future__ import annotations

import pytest

from jackfield.plugins import load_plugins
from jackfield.registry import build_registry
from jackfield.sdk import SelectionContext
from jackfield.selection import SelectionError, choose

ONLY_FIXTURES = {"JACKFIELD_PLUGINS": "example,dup"}


@pytest.fixture
def registry(plugin_path):
    pm, records = load_plugins(env=ONLY_FIXTURES)
    return build_registry(pm, records)


def test_both_distributions_are_registered(registry):
    infos = registry.candidates("attention", "example_sdpa")
    assert {(i.plugin, i.distribution) for i in infos} == {
        ("example", "jackfield-example-plugin"), ("dup", "jackfield-dup-plugin")}
    assert registry.conflicts() == [infos]


def test_selecting_the_ambiguous_name_names_both_distributions(registry):
    with pytest.raises(SelectionError) as err:
        choose(registry, "attention", "example_sdpa", SelectionContext())
    message = str(err.value)
    assert "jackfield-example-plugin" in message and "jackfield-dup-plugin" in message
    assert "plugin_choice" in message


@pytest.mark.parametrize("wanted, dist", [
    ("jackfield-example-plugin", "jackfield-example-plugin"),
    ("dup", "jackfield-dup-plugin"),
])
def test_plugin_choice_resolves_the_conflict(registry, wanted, dist):
    choice = choose(registry, "attention", "example_sdpa", SelectionContext(),
                    plugin_choice={"attention.example_sdpa": wanted})
    assert choice.info.distribution == dist
    assert choice.reason == "selected by configuration"


def test_plugin_choice_naming_neither_is_an_error(registry):
    with pytest.raises(SelectionError, match="matches none of"):
        choose(registry, "attention", "example_sdpa", SelectionContext(),
               plugin_choice={"attention.example_sdpa": "jackfield-other"})


def test_blocking_one_side_removes_the_conflict(plugin_path):
    pm, records = load_plugins(env={"JACKFIELD_PLUGINS": "example,dup", "JACKFIELD_DISABLE_PLUGINS": "dup"})
    registry = build_registry(pm, records)
    choice = choose(registry, "attention", "example_sdpa", SelectionContext())
    assert choice.info.distribution == "jackfield-example-plugin"
