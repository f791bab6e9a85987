"""Interface checks every component kind shares: the class is a well-formed component of its kind.

These need no working implementation, so a registered class missing a method fails here with the
method named, before any behaviour check tries to construct it.
"""
from __future__ import annotations

from jackfield.sdk.component import KINDS, Availability, Capabilities, SelectionContext
from jackfield.testing.kit import Check, KitTarget, expect

DEVICES = {"cpu", "cuda"}
DTYPES = {"float32", "float16", "bfloat16"}


def _base(kind: str) -> type:
    from jackfield.registry import component_base

    return component_base(kind)


def abstract_methods(cls: type) -> list[str]:
    return sorted(getattr(cls, "__abstractmethods__", ()))


def interface_ok(target: KitTarget) -> bool:
    """Whether the class can be constructed at all (so the behaviour checks may run)."""
    return (target.kind in KINDS and isinstance(target.cls, type) and issubclass(target.cls, _base(target.kind))
            and not abstract_methods(target.cls))


def _subclass(t: KitTarget) -> None:
    expect(t.kind in KINDS, f"unknown kind '{t.kind}' (kinds: {', '.join(KINDS)})")
    base = _base(t.kind)
    expect(isinstance(t.cls, type) and issubclass(t.cls, base),
           f"{t.cls!r} is not a subclass of jackfield.sdk.{base.__name__}")


def _named(t: KitTarget) -> None:
    name = getattr(t.cls, "name", "")
    expect(isinstance(name, str) and name.isidentifier(),
           f"`name` must be a non-empty identifier-like string, got {name!r}")


def _methods(t: KitTarget) -> None:
    missing = abstract_methods(t.cls)
    expect(not missing, f"{t.cls.__name__} does not implement {', '.join(missing)} "
                        f"(abstract in jackfield.sdk.{_base(t.kind).__name__})")


def _capabilities(t: KitTarget) -> None:
    caps = t.cls.capabilities
    expect(isinstance(caps, Capabilities), f"`capabilities` must be a Capabilities, got {type(caps).__name__}")
    expect(caps.devices and set(caps.devices) <= DEVICES, f"declared devices {caps.devices} must be a non-empty "
                                                          f"subset of {sorted(DEVICES)}")
    expect(set(caps.dtypes) <= DTYPES, f"declared dtypes {caps.dtypes} must be a subset of {sorted(DTYPES)}")
    extra = sorted(caps.opt_in_features - caps.features)
    expect(not extra, f"opt_in_features {extra} are not in features (an opt-in feature is one the component has)")


def _availability(t: KitTarget) -> None:
    avail = t.cls.availability()
    expect(isinstance(avail, Availability), f"availability() must return an Availability, got {avail!r}")
    expect(avail.ok or bool(avail.reason), "availability() says no without a reason")


def _api_range(t: KitTarget) -> None:
    from jackfield.sdk.version import API_VERSION, api_incompatibility, declared_api, default_api_range

    found = declared_api(t.cls.__module__)
    expect(found is not None, f"neither {t.cls.__module__} nor a package above it declares JACKFIELD_API; add "
                              f"JACKFIELD_API = \"{default_api_range()}\" to the plugin's entry-point module "
                              f"(this jackfield's plugin API is {API_VERSION})")
    declared, where = found
    why = api_incompatibility(declared)
    expect(why is None, f"{where}.JACKFIELD_API: {why}")


def _device_declared(t: KitTarget) -> str | None:
    if t.device not in t.cls.capabilities.devices:
        return f"'{t.cls.name}' does not declare device '{t.device}'"
    return None


def checks(target: KitTarget) -> list[Check]:
    return [
        Check(f"is a subclass of the {target.kind} base class", _subclass),
        Check("has a name", _named),
        Check("implements every abstract method", _methods),
        Check("declares well-formed capabilities", _capabilities),
        Check("reports its availability with a reason", _availability),
        Check("declares the plugin API versions it supports (JACKFIELD_API), this jackfield's among them", _api_range),
    ]


def runs_on_device(target: KitTarget) -> str | None:
    """A `requires` for behaviour checks: skip when the device is undeclared or unavailable here."""
    why = _device_declared(target)
    if why:
        return why
    avail = target.cls.availability()
    if not avail.ok:
        return f"unavailable here: {avail.reason}"
    if target.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return "no CUDA device is visible"
    return None


def cannot_serve(target: KitTarget, dtype: str, **context) -> str | None:
    """Why the component says it cannot serve `dtype` on the target's device in this installation
    (its `incompatibilities()`), or None. `context` adds SelectionContext fields."""
    reasons = target.cls.incompatibilities(SelectionContext(device=target.device, dtype=dtype, **context))
    return f"cannot serve {dtype} on {target.device} here: {'; '.join(reasons)}" if reasons else None


def base_dtype(target: KitTarget, **context) -> str:
    """The dtype most checks run in: float32 when declared, else the first declared dtype the
    component can serve here."""
    dtypes = target.cls.capabilities.dtypes
    ordered = (["float32"] if "float32" in dtypes else []) + [d for d in dtypes if d != "float32"]
    return next((d for d in ordered if cannot_serve(target, d, **context) is None), ordered[0])
