"""The kit's pytest plugin, as a plugin author uses it: a test marked `jackfield_kit(cls)` with a
`kit_check` argument becomes one item per check (run here in a pytest subprocess, where the plugin
is loaded through its `pytest11` entry point)."""
from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plugins" / "jackfield-example-plugin"

RUN_PYTEST = "import sys, pytest; sys.exit(pytest.main(sys.argv[1:]))"
AUTHOR_TEST = '''
import pytest
from jackfield_faulty_plugin import Bf16Crash


@pytest.mark.jackfield_kit(component=Bf16Crash)
def test_conformance(kit_check):
    kit_check.run()
'''
NO_MARKER = '''
def test_without_marker(kit_check):
    kit_check.run()
'''


def test_checks_become_test_items_named_after_their_behaviour(run_python, tmp_path):
    """The faulty backend's items (one fails), a test without the marker (a collection error), and
    the example plugin's own kit test (all pass), in one pytest run."""
    (tmp_path / "test_author.py").write_text(AUTHOR_TEST)
    (tmp_path / "test_no_marker.py").write_text(NO_MARKER)
    report = tmp_path / "report.xml"
    done = run_python(RUN_PYTEST, "-q", "-rfs", "-p", "no:cacheprovider", "--continue-on-collection-errors",
                      f"--junitxml={report}", str(tmp_path), str(EXAMPLE / "tests"), cwd=tmp_path)
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    cases = ElementTree.parse(report).getroot().iter("testcase")
    outcome = {}
    for case in cases:
        status = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        outcome.setdefault((case.get("classname").rsplit(".", 1)[-1], status), []).append(case.get("name"))
    assert outcome[("test_author", "failure")] == [
        "test_conformance[declared-dtype-bfloat16-extend-then-decode-match-the-reference-gqa-4-1-head-dim-128-page-16]"]
    assert len(outcome[("test_author", "passed")]) == 14 and len(outcome[("test_author", "skipped")]) == 4
    assert "raised KeyError: torch.bfloat16" in out
    assert "does not declare the 'sliding_window' feature" in out
    example = {status: names for (module, status), names in outcome.items() if module == "test_kit"}
    assert set(example) <= {"passed", "skipped"} and len(example["passed"]) >= 10, example
    # a `kit_check` argument without the marker is a collection error that says what is missing
    assert "needs @pytest.mark.jackfield_kit(component=ComponentClass)" in out
