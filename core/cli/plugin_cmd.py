"""`jackfield plugin check NAME` (the conformance kit on an installed component) and
`jackfield plugin new` (a new plugin package from a template)."""
from __future__ import annotations

import sys

from jackfield.sdk.component import KINDS

# The CLI's short spellings of two kinds.
KIND_ALIASES = {"quant": "quantization", "spec": "speculative"}
CLI_KINDS = ("attention", "quant", "moe", "spec", "grammar", "model", "lora", "tool_parser", "reasoning_parser")


def kind_arg(value: str) -> str:
    """argparse type for --kind: a kind or its CLI spelling, returned as the kind."""
    import argparse

    kind = KIND_ALIASES.get(value, value)
    if kind not in KINDS:
        raise argparse.ArgumentTypeError(f"unknown kind '{value}' (choose from {', '.join(CLI_KINDS)})")
    return kind


def cli_spelling(kind: str) -> str:
    return next((alias for alias, k in KIND_ALIASES.items() if k == kind), kind)


def add_parser(sub) -> None:
    p = sub.add_parser("plugin", help="Create a plugin package, or certify an installed component")
    cmds = p.add_subparsers(dest="plugin_command", metavar="SUBCOMMAND", required=True)
    check = cmds.add_parser("check", help="Run the conformance kit on an installed component")
    check.add_argument("name", help="The component's name, as `jackfield plugins` lists it")
    check.add_argument("--kind", type=kind_arg, help=f"The component's kind ({', '.join(CLI_KINDS)}); "
                                                      "needed only when the name exists in several kinds")
    check.add_argument("--device", choices=("cpu", "cuda"), help="Device to run the checks on "
                                                                  "(default: cuda when visible, else cpu)")
    check.set_defaults(func=run_check)
    new = cmds.add_parser("new", help="Create a plugin package (pyproject, module, README, kit test) from a template")
    from jackfield.scaffold import template_kinds

    new.add_argument("--kind", type=kind_arg, required=True, help="The component kind; templates exist for: "
                     + ", ".join(cli_spelling(k) for k in template_kinds()))
    new.add_argument("--name", required=True, help="Plugin and component name: lowercase letters, digits, underscores")
    new.add_argument("--dir", help="Directory to create (default: ./jackfield-NAME); must not exist")
    new.set_defaults(func=run_new)


def _installed_names(registry, kinds) -> str:
    parts = []
    for kind in kinds:
        names = sorted({i.name for i in registry.of_kind(kind)})
        parts.append(f"{kind}: {', '.join(names) or 'none'}")
    return "; ".join(parts)


def run_check(args) -> int:
    from jackfield.plugins import load_plugins
    from jackfield.registry import build_registry
    from jackfield.testing import certify

    registry = build_registry(*load_plugins())
    kinds = [args.kind] if args.kind else list(KINDS)
    infos = [i for kind in kinds for i in registry.candidates(kind, args.name)]
    if not infos:
        what = f"{args.kind} component" if args.kind else "component"
        print(f"jackfield: error: no installed {what} named '{args.name}' (installed {_installed_names(registry, kinds)})",
              file=sys.stderr)
        for p in registry.failed_plugins():
            print(f"note: plugin {p.name} ({p.distribution}) failed to load: {p.error}", file=sys.stderr)
        return 2
    found = sorted({i.kind for i in infos})
    if len(found) > 1:
        print(f"jackfield: error: '{args.name}' names a component of several kinds ({', '.join(found)}); "
              "choose one with --kind", file=sys.stderr)
        return 2
    device = args.device or _default_device()
    if device == "cuda" and _default_device() != "cuda":
        print("jackfield: error: --device cuda, but no CUDA device is visible", file=sys.stderr)
        return 2
    ok = True
    for info in infos:  # several when two distributions register the name
        print(f"{info.distribution} {info.version} (plugin '{info.plugin}')")
        report = certify(info.cls, device, info.kind)
        print(report.format())
        ok &= report.ok
    return 0 if ok else 1


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_new(args) -> int:
    from pathlib import Path

    from jackfield.scaffold import ScaffoldError, create

    root = Path(args.dir or f"jackfield-{args.name.replace('_', '-')}")
    try:
        made = create(args.kind, args.name, root)
    except ScaffoldError as exc:
        print(f"jackfield: error: {exc}", file=sys.stderr)
        return 2
    print(f"created {cli_spelling(args.kind)} plugin '{args.name}' in {root}/:")
    for path in made.files:
        print(f"  {path.relative_to(root)}")
    where = root if root.is_absolute() else f"./{root}"
    print(f"next: pip install -e {where}  &&  jackfield plugin check {args.name}  &&  pytest {where}")
    return 0
