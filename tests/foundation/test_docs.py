"""The docs cannot drift from the code: every setting, hook and base class is documented."""
from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

from jackfield import hookspecs
from jackfield.config import Settings
from jackfield.registry import KIND_HOOKS

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


def test_every_setting_is_in_configuration_md():
    text = (DOCS / "configuration.md").read_text()
    missing = [name for name in Settings.model_fields if f"| `{name}` |" not in text]
    assert not missing, f"docs/configuration.md lacks a table row for: {', '.join(missing)}"


def test_configuration_md_documents_no_removed_setting():
    section = (DOCS / "configuration.md").read_text().split("## Every setting", 1)[1]
    rows = [line.split("`")[1] for line in section.splitlines() if line.startswith("| `")]
    stale = [name for name in rows if name not in Settings.model_fields]
    assert not stale, f"docs/configuration.md documents settings that no longer exist: {', '.join(stale)}"


def test_every_hook_and_base_class_is_in_plugins_md():
    text = (DOCS / "plugins.md").read_text()
    hooks = [name for name in vars(hookspecs) if name.startswith("jackfield_")]
    bases = [base.__name__ for _, base in KIND_HOOKS.values()]
    missing = [name for name in hooks + bases if f"`{name}" not in text]
    assert not missing, f"docs/plugins.md does not mention: {', '.join(missing)}"


def test_generated_reference_pages_are_current():
    """docs/hooks.md and docs/cli.md are generated from the hookspec and base-class docstrings and
    the argument parser; after changing those, run `python scripts/gen_docs.py`."""
    gen = runpy.run_path(str(REPO / "scripts" / "gen_docs.py"))
    for name, build in gen["PAGES"].items():
        assert (DOCS / name).read_text() == build(), f"docs/{name} is out of date: run python scripts/gen_docs.py"


def test_the_docs_site_builds_strictly(tmp_path):
    """`mkdocs build --strict`: every page in the nav exists, every link and anchor resolves."""
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "conformance-kit" / "index.html").is_file()


def test_server_md_lists_every_route_and_accepted_parameter():
    """Every built-in route, and every field a request model declares (the fields a request may
    carry; any other is a 400), appears in docs/server.md."""
    import dataclasses
    import re

    from jackfield.sampling.params import SamplingParams
    from jackfield.server import (anthropic_api, batch_api, embeddings_api, native_api, ollama_api, openai_api,
                                  status_api, tokenize_api)
    from jackfield.server.protocol import Body

    text = (DOCS / "server.md").read_text()
    modules = (anthropic_api, batch_api, embeddings_api, native_api, ollama_api, openai_api, status_api, tokenize_api)
    routes = {re.sub(r"\{[^}]+\}", "{id}", r.path) for m in modules for r in m.router.routes}
    missing = sorted(r for r in routes if r not in text)
    assert not missing, f"docs/server.md does not list the routes: {', '.join(missing)}"
    models, todo = [], [Body]
    while todo:
        cls = todo.pop()
        models.append(cls)
        todo += cls.__subclasses__()
    fields = {f.alias or name for cls in models for name, f in cls.model_fields.items()}  # as clients spell them
    fields |= {f.name for f in dataclasses.fields(SamplingParams)}  # the native API's sampling_params keys
    missing = sorted(name for name in fields if f"`{name}`" not in text)
    assert not missing, f"docs/server.md does not list the parameters: {', '.join(missing)}"
