"""Selection: one component per kind, by name from the configuration or `auto`, with the reason."""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from jackfield.registry import ComponentInfo, Registry
from jackfield.sdk.component import SelectionContext

log = logging.getLogger(__name__)

# kind -> settings field that names it; kinds whose "auto" may resolve to nothing are optional.
SETTING_FOR_KIND = {
    "attention": "attention_backend",
    "quantization": "quantization",
    "moe": "moe_backend",
    "speculative": "speculative_algorithm",
    "grammar": "grammar_backend",
    "lora": "lora_backend",
}
OPTIONAL_KINDS = {"moe", "speculative", "grammar", "lora"}
# Per-mode attention backends (SGLang's --prefill/--decode-attention-backend): extra attention
# choices, made only when their setting is given; `attention` stays the default for both modes.
# Ordered: prefill, then decode.
ATTENTION_MODES = {"prefill_attention": "prefill_attention_backend", "decode_attention": "decode_attention_backend"}


class SelectionError(RuntimeError):
    """The configuration asks for a component that does not exist, cannot run, or is ambiguous."""


@dataclass(frozen=True)
class Choice:
    kind: str
    requested: str | None
    info: ComponentInfo | None
    reason: str

    @property
    def name(self) -> str | None:
        return self.info.name if self.info else None

    def as_dict(self) -> dict:
        return {"kind": self.kind, "requested": self.requested, "name": self.name,
                "plugin": self.info.plugin if self.info else None, "reason": self.reason}


def _resolve_conflict(kind: str, name: str, infos: list[ComponentInfo], plugin_choice: dict[str, str]) -> ComponentInfo:
    if len(infos) == 1:
        return infos[0]
    key = f"{kind}.{name}"
    wanted = plugin_choice.get(key)
    if wanted:
        for info in infos:
            if wanted in (info.plugin, info.distribution):
                return info
        raise SelectionError(f"plugin_choice['{key}'] = '{wanted}' matches none of: "
                             + ", ".join(f"{i.plugin} ({i.distribution})" for i in infos))
    dists = " and ".join(f"'{i.distribution}' (plugin {i.plugin})" for i in infos)
    raise SelectionError(f"{kind} component '{name}' is provided by both {dists}; "
                         f"choose one with plugin_choice = {{\"{key}\" = \"<plugin or distribution>\"}}")


def _failed_hint(registry: Registry) -> str:
    failed = registry.failed_plugins()
    if not failed:
        return ""
    return "; plugins not loaded: " + "; ".join(f"{p.name} ({p.distribution}) {p.status}: {p.error}" for p in failed)


def _by_priority(registry: Registry, kind: str) -> list[str]:
    """Component names of `kind`, best priority first; equal priorities by name (a set's order would
    differ from run to run)."""
    return sorted(sorted({i.name for i in registry.of_kind(kind)}),
                  key=lambda n: -max(i.priority for i in registry.candidates(kind, n)))


def choose(registry: Registry, kind: str, requested: str | None, ctx: SelectionContext,
           plugin_choice: dict[str, str] | None = None) -> Choice:
    """Pick the component of `kind`: the one named, or with `auto` the best compatible one that does
    not exclude itself from `auto` for this context (`Component.auto_exclusions`: opt-in features)."""
    plugin_choice = plugin_choice or {}
    if requested in (None, "", "none"):
        return Choice(kind, requested, None, "disabled by configuration")
    if requested != "auto":
        infos = registry.candidates(kind, requested)
        if not infos:
            names = sorted({i.name for i in registry.of_kind(kind)})
            raise SelectionError(f"no {kind} component named '{requested}' (registered: {', '.join(names) or 'none'})"
                                 + _failed_hint(registry))
        info = _resolve_conflict(kind, requested, infos, plugin_choice)
        avail = info.availability()
        if not avail.ok:
            raise SelectionError(f"{kind} component '{requested}' is unavailable: {avail.reason}")
        problems = info.cls.incompatibilities(ctx)
        if problems:
            able = compatible_names(registry, kind, ctx, plugin_choice)
            raise SelectionError(f"{kind} component '{requested}' cannot serve this model: {'; '.join(problems)}; "
                                 + (f"{kind} components that can: {', '.join(able)}" if able else
                                    f"no registered {kind} component can"))
        return Choice(kind, requested, info, "selected by configuration")
    skipped = []
    names = _by_priority(registry, kind)
    for name in names:
        info = _resolve_conflict(kind, name, registry.candidates(kind, name), plugin_choice)
        avail = info.availability()
        problems = [avail.reason] if not avail.ok else info.cls.incompatibilities(ctx) or info.cls.auto_exclusions(ctx)
        if problems:
            skipped.append(f"{name}: {'; '.join(problems)}")
            continue
        why = f"auto: highest-priority compatible (priority {info.priority})"
        if skipped:
            why += "; skipped " + " | ".join(skipped)
        return Choice(kind, "auto", info, why)
    if kind in OPTIONAL_KINDS:
        return Choice(kind, "auto", None, "none available" + (": " + " | ".join(skipped) if skipped else ""))
    raise SelectionError(f"no available {kind} component for device={ctx.device} dtype={ctx.dtype}: "
                         + (" | ".join(skipped) or "none registered") + _failed_hint(registry))


def compatible_names(registry: Registry, kind: str, ctx: SelectionContext,
                     plugin_choice: dict[str, str] | None = None) -> list[str]:
    """Names of the available components of `kind` that can serve `ctx` (best first)."""
    able = []
    for name in _by_priority(registry, kind):
        try:
            info = _resolve_conflict(kind, name, registry.candidates(kind, name), plugin_choice or {})
        except SelectionError:  # provided twice and not settled by plugin_choice
            continue
        if info.availability().ok and not info.cls.incompatibilities(ctx):
            able.append(name)
    return able


def _moe_choice(registry: Registry, settings, ctx: SelectionContext, plugin_choice: dict[str, str]) -> Choice:
    """The MoE dispatcher: matched against what the model's expert layers need (ctx.moe_features);
    a model with expert layers must get one."""
    if ctx.moe_features is None:
        return choose(registry, "moe", settings.moe_backend, ctx, plugin_choice)
    need = replace(ctx, required_features=ctx.moe_features)
    what = f"model {list(ctx.architectures)} has expert layers ({', '.join(sorted(ctx.moe_features))} experts)"
    try:
        choice = choose(registry, "moe", settings.moe_backend, need, plugin_choice)
    except SelectionError as exc:
        raise SelectionError(f"{what}: {exc}") from None
    if choice.info is None:
        able = compatible_names(registry, "moe", need, plugin_choice)
        raise SelectionError(f"{what} and needs an MoE dispatcher (moe_backend='{settings.moe_backend}': "
                             f"{choice.reason}); dispatchers that can run it: " + (", ".join(able) or "none"))
    return choice


def choose_model(registry: Registry, ctx: SelectionContext, plugin_choice: dict[str, str] | None = None) -> Choice:
    """Match the model architecture by the Hugging Face `architectures` names."""
    matches = [i for i in registry.of_kind("model") if set(ctx.architectures) & set(i.cls.architectures)]
    if not matches:
        known = sorted({a for i in registry.of_kind("model") for a in i.cls.architectures})
        raise SelectionError(f"unknown model architecture {list(ctx.architectures)}; supported: {', '.join(known)}"
                             + _failed_hint(registry))
    best = max(matches, key=lambda i: i.priority)
    info = _resolve_conflict("model", best.name, registry.candidates("model", best.name), plugin_choice or {})
    return Choice("model", None, info, f"matches architecture {list(ctx.architectures)}")


def choose_all(registry: Registry, settings, ctx: SelectionContext) -> dict[str, Choice]:
    """Resolve every kind for one engine; logs the chosen set and why."""
    if registry.errors:
        raise SelectionError("; ".join(registry.errors))
    plugin_choice = dict(settings.plugin_choice)
    out = {"model": choose_model(registry, ctx, plugin_choice)}
    # The model's required features are attention features (CausalLM.required_features): only
    # attention backends are matched against them; the MoE dispatcher against ctx.moe_features.
    plain = replace(ctx, required_features=frozenset())
    for kind, field in SETTING_FOR_KIND.items():
        if kind == "moe":
            out[kind] = _moe_choice(registry, settings, plain, plugin_choice)
            continue
        out[kind] = choose(registry, kind, getattr(settings, field), ctx if kind == "attention" else plain, plugin_choice)
    for key, field in ATTENTION_MODES.items():
        if getattr(settings, field):
            out[key] = replace(choose(registry, "attention", getattr(settings, field), ctx, plugin_choice), kind=key)
    for choice in out.values():
        log.info("%-12s -> %-14s (%s)", choice.kind, choice.name or "-", choice.reason)
    return out
