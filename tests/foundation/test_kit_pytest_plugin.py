"""The kit's pytest plugin, as a plugin author uses it: a test marked `jackfield_kit(cls)` with a
`kit_check` argument becomes one item per check (run here in a pytest subprocess, where the plugin
is loaded through its `pytest11` entry point)."""
from __future__ import annotations

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
    (tmp_path / "test_author.py").write_text(AUTHOR_TEST)
    (tmp_path / "test_no_marker.py").write_text(NO_MARKER)
    done = run_python(RUN_PYTEST, "-q", "-rfs", "-p", "no:cacheprovider", "--continue-on-collection-errors",
                      cwd=tmp_path)
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    assert "1 failed, 13 passed, 3 skipped, 1 error" in out
    assert "test_conformance[declared-dtype-bfloat16-extend-then-decode-match-the-reference-gqa-4-1" in out
    assert "raised KeyError: torch.bfloat16" in out
    assert "does not declare the 'sliding_window' feature" in out
    # a `kit_check` argument without the marker is a collection error that says what is missing
    assert "needs @pytest.mark.jackfield_kit(component=ComponentClass)" in out
