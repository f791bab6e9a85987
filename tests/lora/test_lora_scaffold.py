"""`jackfield plugin new --kind lora`: the generated package has the usual layout and its backend
passes the conformance kit."""
from __future__ import annotations

import importlib
import sys

import pytest

from jackfield.cli import main
from jackfield.testing import certify


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaffold") / "my-lora"
    assert main(["plugin", "new", "--kind", "lora", "--name", "my_lora", "--dir", str(root)]) == 0
    sys.path.insert(0, str(root))
    try:
        module = importlib.import_module("jackfield_my_lora.backend")
        importlib.import_module("jackfield_my_lora")  # the entry-point module declares JACKFIELD_API
        yield root, module.MyLoraLoRA
    finally:
        sys.path.remove(str(root))


def test_generated_package(generated):
    root, cls = generated
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert files == ["README.md", "jackfield_my_lora/__init__.py", "jackfield_my_lora/backend.py", "pyproject.toml",
                     "tests/test_kit.py"]
    assert "register(MyLoraLoRA)" in (root / "jackfield_my_lora/__init__.py").read_text()
    assert "jackfield_register_lora_backends" in (root / "jackfield_my_lora/__init__.py").read_text()
    assert 'lora_backend = "my_lora"' in (root / "README.md").read_text()


def test_generated_backend_passes_the_kit(generated):
    _, cls = generated
    report = certify(cls, "cpu")
    assert report.ok, report.format()
    assert report.count("passed") >= 14
