"""Discovery stays light: listing every plugin imports none of the heavy GPU / grammar packages."""
from __future__ import annotations

import importlib.util
import json

HEAVY = ("triton", "flashinfer", "xgrammar", "llguidance", "outlines")

PROBE = """
import contextlib, io, json, sys
from jackfield.cli import main
from jackfield.plugins import load_plugins
from jackfield.registry import build_registry
pm, records = load_plugins()
rows = build_registry(pm, records).describe()
with contextlib.redirect_stdout(io.StringIO()):
    code = main(["plugins", "--json"])
heavy = sorted(m for m in sys.argv[1:] if m in sys.modules)
print(json.dumps({"code": code, "rows": len(rows), "heavy": heavy}))
"""


def test_discovery_imports_no_heavy_package(run_python, tmp_path):
    # Heavy packages that are not installed get an importable stand-in, so that a plugin importing
    # one at module level would show up in sys.modules instead of just failing to load.
    for name in HEAVY:
        if importlib.util.find_spec(name) is None:
            (tmp_path / name).mkdir()
            (tmp_path / name / "__init__.py").write_text("")
    done = run_python(PROBE, *HEAVY, paths=(tmp_path,))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["code"] == 0
    assert result["rows"] > 0
    assert result["heavy"] == []
