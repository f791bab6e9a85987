"""`jackfield plugins [--json]`: every discovered component, its origin and availability;
`jackfield plugins doctor`: why each unavailable one is, how to fix it, and whether the configuration's
selection can run."""
from __future__ import annotations

import json
import sys

from jackfield.cli.settings_args import add_settings_arguments, cli_overrides


def add_parser(sub) -> None:
    p = sub.add_parser("plugins", help="List discovered plugins and components; `plugins doctor` diagnoses them")
    p.add_argument("--json", action="store_true", help="Print a JSON list, one object per component")
    p.set_defaults(func=run)
    actions = p.add_subparsers(dest="plugins_command", metavar="ACTION")
    doctor = actions.add_parser("doctor", help="Why each unavailable component is, how to fix it; exit 0 when "
                                               "everything the configuration selects is available")
    add_settings_arguments(doctor)
    doctor.set_defaults(func=run_doctor)


def run_doctor(args) -> int:
    from jackfield.config import load_settings
    from jackfield.doctor import findings
    from jackfield.plugins import load_plugins
    from jackfield.registry import build_registry
    from jackfield.runtime_setup import resolve_target, select_components
    from jackfield.selection import SelectionError

    settings = load_settings(args.config_file, cli_overrides(args)).settings
    registry = build_registry(*load_plugins())
    found = findings(registry)
    print(f"{len(found)} problem(s) among {len(registry.plugins)} plugins:" if found else
          f"every component of the {len(registry.plugins)} plugins is available")
    for f in found:
        print(f"  x {f.subject}: {f.problem}\n      fix: {f.fix}")
    try:
        source, config, device, dtype = resolve_target(settings)
        choices = select_components(settings, registry, config, device, dtype)
    except (SelectionError, FileNotFoundError, ValueError) as exc:
        print(f"\nthe configuration's selection cannot run: {exc}")
        return 1
    print(f"\nselected for {source.origin} on {device.type} ({str(dtype).removeprefix('torch.')}):")
    for key, choice in choices.items():
        print(f"  {key:<18} {choice.name or '-':<18} {choice.reason}")
    print("everything selected is available")
    return 0


def run(args) -> int:
    from jackfield.plugins import load_plugins
    from jackfield.registry import build_registry

    pm, records = load_plugins()
    reg = build_registry(pm, records)
    rows = reg.describe()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        cols = ["kind", "name", "plugin", "version", "available", "priority", "reason"]
        table = [[str(r[c]) for c in cols] for r in rows]
        widths = [max(len(c), *(len(t[i]) for t in table)) if table else len(c) for i, c in enumerate(cols)]
        widths[-1] = len(cols[-1])
        print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths)))
        for t in table:
            print("  ".join(v.ljust(w) for v, w in zip(t, widths)))
    for err in reg.errors:
        print(f"warning: {err}", file=sys.stderr)
    for group in reg.conflicts():
        names = " and ".join(f"{i.distribution} ({i.plugin})" for i in group)
        print(f"warning: {group[0].kind} '{group[0].name}' is provided by {names}; set plugin_choice", file=sys.stderr)
    return 0
