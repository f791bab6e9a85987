"""The base every component kind shares: identity, priority, capabilities and availability.

A component is a class. Its class attributes say what it is and what it supports; `availability()`
says whether this machine can run it. Neither may import a heavy package (triton, flashinfer,
xgrammar…): discovery and `jackfield plugins` call them for every registered component. The heavy
import happens when the component is chosen and constructed.
"""
from __future__ import annotations

import importlib.util
from abc import ABCMeta
from dataclasses import dataclass, field
from typing import ClassVar

KINDS = ("attention", "quantization", "moe", "speculative", "grammar", "model", "lora", "tool_parser",
         "reasoning_parser")


@dataclass(frozen=True)
class Availability:
    """Whether a component can run here; when it cannot, `reason` says precisely why and `fix`
    (optional) what the user can do about it. `jackfield plugins doctor` prints both; without a
    `fix` it derives one from the class's declarations (requires_packages, devices, compute capability)."""

    ok: bool
    reason: str = ""
    fix: str = ""

    @classmethod
    def yes(cls, note: str = "") -> "Availability":
        return cls(True, note)

    @classmethod
    def no(cls, reason: str, fix: str = "") -> "Availability":
        return cls(False, reason, fix)


@dataclass(frozen=True)
class Capabilities:
    """What a component supports. Auto-selection checks these against the run's SelectionContext."""

    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[str, ...] = ("float32", "float16", "bfloat16")
    features: frozenset[str] = field(default_factory=frozenset)
    min_compute_capability: tuple[int, int] | None = None
    opt_in_features: frozenset[str] = field(default_factory=frozenset)
    """Features (also listed in `features`) served only when the component is named: `auto` passes
    the component over for a run that requires one of them (a path not yet verified end to end on
    the hardware it targets), so turning the feature on does not change what `auto` picks."""


@dataclass(frozen=True)
class SelectionContext:
    """The facts a component is matched against: device, dtype and what the model needs."""

    device: str = "cpu"
    dtype: str = "float32"
    compute_capability: tuple[int, int] | None = None
    required_features: frozenset[str] = field(default_factory=frozenset)
    architectures: tuple[str, ...] = ()
    quantization: str | None = None
    kv_layout: str = "per_head"  # the KVLayout kind the model stores (attention backends must read it)
    moe_features: frozenset[str] | None = None  # what the model's expert layers need; None: it has none
    head_dim: int | None = None  # width of a cached K head (the model's KV layout); None: not known


class Component(metaclass=ABCMeta):
    """Base class of every pluggable component (attention backend, quantization method, …)."""

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    priority: ClassVar[int] = 0
    capabilities: ClassVar[Capabilities] = Capabilities()
    description: ClassVar[str] = ""
    requires_packages: ClassVar[tuple[str, ...]] = ()
    """Import names that must be installed; checked with find_spec, never imported at discovery."""

    @classmethod
    def availability(cls) -> Availability:
        """Can this component run on this machine at all? Override to add checks (CUDA, SM …)."""
        for pkg in cls.requires_packages:
            if importlib.util.find_spec(pkg) is None:
                return Availability.no(f"Python package '{pkg}' is not installed")
        if "cpu" not in cls.capabilities.devices and not cuda_available():
            return Availability.no("needs a CUDA device and none is visible")
        return Availability.yes()

    @classmethod
    def incompatibilities(cls, ctx: SelectionContext) -> list[str]:
        """Reasons this component cannot serve `ctx`; an empty list means compatible."""
        caps, reasons = cls.capabilities, []
        if ctx.device not in caps.devices:
            reasons.append(f"device '{ctx.device}' not supported (supports {', '.join(caps.devices)})")
        if ctx.dtype not in caps.dtypes:
            reasons.append(f"dtype '{ctx.dtype}' not supported (supports {', '.join(caps.dtypes)})")
        missing = sorted(ctx.required_features - caps.features)
        if missing:
            reasons.append(f"lacks required feature(s): {', '.join(missing)}")
        need = caps.min_compute_capability
        if need and ctx.device == "cuda" and ctx.compute_capability and ctx.compute_capability < need:
            have = ctx.compute_capability
            reasons.append(f"compute capability {have[0]}.{have[1]} < required {need[0]}.{need[1]}")
        return reasons

    @classmethod
    def auto_exclusions(cls, ctx: SelectionContext) -> list[str]:
        """Why `auto` passes this component over for `ctx` although it can serve it when named
        (its `opt_in_features` that `ctx` requires); an empty list: `auto` may pick it."""
        opt_in = sorted(ctx.required_features & cls.capabilities.opt_in_features)
        if not opt_in:
            return []
        return [f"its {', '.join(opt_in)} is opt-in: auto does not pick it for a run that needs that; "
                f"name '{cls.name}' in the configuration to use it"]


def package_availability(import_name: str, distribution: str, minimum: str | None = None) -> Availability:
    """Whether a Python package is installed (found without importing it) and at least `minimum`;
    the reason names the package, the version found and the one needed."""
    import importlib.metadata

    if importlib.util.find_spec(import_name) is None:
        return Availability.no(f"Python package '{distribution}' is not installed (pip install {distribution})")
    try:
        version = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return Availability.no(f"'{import_name}' is importable but distribution '{distribution}' has no metadata")
    if minimum and _version_tuple(version) < _version_tuple(minimum):
        return Availability.no(f"{distribution} {version} is installed; {minimum} or newer is needed")
    return Availability.yes(f"{distribution} {version}")


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split("."):
        digits = "".join(c for c in part if c.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def require_cuda(min_cc: tuple[int, int] | None = None) -> Availability:
    """Shared check for GPU-only components: a CUDA device, optionally of a minimum SM version."""
    if not cuda_available():
        return Availability.no("needs a CUDA device and none is visible")
    if min_cc:
        import torch

        cc = torch.cuda.get_device_capability()
        if cc < min_cc:
            return Availability.no(f"compute capability {cc[0]}.{cc[1]} < required {min_cc[0]}.{min_cc[1]}")
    return Availability.yes()
