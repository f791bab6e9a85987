"""The JSON schema of constrained tool calls, built from the tools' own schemas.

A constrained call (`tool_choice` required or a named function) is generated under one schema:
`{"name": <enum of one tool>, <arguments key>: <the tool's parameters>}`, an `anyOf` of those for
several tools, an array of them for parallel calls. Each tool's parameters then sit inside that
schema, so its local references must be moved with it: definitions (`$defs` and draft-7's
`definitions`) go to the root, where `#/$defs/x` and `#/definitions/x` still find them; when the
tool has other local references (`#`, `#/properties/a`), its parameters are also defined at the
root as `$defs/tool.<name>` and those references point there (a path without array indices, which
outlines-core cannot follow).
"""
from __future__ import annotations

from typing import Any, Sequence
from urllib.parse import unquote

DEFS_KEYS = ("$defs", "definitions")
VALUE_KEYS = ("enum", "const", "default", "examples")  # JSON values, not schemas: left as they are


def local_refs(schema: Any) -> list[str]:
    """Every `$ref` string in a schema (values under enum, const, default and examples excluded)."""
    if isinstance(schema, list):
        return [r for item in schema for r in local_refs(item)]
    if not isinstance(schema, dict):
        return []
    refs = [schema["$ref"]] if isinstance(schema.get("$ref"), str) else []
    return refs + [r for k, v in schema.items() if k not in VALUE_KEYS for r in local_refs(v)]


def resolve(schema: Any, ref: str) -> Any:
    """The part of `schema` a local reference `#/a/b` points to; LookupError when it points nowhere."""
    if not ref.startswith("#") or (ref != "#" and not ref.startswith("#/")):
        raise LookupError(f"only local references (#/...) are supported, got {ref!r}")
    node = schema
    for part in ref[2:].split("/") if ref != "#" else ():
        part = unquote(part).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise LookupError(f"{ref!r} points to nothing")
    return node


def _outside_defs(ref: str) -> bool:
    """A local reference that does not point into a definition (`#`, `#/properties/a`)."""
    return ref.startswith("#") and not ref.startswith(tuple(f"#/{k}/" for k in DEFS_KEYS))


def _moved(schema: Any, prefix: str) -> Any:
    """`schema` with its local references that do not point into definitions prefixed by `prefix`."""
    if isinstance(schema, list):
        return [_moved(item, prefix) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (v if k in VALUE_KEYS else _moved(v, prefix)) for k, v in schema.items()}
    ref = out.get("$ref")
    if isinstance(ref, str) and _outside_defs(ref):
        out["$ref"] = prefix + ref[1:]
    return out


def call_schema(tools: Sequence, arguments_key: str, parallel: bool = False) -> dict:
    """The schema of one call of any of `tools` (of `Tool`), or of an array of calls with `parallel`.
    Two tools defining one name differently raise ValueError."""
    if not tools:
        raise ValueError("no tools to call")
    defs: dict[str, dict[str, Any]] = {}

    def define(key: str, name: str, value: Any) -> None:
        if defs.setdefault(key, {}).setdefault(name, value) != value:
            raise ValueError(f"tools define {key}/{name} differently; give the definitions distinct names")

    objects = []
    for tool in tools:
        home = f"tool.{tool.name}"  # a root definition holding the parameters, for references into them
        params = _moved(tool.parameters, f"#/$defs/{home}")
        for key in DEFS_KEYS:
            found = params.pop(key, {})
            if not isinstance(found, dict):
                raise ValueError(f"{key} of '{tool.name}' must be an object of schemas")
            for name, value in found.items():
                define(key, name, value)
        if any(_outside_defs(ref) for ref in local_refs(tool.parameters)):
            define("$defs", home, params)
        objects.append({"type": "object", "properties": {"name": {"type": "string", "enum": [tool.name]},
                                                         arguments_key: params},
                        "required": ["name", arguments_key], "additionalProperties": False})
    schema = objects[0] if len(objects) == 1 else {"anyOf": objects}
    if parallel:
        schema = {"type": "array", "items": schema, "minItems": 1}
    return {**schema, **defs}
