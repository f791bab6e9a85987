"""The component registry: every component class the plugins registered, with where it came from."""
from __future__ import annotations

from dataclasses import dataclass, field

import pluggy

from jackfield.plugins import PluginRecord
from jackfield.sdk.attention import AttentionBackend
from jackfield.sdk.component import Availability, Component
from jackfield.sdk.grammar import GrammarBackend
from jackfield.sdk.lora import LoRABackend
from jackfield.sdk.model import CausalLM
from jackfield.sdk.moe import MoEDispatcher
from jackfield.sdk.quant import QuantizationMethod
from jackfield.sdk.reasoning_parser import ReasoningParser
from jackfield.sdk.spec import SpeculativeDecoder
from jackfield.sdk.tool_parser import ToolCallParser

# kind -> (hook name, base class)
KIND_HOOKS: dict[str, tuple[str, type]] = {
    "attention": ("jackfield_register_attention_backends", AttentionBackend),
    "quantization": ("jackfield_register_quantization_methods", QuantizationMethod),
    "moe": ("jackfield_register_moe_dispatchers", MoEDispatcher),
    "speculative": ("jackfield_register_speculative_decoders", SpeculativeDecoder),
    "grammar": ("jackfield_register_grammar_backends", GrammarBackend),
    "model": ("jackfield_register_model_architectures", CausalLM),
    "lora": ("jackfield_register_lora_backends", LoRABackend),
    "tool_parser": ("jackfield_register_tool_parsers", ToolCallParser),
    "reasoning_parser": ("jackfield_register_reasoning_parsers", ReasoningParser),
}


@dataclass(frozen=True)
class ComponentInfo:
    """A registered component class and the plugin / distribution that provided it."""

    kind: str
    name: str
    cls: type
    plugin: str
    distribution: str
    version: str

    @property
    def priority(self) -> int:
        return self.cls.priority

    def availability(self) -> Availability:
        try:
            return self.cls.availability()
        except Exception as exc:  # an availability check that raises is itself a reason
            return Availability.no(f"availability check raised {type(exc).__name__}: {exc}")


@dataclass
class Registry:
    """Components by (kind, name). Same-named components from two plugins are kept as a conflict."""

    plugins: list[PluginRecord]
    components: dict[tuple[str, str], list[ComponentInfo]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, info: ComponentInfo) -> None:
        self.components.setdefault((info.kind, info.name), []).append(info)

    def of_kind(self, kind: str) -> list[ComponentInfo]:
        return [i for (k, _), infos in sorted(self.components.items()) if k == kind for i in infos]

    def candidates(self, kind: str, name: str) -> list[ComponentInfo]:
        return self.components.get((kind, name), [])

    def conflicts(self) -> list[list[ComponentInfo]]:
        return [infos for infos in self.components.values() if len(infos) > 1]

    def failed_plugins(self) -> list[PluginRecord]:
        """Plugins that were enabled but are not in use: they failed to load or are incompatible."""
        return [p for p in self.plugins if p.status in ("failed", "incompatible")]

    def describe(self) -> list[dict]:
        """One dict per component (and per failed plugin), the shape of `jackfield plugins --json`."""
        rows = []
        for infos in self.components.values():
            for info in infos:
                avail = info.availability()
                reason = avail.reason
                if len(infos) > 1:
                    others = ", ".join(o.distribution for o in infos if o is not info)
                    reason = (reason + "; " if reason else "") + f"name conflict with {others}"
                rows.append({
                    "kind": info.kind, "name": info.name, "plugin": info.plugin,
                    "distribution": info.distribution, "version": info.version,
                    "available": avail.ok, "reason": reason, "priority": info.priority,
                    "devices": list(info.cls.capabilities.devices),
                    "dtypes": list(info.cls.capabilities.dtypes),
                    "features": sorted(info.cls.capabilities.features),
                })
        for p in self.plugins:
            if p.status != "loaded":
                rows.append({
                    "kind": "plugin", "name": p.name, "plugin": p.name, "distribution": p.distribution,
                    "version": p.version, "available": False, "reason": f"{p.status}: {p.error}",
                    "priority": 0, "devices": [], "dtypes": [], "features": [],
                })
        rows.sort(key=lambda r: (r["kind"], -r["priority"], r["name"]))
        return rows


def build_registry(pm: pluggy.PluginManager, plugins: list[PluginRecord]) -> Registry:
    """Call every registration hook, one plugin at a time, so each class knows its origin."""
    by_name = {p.name: p for p in plugins}
    reg = Registry(plugins=plugins)
    for kind, (hook_name, base) in KIND_HOOKS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            record = by_name.get(impl.plugin_name)
            dist = record.distribution if record else "<in-process>"
            version = record.version if record else ""

            def register(cls: type, _kind=kind, _base=base, _plugin=impl.plugin_name, _dist=dist, _ver=version) -> None:
                if not (isinstance(cls, type) and issubclass(cls, _base)):
                    raise TypeError(f"plugin {_plugin} registered {cls!r} as a {_kind} component, "
                                    f"but it is not a subclass of {_base.__name__}")
                if not cls.name:
                    raise TypeError(f"plugin {_plugin} registered {cls.__name__} without a `name`")
                reg.add(ComponentInfo(_kind, cls.name, cls, _plugin, _dist, _ver))

            try:
                impl.function(register=register)
            except Exception as exc:
                reg.errors.append(f"plugin {impl.plugin_name}: {hook_name} raised {type(exc).__name__}: {exc}")
    return reg


def component_base(kind: str) -> type[Component]:
    return KIND_HOOKS[kind][1]
