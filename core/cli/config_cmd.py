"""`jackfield config show [--config F] [--json]`: the effective settings and each value's source."""
from __future__ import annotations

import json

from jackfield.cli.settings_args import add_settings_arguments, cli_overrides


def add_parser(sub) -> None:
    p = sub.add_parser("config", help="Inspect configuration")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    show = csub.add_parser("show", help="Print the effective configuration and where each value came from")
    show.add_argument("--json", action="store_true", help="Print JSON")
    add_settings_arguments(show)
    show.set_defaults(func=run_show)


def run_show(args) -> int:
    from jackfield.config import load_settings

    loaded = load_settings(args.config_file, cli_overrides(args))
    values = loaded.settings.model_dump(mode="json")
    if args.json:
        print(json.dumps({k: {"value": v, "source": loaded.sources[k]} for k, v in values.items()}, indent=2))
        return 0
    width = max(len(k) for k in values)
    for k, v in values.items():
        print(f"{k.ljust(width)}  {json.dumps(v):<30}  {loaded.sources[k]}")
    return 0
