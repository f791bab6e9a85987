"""Every registered speculative decoder passes the conformance kit's speculative suite on CPU, and
the suite fails a decoder that breaks the proposal contract."""
from __future__ import annotations

import pytest
import torch

from jackfield.sdk import DraftProposal, SpeculativeDecoder
from jackfield.testing import certify


def spec_plugins() -> list[type]:
    from jackfield.plugins import load_plugins
    from jackfield.registry import build_registry

    pm, records = load_plugins()
    return [info.cls for info in build_registry(pm, records).of_kind("speculative")]


@pytest.mark.parametrize("cls", spec_plugins(), ids=lambda c: c.name)
def test_every_speculative_plugin_is_certified(cls):
    report = certify(cls, "cpu")
    assert report.ok, report.format()
    assert report.count("passed") >= 9


class TooManyDrafts(SpeculativeDecoder):
    name = "too_many_drafts"

    def propose(self, spec_input):
        n = self.runtime.max_drafts + 2
        return DraftProposal(torch.full((len(spec_input), n), 3, dtype=torch.int64))


def test_the_suite_fails_a_decoder_that_ignores_its_budget():
    report = certify(TooManyDrafts, "cpu")
    assert not report.ok
    failed = {r.behaviour: r.detail for r in report.failures()}
    assert any("allowed" in d for d in failed.values()), report.format()


def test_the_plugin_template_for_the_speculative_kind_is_certified(tmp_path, monkeypatch):
    """`jackfield plugin new --kind speculative` gives a prompt-lookup decoder that passes the kit."""
    import importlib

    from jackfield.cli import main

    assert main(["plugin", "new", "--kind", "speculative", "--name", "my_lookup", "--dir", str(tmp_path / "pkg")]) == 0
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    cls = importlib.import_module("jackfield_my_lookup.decoder").MyLookupDecoder
    report = certify(cls, "cpu")
    assert report.ok and report.count("failed") == 0, report.format()
