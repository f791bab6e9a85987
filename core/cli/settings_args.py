"""Turn every Settings field into a CLI flag, and parsed flags back into a settings dict."""
from __future__ import annotations

import argparse
import json
import typing

from jackfield.config import Settings, is_container


def add_settings_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    group = parser.add_argument_group("settings (also JACKFIELD_<KEY> or the --config file)")
    group.add_argument("--config", dest="config_file", default=None, help="TOML or YAML settings file")
    for name, field in Settings.model_fields.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        help_text = f"{field.description} (default: {field.get_default(call_default_factory=True)!r})" if field.description else None
        if field.annotation is bool or set(typing.get_args(field.annotation)) == {bool, type(None)}:
            group.add_argument(flag, dest=name, default=None, action=argparse.BooleanOptionalAction, help=help_text)
        elif typing.get_origin(field.annotation) is dict:
            group.add_argument(flag, dest=name, default=None, type=json.loads, help=help_text)
        elif is_container(field.annotation):  # a list: several values after one flag
            group.add_argument(flag, dest=name, default=None, nargs="+", help=help_text)
        else:
            group.add_argument(flag, dest=name, default=None, help=help_text)


def cli_overrides(args: argparse.Namespace) -> dict:
    """Only the flags the user actually gave (None means not given)."""
    return {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
