"""The wheel carries every package of the source tree.

pyproject.toml lists the packages explicitly (the import names differ from the directories: core/ is
`jackfield`, plugins/ is `jackfield_plugins`). An editable install finds a package missing from that
list anyway, so only a wheel install fails; this test catches it on the source tree.
"""
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _source_packages(config: dict) -> set[str]:
    found = set()
    for name, directory in config["package-dir"].items():
        for init in (ROOT / directory).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / directory).parts
            if "templates" in parts or "__pycache__" in parts:  # scaffold templates are package data
                continue
            found.add(".".join((name, *parts)))
    return found


def test_every_source_package_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, found = set(config["packages"]), _source_packages(config)
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - found == set(), "listed packages without a directory"
