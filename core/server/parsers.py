"""Which tool-call and reasoning parser the chat APIs use: chosen once, from the model's chat template.

Unlike engine components these are chosen in the server process, after the tokenizer (and so the
chat template) is loaded. `auto` takes the parser whose `template_score` of the template is highest,
ties and an unknown template going to the highest priority; reasoning is separated by default only
when the reasoning parser recognised the template (score above 0).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from jackfield.registry import Registry
from jackfield.sdk.component import SelectionContext
from jackfield.sdk.reasoning_parser import ReasoningParser
from jackfield.sdk.tool_parser import ToolCallParser
from jackfield.selection import SelectionError, choose

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatParsers:
    """The parser classes of the chat APIs; None: that kind is off (`none`, or none registered)."""

    tool: type[ToolCallParser] | None = None
    reasoning: type[ReasoningParser] | None = None
    reasoning_by_default: bool = False
    reasons: tuple[tuple[str, str], ...] = ()   # (kind, why) for the log and /get_model_info

    def as_dict(self) -> dict:
        names = {"tool_parser": self.tool, "reasoning_parser": self.reasoning}
        return {kind: {"name": names[kind].name if names[kind] else None, "reason": why} for kind, why in self.reasons}


def _choose(registry: Registry, kind: str, requested: str, template: str | None, plugin_choice: dict) -> tuple:
    """(class or None, its template score, why)."""
    ctx = SelectionContext()  # parsers run in the server process, on its CPU, whatever the engine's device
    if requested != "auto":
        choice = choose(registry, kind, requested, ctx, plugin_choice)
        cls = choice.info.cls if choice.info else None
        return cls, cls.template_score(template) if cls else 0, choice.reason
    ranked, skipped = [], []
    for name in sorted({info.name for info in registry.of_kind(kind)}):
        try:
            cls = choose(registry, kind, name, ctx, plugin_choice).info.cls
        except SelectionError as exc:
            skipped.append(str(exc))
            continue
        ranked.append((cls.template_score(template), cls.priority, name, cls))
    if not ranked:
        return None, 0, "none available" + (": " + " | ".join(skipped) if skipped else "")
    score, _, _, cls = max(ranked, key=lambda r: r[:3])
    why = (f"auto: the chat template matches it best (score {score})" if score else
           "auto: no parser recognises the chat template; highest priority")
    return cls, score, why + ("; skipped " + " | ".join(skipped) if skipped else "")


def select_parsers(registry: Registry, settings, chat_template: str | None) -> ChatParsers:
    """Resolve `tool_call_parser` and `reasoning_parser` against the model's chat template."""
    plugin_choice = dict(settings.plugin_choice)
    tool, _, tool_why = _choose(registry, "tool_parser", settings.tool_call_parser, chat_template, plugin_choice)
    reasoning, score, reasoning_why = _choose(registry, "reasoning_parser", settings.reasoning_parser, chat_template,
                                              plugin_choice)
    by_default = reasoning is not None and (score > 0 or settings.reasoning_parser != "auto")
    if reasoning is not None:
        reasoning_why += "; separated by default" if by_default else "; separated only when a request asks"
    parsers = ChatParsers(tool, reasoning, by_default, (("tool_parser", tool_why), ("reasoning_parser", reasoning_why)))
    for kind, entry in parsers.as_dict().items():
        log.info("%-16s -> %-10s (%s)", kind, entry["name"] or "-", entry["reason"])
    return parsers

