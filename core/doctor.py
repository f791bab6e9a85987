"""`jackfield plugins doctor`: what is unavailable, why, and how to fix it; and whether what the
configuration selects can run.

Fixes come from the component itself when its `availability()` gives one (`Availability.fix`);
otherwise from its declarations: a missing `requires_packages` entry (naming the extra of its
distribution that installs it, when there is one), a CUDA-only component without a visible GPU, a
GPU below `min_compute_capability`. Plugins that failed to load, plugins for another plugin API
version, registry errors and name conflicts each get their own fix.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from dataclasses import dataclass

from jackfield.registry import ComponentInfo, Registry

GPU_GENERATIONS = {(7, 0): "Volta (V100)", (7, 5): "Turing (T4)", (8, 0): "Ampere (A100)", (8, 6): "Ampere (A10, RTX 30)",
                   (8, 9): "Ada (L4, L40, RTX 40)", (9, 0): "Hopper (H100, H200)", (10, 0): "Blackwell (B200)"}


@dataclass(frozen=True)
class Finding:
    subject: str  # "attention 'flashinfer' (jackfield 0.1.0)", "plugin 'broken' (jackfield-broken-plugin 0.1.0)"
    problem: str
    fix: str


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def install_hint(package: str, distribution: str) -> str:
    """How to install import name `package`: the distribution's extra that requires it, or pip."""
    try:
        requirements = importlib.metadata.requires(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        requirements = []
    for req in requirements:
        match = re.match(r"\s*([A-Za-z0-9._-]+).*extra\s*==\s*['\"]([^'\"]+)['\"]", req)
        if match and _normalize(match.group(1)).startswith(_normalize(package)):
            return f"pip install '{distribution}[{match.group(2)}]'  (installs {match.group(1)})"
    return f"pip install {package}"


def _alternatives(registry: Registry, info: ComponentInfo) -> str:
    names = sorted({i.name for i in registry.of_kind(info.kind) if i.name != info.name and i.availability().ok})
    return f"; available {info.kind} components here: {', '.join(names)}" if names else ""


def component_fix(registry: Registry, info: ComponentInfo, reason: str, fix: str) -> str:
    if fix:
        return fix
    cls = info.cls
    missing = [p for p in cls.requires_packages if importlib.util.find_spec(p) is None]
    if missing:
        return "; ".join(install_hint(p, info.distribution) for p in missing)
    caps = cls.capabilities
    import torch

    if "cpu" not in caps.devices and not torch.cuda.is_available():
        where = ("this torch build has no CUDA support (torch.version.cuda is None): install a CUDA build of torch"
                 if torch.version.cuda is None else "no CUDA device is visible (check CUDA_VISIBLE_DEVICES and the driver)")
        return f"run on a machine with an NVIDIA GPU; {where}" + _alternatives(registry, info)
    need = caps.min_compute_capability
    if need and torch.cuda.is_available() and torch.cuda.get_device_capability() < need:
        have = torch.cuda.get_device_capability()
        gen = GPU_GENERATIONS.get(tuple(need), "")
        return (f"needs a GPU of compute capability {need[0]}.{need[1]} or newer{f' ({gen})' if gen else ''}; "
                f"this one is {have[0]}.{have[1]}" + _alternatives(registry, info))
    return f"see the reason above; report it to the plugin's authors ({info.distribution})" + _alternatives(registry, info)


def findings(registry: Registry) -> list[Finding]:
    """Everything discovered that cannot be used, each with a fix."""
    out = []
    for p in registry.plugins:
        subject = f"plugin '{p.name}' ({p.distribution} {p.version})"
        if p.status == "failed":
            out.append(Finding(subject, f"failed to load: {p.error}",
                               f"reinstall or update {p.distribution}, or switch it off with "
                               f"JACKFIELD_DISABLE_PLUGINS={p.name}"))
        elif p.status == "incompatible":
            out.append(Finding(subject, p.error, f"install a {p.distribution} release that supports this plugin API "
                                                 f"(pip install -U {p.distribution}), or switch it off with "
                                                 f"JACKFIELD_DISABLE_PLUGINS={p.name}"))
    for err in registry.errors:
        out.append(Finding("registry", err, "fix the plugin's register hook (it must register subclasses of the "
                                            "kind's base class, each with a `name`), or disable the plugin"))
    for infos in registry.components.values():
        for info in infos:
            avail = info.availability()
            if not avail.ok:
                out.append(Finding(f"{info.kind} '{info.name}' ({info.distribution} {info.version})", avail.reason,
                                   component_fix(registry, info, avail.reason, avail.fix)))
    for group in registry.conflicts():
        kind, name = group[0].kind, group[0].name
        dists = ", ".join(i.distribution for i in group)
        out.append(Finding(f"{kind} '{name}'", f"registered by {dists}",
                           f'if you select it, add plugin_choice = {{"{kind}.{name}" = "<one of: {dists}>"}}'))
    return out
