"""`jackfield serve`: start the HTTP server (OpenAI / Anthropic / Ollama / native APIs)."""
from __future__ import annotations

from jackfield.cli.settings_args import add_settings_arguments, cli_overrides


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="Serve a model over HTTP (default: the embedded SmolLM2)")
    add_settings_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from jackfield.config import load_settings
    from jackfield.server.launch import launch_server

    loaded = load_settings(args.config_file, cli_overrides(args))
    return launch_server(loaded.settings)
