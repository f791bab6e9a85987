"""`jackfield plugins [--json]`: every discovered component, its origin and availability."""
from __future__ import annotations

import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("plugins", help="List discovered plugins and components")
    p.add_argument("--json", action="store_true", help="Print a JSON list, one object per component")
    p.set_defaults(func=run)


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
