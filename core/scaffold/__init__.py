"""`jackfield plugin new`: a pip-installable plugin package generated from a per-kind template.

A template is a directory `templates/<kind>/` of this package (shipped as package data) with a
`template.toml` (the module and class names of the component) and the files only that kind needs;
`templates/_common/` holds what every plugin has (pyproject.toml with the entry point, the
entry-point module, a README, a test that runs the conformance kit). A kind's directory may
override a common file by holding the same path. File and directory names may contain
`__package__` (the Python package name); files ending in `.jinja` are rendered with Jinja2 and lose
the suffix; files whose name starts with one `_` (not `__`) are fragments the others include, not
output.
Adding a kind to the scaffold is adding its template directory.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "templates"
COMMON = TEMPLATES / "_common"
NAME_RE = re.compile(r"[a-z][a-z0-9_]*")


class ScaffoldError(ValueError):
    """The plugin cannot be created as asked; the message says why. Nothing has been written."""


def template_kinds() -> list[str]:
    """Kinds that have a template."""
    return sorted(p.name for p in TEMPLATES.iterdir() if (p / "template.toml").is_file())


@dataclass(frozen=True)
class Plan:
    """What `create` will write: every output path with its rendered text."""

    root: Path
    files: dict[Path, str]


def _read_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib.loads(path.read_text())


def context(kind: str, name: str) -> dict:
    """The variables every template sees."""
    from jackfield.registry import KIND_HOOKS
    from jackfield.sdk.version import API_VERSION, default_api_range
    from jackfield.selection import SETTING_FOR_KIND

    camel = "".join(part.capitalize() for part in name.split("_") if part)
    meta = _read_toml(TEMPLATES / kind / "template.toml")
    ctx = {"kind": kind, "name": name, "camel": camel, "package": f"jackfield_{name}",
           "distribution": f"jackfield-{name.replace('_', '-')}", "hook": KIND_HOOKS[kind][0],
           "base": KIND_HOOKS[kind][1].__name__, "setting": SETTING_FOR_KIND.get(kind),
           "api_version": API_VERSION, "api_range": default_api_range()}
    ctx.update({k: v.format(**ctx) if isinstance(v, str) else v for k, v in meta.items()})
    return ctx


def plan(kind: str, name: str, root: Path) -> Plan:
    """Render the template for (kind, name) into memory; raises ScaffoldError on bad input."""
    import jinja2

    if not NAME_RE.fullmatch(name):
        raise ScaffoldError(f"invalid plugin name '{name}': use lowercase letters, digits and underscores, "
                            "starting with a letter (it becomes the component name, the entry-point name and "
                            "the Python package jackfield_<name>)")
    if kind not in template_kinds():
        from jackfield.cli.plugin_cmd import cli_spelling

        have = ", ".join(cli_spelling(k) for k in template_kinds())
        raise ScaffoldError(f"no template for kind '{cli_spelling(kind)}' yet (templates exist for: {have}); "
                            "docs/plugins.md describes that kind's base class to implement by hand")
    if root.exists():
        raise ScaffoldError(f"'{root}' already exists; choose another --dir or remove it")
    ctx = context(kind, name)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader([str(TEMPLATES / kind), str(COMMON)]),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    sources: dict[str, Path] = {}
    for base in (COMMON, TEMPLATES / kind):  # the kind's files override common ones of the same path
        for path in sorted(base.rglob("*")):
            rel = path.relative_to(base).as_posix()
            fragment = path.name.startswith("_") and not path.name.startswith("__")
            if path.is_file() and not fragment and path.name != "template.toml":
                sources[rel] = path
    files = {}
    for rel, path in sorted(sources.items()):
        out = rel.replace("__package__", ctx["package"])
        if out.endswith(".jinja"):
            text = env.get_template(rel).render(**ctx)
            out = out.removesuffix(".jinja")
        else:
            text = path.read_text()
        files[root / out] = text
    return Plan(root, files)


def create(kind: str, name: str, root: Path) -> Plan:
    """Write the plugin package for (kind, name) to `root`, which must not exist."""
    result = plan(kind, name, root)
    for path, text in result.files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return result
