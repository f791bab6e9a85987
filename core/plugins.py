"""Plugin discovery: load every distribution registered under the `jackfield` entry-point group.

A plugin that fails to import is recorded with its error and never crashes startup; it becomes an
error only if the configuration selects one of its components (see selection.py). So is a plugin
whose `JACKFIELD_API` range excludes this jackfield's plugin API (`incompatible`, see
jackfield.sdk.version): its hooks are never registered.
`JACKFIELD_PLUGINS` (comma-separated allow-list) and `JACKFIELD_DISABLE_PLUGINS` (block-list)
filter by plugin name, i.e. the entry-point name.
"""
from __future__ import annotations

import logging
import os
import traceback
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Iterable

import pluggy

from jackfield import hookspecs

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "jackfield"


@dataclass(frozen=True)
class PluginRecord:
    """One entry point of the `jackfield` group and what happened when it was loaded."""

    name: str
    module: str
    distribution: str
    version: str
    status: str  # "loaded" | "failed" | "incompatible" | "disabled"
    error: str = ""


def _name_list(value: str | None) -> set[str] | None:
    if value is None or not value.strip():
        return None
    return {v.strip() for v in value.split(",") if v.strip()}


def is_enabled(name: str, env: dict[str, str]) -> tuple[bool, str]:
    """Apply the allow- and block-list environment variables to one plugin name."""
    allow = _name_list(env.get("JACKFIELD_PLUGINS"))
    block = _name_list(env.get("JACKFIELD_DISABLE_PLUGINS")) or set()
    if allow is not None and name not in allow:
        return False, "not in JACKFIELD_PLUGINS"
    if name in block:
        return False, "listed in JACKFIELD_DISABLE_PLUGINS"
    return True, ""


def load_plugins(env: dict[str, str] | None = None, extra: Iterable[tuple[str, object]] = ()) -> tuple[pluggy.PluginManager, list[PluginRecord]]:
    """Build the plugin manager: add the hook specs, load the entry points, register `extra`.

    `extra` takes (name, plugin object) pairs registered after discovery (used by tests and by
    programs embedding jackfield with their own in-process plugins).
    """
    env = dict(os.environ) if env is None else env
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    records: list[PluginRecord] = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = ep.dist.name if ep.dist else "?"
        version = ep.dist.version if ep.dist else "?"
        enabled, why = is_enabled(ep.name, env)
        if not enabled:
            records.append(PluginRecord(ep.name, ep.value, dist, version, "disabled", why))
            continue
        if pm.has_plugin(ep.name):
            other = next(r for r in records if r.name == ep.name)
            records.append(PluginRecord(ep.name, ep.value, dist, version, "failed",
                                        f"plugin name '{ep.name}' already taken by {other.distribution}"))
            continue
        try:
            plugin = ep.load()
            why = _api_incompatibility(plugin)
            if why:
                records.append(PluginRecord(ep.name, ep.value, dist, version, "incompatible", why))
                continue
            pm.register(plugin, name=ep.name)
            _check_known_hooks(pm, plugin)
            records.append(PluginRecord(ep.name, ep.value, dist, version, "loaded"))
        except Exception as exc:  # a broken plugin must never stop startup
            if pm.has_plugin(ep.name):
                pm.unregister(name=ep.name)
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            log.warning("plugin %s (%s) failed to load: %s", ep.name, dist, detail)
            records.append(PluginRecord(ep.name, ep.value, dist, version, "failed", detail))
    for name, plugin in extra:
        module = getattr(plugin, "__name__", type(plugin).__name__)
        why = _api_incompatibility(plugin)
        if why:
            records.append(PluginRecord(name, module, "<in-process>", "", "incompatible", why))
            continue
        pm.register(plugin, name=name)
        records.append(PluginRecord(name, module, "<in-process>", "", "loaded"))
    pm.check_pending()
    return pm, records


def _check_known_hooks(pm: pluggy.PluginManager, plugin: object) -> None:
    """`pm.check_pending` for one plugin: a hook implementation with no spec fails that plugin only
    (say, one written for a newer jackfield), instead of the whole plugin manager."""
    for caller in pm.get_hookcallers(plugin) or []:
        if not caller.has_spec() and any(i.plugin is plugin and not i.optionalhook for i in caller.get_hookimpls()):
            raise pluggy.PluginValidationError(plugin, f"implements unknown hook '{caller.name}'")


def _api_incompatibility(plugin: object) -> str | None:
    """Why the plugin's declared JACKFIELD_API (its own, or its package's) excludes this jackfield."""
    from jackfield.sdk.version import api_incompatibility, declared_api

    declared = getattr(plugin, "JACKFIELD_API", None)
    if declared is None and isinstance(getattr(plugin, "__name__", None), str):
        found = declared_api(plugin.__name__)
        declared = found[0] if found else None
    return api_incompatibility(declared) if declared is not None else None
