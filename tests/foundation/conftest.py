"""Fixtures for the foundation tests: the fixture plugins, installed the way users install plugins.

`tests/fixtures/install.sh` pip-installs (non-editable) jackfield-example-plugin,
jackfield-broken-plugin, jackfield-dup-plugin, jackfield-faulty-plugin and jackfield-future-plugin into a throwaway `--target` directory once per
session. Nothing is installed into the environment itself: the directory is put on PYTHONPATH only
in the subprocesses that want the plugins (`run_cli`), or on sys.path only for the duration of one
in-process test (`plugin_path`). Entry points are found through the `.dist-info` directories there.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CLI = "import sys; from jackfield.cli import main; sys.exit(main())"


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """A directory holding the fixture plugin distributions."""
    target = tmp_path_factory.mktemp("plugin-site")
    done = subprocess.run(["bash", str(FIXTURES / "install.sh"), str(target)], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, f"installing the fixture plugins failed:\n{done.stdout}\n{done.stderr}"
    return target


def subprocess_env(paths: list[Path], **env: str) -> dict[str, str]:
    """os.environ without any JACKFIELD_* variable, plus `env`, with `paths` first on PYTHONPATH."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("JACKFIELD_")}
    out["PYTHONPATH"] = os.pathsep.join([*map(str, paths), *filter(None, [os.environ.get("PYTHONPATH")])])
    out.update(env)
    return out


@pytest.fixture(scope="session")
def run_python(plugin_site):
    """Run `python -c CODE ARGS...` in a subprocess that sees the fixture plugins (plus `paths`)."""

    def run(code: str, *args: str, paths: tuple[Path, ...] = (), cwd: Path | None = None,
            **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                              cwd=cwd, env=subprocess_env([*paths, plugin_site], **env))

    return run


@pytest.fixture(scope="session")
def run_cli(run_python):
    """Run `jackfield ARGS...` in a subprocess that sees the fixture plugins; returns CompletedProcess."""

    def run(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
        return run_python(CLI, *args, cwd=cwd, **env)

    return run


@pytest.fixture
def plugin_path(plugin_site, monkeypatch) -> Path:
    """Put the fixture plugins on sys.path for one in-process test."""
    monkeypatch.syspath_prepend(str(plugin_site))
    return plugin_site


@pytest.fixture
def cli(plugin_path, monkeypatch, capsys):
    """Run `jackfield ARGS...` in this process with the fixture plugins importable and only the
    JACKFIELD_* variables given in `env`; returns (exit code, stdout, stderr)."""
    from jackfield.cli import main

    def run(*args: str, **env: str) -> tuple[int, str, str]:
        for var in [v for v in os.environ if v.startswith("JACKFIELD_")]:
            monkeypatch.delenv(var)
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse errors
            code = exc.code
        out, err = capsys.readouterr()
        return code, out, err

    return run
