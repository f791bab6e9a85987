"""`jackfield plugin new` for the parser kinds: the generated parser is certified by the kit, from
Python and from its own generated test, and reads its documented format."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

from jackfield.cli import main
from jackfield.testing import certify


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """kind -> directory of the generated package, importable while the module's tests run."""
    root = tmp_path_factory.mktemp("parsers")
    dirs = {}
    for kind in ("tool_parser", "reasoning_parser"):
        dirs[kind] = root / kind
        assert main(["plugin", "new", "--kind", kind, "--name", f"my_{kind}", "--dir", str(dirs[kind])]) == 0
        sys.path.insert(0, str(dirs[kind]))
    yield dirs
    for d in dirs.values():
        sys.path.remove(str(d))


def generated_class(kind: str):
    camel = "".join(part.capitalize() for part in f"my_{kind}".split("_"))
    return getattr(importlib.import_module(f"jackfield_my_{kind}.parser"), f"{camel}Parser")


@pytest.mark.parametrize("kind", ["tool_parser", "reasoning_parser"])
def test_the_generated_parser_is_certified(generated, kind):
    cls = generated_class(kind)
    assert cls.kind == kind and cls.name == f"my_{kind}"
    report = certify(cls)
    assert report.ok, report.format()


def test_the_generated_parsers_read_their_format(generated):
    tools = generated_class("tool_parser")([])
    got = tools.parse('Sure. <function_call>{"name": "f", "arguments": {"x": 1}}</function_call>')
    assert got.text == "Sure." and [(c.name, c.arguments) for c in got.calls] == [("f", '{"x": 1}')]
    reasoning = generated_class("reasoning_parser")().parse("<reasoning>hm</reasoning>Yes.")
    assert (reasoning.reasoning, reasoning.content) == ("hm", "Yes.")


def test_the_generated_kit_test_passes(generated):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(generated["tool_parser"]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                          cwd=generated["tool_parser"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout and "failed" not in done.stdout
