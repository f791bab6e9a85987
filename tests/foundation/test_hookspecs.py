"""The hook specifications and how registration treats well- and ill-behaved plugins."""
from __future__ import annotations

import inspect
import logging
from importlib.metadata import EntryPoint

import pytest

from jackfield import hookimpl, hookspecs, plugins
from jackfield.plugins import load_plugins
from jackfield.registry import KIND_HOOKS, build_registry
from jackfield.sdk import AttentionBackend

NO_ENTRY_POINTS = {"JACKFIELD_PLUGINS": "-"}  # an allow-list that matches no installed plugin

HOOKS = {name: fn for name, fn in vars(hookspecs).items() if name.startswith("jackfield_") and callable(fn)}


def test_every_hook_is_a_spec_with_a_docstring():
    assert len(HOOKS) >= 11
    for name, fn in HOOKS.items():
        assert hasattr(fn, f"{hookspecs.PROJECT}_spec"), f"{name} is not marked @hookspec"
        doc = inspect.getdoc(fn) or ""
        assert len(doc) > 80, f"{name} needs a docstring saying who calls it, when and with what"


def test_every_kind_has_a_registration_hook():
    for kind, (hook_name, base) in KIND_HOOKS.items():
        assert hook_name in HOOKS
        assert base.kind == kind
    assert {n for n in HOOKS if n.startswith("jackfield_register_")} == {h for h, _ in KIND_HOOKS.values()}


class NotABackend:
    name = "not_a_backend"


class Nameless(AttentionBackend):
    pass


class BadRegistrations:
    """An in-process plugin that registers two wrong things and records what register() raised."""

    def __init__(self):
        self.raised: list[Exception] = []

    @hookimpl
    def jackfield_register_attention_backends(self, register):
        for cls in (NotABackend, Nameless):
            try:
                register(cls)
            except TypeError as exc:
                self.raised.append(exc)


def test_registering_a_non_subclass_raises_type_error_naming_the_plugin():
    plugin = BadRegistrations()
    pm, records = load_plugins(env=NO_ENTRY_POINTS, extra=[("bad-registrations", plugin)])
    registry = build_registry(pm, records)
    assert registry.of_kind("attention") == []
    not_sub, nameless = (str(e) for e in plugin.raised)
    assert "plugin bad-registrations" in not_sub and "not a subclass of AttentionBackend" in not_sub
    assert "plugin bad-registrations" in nameless and "without a `name`" in nameless


class RaisingRegistration:
    @hookimpl
    def jackfield_register_attention_backends(self, register):
        register(NotABackend)


def test_a_registration_error_is_kept_against_the_plugin():
    pm, records = load_plugins(env=NO_ENTRY_POINTS, extra=[("raiser", RaisingRegistration())])
    registry = build_registry(pm, records)
    assert len(registry.errors) == 1
    assert registry.errors[0].startswith("plugin raiser: jackfield_register_attention_backends raised TypeError")


def test_a_plugin_implementing_an_unknown_hook_fails_alone(tmp_path, monkeypatch):
    (tmp_path / "jf_future_plugin.py").write_text(
        "from jackfield import hookimpl\n\n@hookimpl\ndef jackfield_register_time_machines(register):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    future = EntryPoint("future", "jf_future_plugin", plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [future])
    pm, records = load_plugins(env={})
    (record,) = records
    assert record.status == "failed" and "jackfield_register_time_machines" in record.error
    assert not pm.has_plugin("future")


def test_lifecycle_hook_of_the_example_plugin_logs(plugin_path, caplog):
    pm, _ = load_plugins(env={"JACKFIELD_PLUGINS": "example"})
    with caplog.at_level(logging.INFO, logger="jackfield_example_plugin"):
        pm.hook.jackfield_engine_started(engine=object())
    assert "example plugin: engine started" in caplog.text


@pytest.mark.parametrize("env, loaded", [
    ({"JACKFIELD_PLUGINS": "example"}, {"example"}),
    ({"JACKFIELD_PLUGINS": "example,broken", "JACKFIELD_DISABLE_PLUGINS": "example"}, set()),
])
def test_allow_and_block_lists(plugin_path, env, loaded):
    _, records = load_plugins(env=env)
    assert {r.name for r in records if r.status == "loaded"} == loaded
    by_name = {r.name: r for r in records}
    if "broken" in env["JACKFIELD_PLUGINS"]:
        assert by_name["broken"].status == "failed" and "broken on purpose" in by_name["broken"].error
