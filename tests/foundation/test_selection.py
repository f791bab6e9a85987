"""Selection: `auto` picks the highest-priority compatible component and says why."""
from __future__ import annotations

import pytest

from jackfield import hookimpl
from jackfield.plugins import load_plugins
from jackfield.registry import build_registry
from jackfield.sdk import AttentionBackend, Availability, Capabilities, SelectionContext
from jackfield.selection import SelectionError, choose


class NeedsMissingPackage(AttentionBackend):
    name = "needs_missing"
    priority = 30
    requires_packages = ("jackfield_no_such_package",)


class GpuOnly(AttentionBackend):
    name = "gpu_only"
    priority = 20
    capabilities = Capabilities(devices=("cuda",))

    @classmethod
    def availability(cls) -> Availability:
        return Availability.yes()


class NoSlidingWindow(AttentionBackend):
    name = "no_window"
    priority = 15


class OptInWindow(AttentionBackend):
    """Serves sliding windows only when named."""
    name = "opt_in_window"
    priority = 12
    capabilities = Capabilities(features=frozenset({"sliding_window"}), opt_in_features=frozenset({"sliding_window"}))


class Plain(AttentionBackend):
    name = "plain"
    priority = 10
    capabilities = Capabilities(features=frozenset({"sliding_window"}))


class Fallback(AttentionBackend):
    name = "fallback"
    priority = 1
    capabilities = Capabilities(features=frozenset({"sliding_window"}))


class FakeBackends:
    @hookimpl
    def jackfield_register_attention_backends(self, register):
        for cls in (Fallback, NeedsMissingPackage, Plain, GpuOnly, NoSlidingWindow, OptInWindow):
            register(cls)


@pytest.fixture
def registry():
    pm, records = load_plugins(env={"JACKFIELD_PLUGINS": "-"}, extra=[("fakes", FakeBackends())])
    return build_registry(pm, records)


def test_auto_picks_the_highest_priority_compatible_component(registry):
    ctx = SelectionContext(device="cpu", dtype="float32", required_features=frozenset({"sliding_window"}))
    choice = choose(registry, "attention", "auto", ctx)
    assert choice.name == "plain"
    assert choice.info.plugin == "fakes"
    assert "highest-priority compatible (priority 10)" in choice.reason
    assert "needs_missing: Python package 'jackfield_no_such_package' is not installed" in choice.reason
    assert "gpu_only: device 'cpu' not supported" in choice.reason
    assert "no_window: lacks required feature(s): sliding_window" in choice.reason
    assert "opt_in_window: its sliding_window is opt-in: auto does not pick it" in choice.reason
    assert choice.as_dict()["name"] == "plain"


def test_an_opt_in_feature_is_served_by_name_only(registry):
    """`auto` passes over a component for a context needing one of its opt-in features; named, it runs."""
    ctx = SelectionContext(device="cpu", dtype="float32", required_features=frozenset({"sliding_window"}))
    assert choose(registry, "attention", "opt_in_window", ctx).reason == "selected by configuration"
    assert OptInWindow.auto_exclusions(ctx) and not OptInWindow.auto_exclusions(SelectionContext())


def test_auto_without_required_features(registry):
    assert choose(registry, "attention", "auto", SelectionContext()).name == "no_window"


def test_requested_unavailable_component_gives_the_reason(registry):
    with pytest.raises(SelectionError, match="'needs_missing' is unavailable: Python package 'jackfield_no_such_package'"):
        choose(registry, "attention", "needs_missing", SelectionContext())


def test_requested_incompatible_component_gives_the_reason(registry):
    with pytest.raises(SelectionError, match="'gpu_only' cannot serve this model: device 'cpu' not supported"):
        choose(registry, "attention", "gpu_only", SelectionContext())


def test_unknown_name_lists_the_registered_ones(registry):
    with pytest.raises(SelectionError, match="no attention component named 'flash'.*fallback, gpu_only"):
        choose(registry, "attention", "flash", SelectionContext())


def test_by_name_and_disabled(registry):
    assert choose(registry, "attention", "fallback", SelectionContext()).reason == "selected by configuration"
    assert choose(registry, "grammar", "none", SelectionContext()).info is None


def test_nothing_compatible_is_an_error_for_a_required_kind(registry):
    with pytest.raises(SelectionError, match="no available attention component for device=cpu dtype=int4"):
        choose(registry, "attention", "auto", SelectionContext(dtype="int4"))


def test_nothing_registered_is_fine_for_an_optional_kind(registry):
    choice = choose(registry, "grammar", "auto", SelectionContext())
    assert choice.info is None and choice.reason.startswith("none available")


def test_attention_backends_declare_the_head_dims_their_kernels_run():
    """A model whose head_dim a kernel library is not built for never gets that backend: FlashInfer
    (64/128/256) and FA3 (multiples of 8 up to 256) say so; the Triton and torch backends take any."""
    registry = build_registry(*load_plugins(env={}))
    reasons = {}
    for head_dim in (16, 128, 260):
        ctx = SelectionContext(device="cuda", dtype="bfloat16", compute_capability=(9, 0), head_dim=head_dim)
        reasons[head_dim] = {i.name: i.cls.incompatibilities(ctx) for i in registry.of_kind("attention")}
    assert reasons[16]["flashinfer"] == ["head_dim 16 not supported (supports 64, 128, 256)"]
    assert reasons[16]["fa3"] == [] and reasons[260]["fa3"][0].startswith("head_dim 260 not supported")
    assert reasons[128]["flashinfer"] == reasons[128]["fa3"] == []
    for head_dim in reasons:
        assert reasons[head_dim]["triton"] == reasons[head_dim]["torch_native"] == []
