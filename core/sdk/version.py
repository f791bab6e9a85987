"""The plugin API's version, and how a plugin states which versions it supports.

`API_VERSION` versions the plugin API, not the jackfield package: the hook specifications
(`jackfield.hookspecs`), `jackfield.sdk` and `jackfield.testing`. It follows semantic versioning:
a minor release only adds (a hook, a base-class method with a default, an SDK export, a kit check
for behaviour the docs already required); a major release may change or remove. docs/plugins.md
states the promise.

A plugin declares the versions it supports in its entry-point module (or a package above it), as
a PEP 440 specifier set:

    JACKFIELD_API = ">=1.0,<2"

Discovery reads it right after importing the module and, when this jackfield's API_VERSION is
outside the range, records the plugin as `incompatible` with the reason instead of registering
its hooks: it is listed as unavailable, and only fails startup if the configuration selects one of
its components. A plugin without the attribute is loaded as if it declared the current major.
"""
from __future__ import annotations

API_VERSION = "1.0.0"


def default_api_range() -> str:
    """The range a new plugin declares: this minor version up to the next major."""
    major, minor, _ = (int(x) for x in API_VERSION.split("."))
    return f">={major}.{minor},<{major + 1}"


def api_incompatibility(declared: object) -> str | None:
    """Why a plugin declaring `declared` as its JACKFIELD_API cannot run here, or None if it can."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    if not isinstance(declared, str):
        return f"JACKFIELD_API must be a version specifier string such as '{default_api_range()}', got {declared!r}"
    try:
        spec = SpecifierSet(declared)
    except InvalidSpecifier:
        return f"JACKFIELD_API {declared!r} is not a valid version specifier (e.g. '{default_api_range()}')"
    if API_VERSION not in spec:
        return (f"supports jackfield plugin API {declared}, but this jackfield provides API {API_VERSION} "
                f"(jackfield.sdk.API_VERSION)")
    return None


def declared_api(module_name: str) -> tuple[object, str] | None:
    """The JACKFIELD_API a module declares, or the closest package above it declares, with the
    name of the module that declares it; None when none does. Looks only at imported modules."""
    import sys

    parts = module_name.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "JACKFIELD_API"):
            return module.JACKFIELD_API, name
    return None
