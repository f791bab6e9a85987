"""The `jackfield` command line. Subcommands live one per module; plugins add more via a hook."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from jackfield import __version__


def build_parser(pm=None) -> argparse.ArgumentParser:
    from jackfield.cli import bench, config_cmd, plugin_cmd, plugins_cmd, serve

    parser = argparse.ArgumentParser(prog="jackfield", description="Fast LLM serving from swappable plugins.")
    parser.add_argument("--version", action="version", version=f"jackfield {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    plugins_cmd.add_parser(sub)
    plugin_cmd.add_parser(sub)
    config_cmd.add_parser(sub)
    serve.add_parser(sub)
    bench.add_parser(sub)
    if pm is not None:
        pm.hook.jackfield_add_cli_commands(subparsers=sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from jackfield.plugins import load_plugins

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    pm, _ = load_plugins()
    parser = build_parser(pm)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `jackfield ... | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit-time flush must not fail too
        return 0
    except Exception as exc:
        from jackfield.config import ConfigError
        from jackfield.selection import SelectionError

        if isinstance(exc, (ConfigError, SelectionError, FileNotFoundError, ValueError)):
            print(f"jackfield: error: {exc}", file=sys.stderr)
            return 2
        raise
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
