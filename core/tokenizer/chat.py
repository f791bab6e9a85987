"""Render chat templates the way Hugging Face ``apply_chat_template`` does, in a jinja2 sandbox."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment


class GenerationTag(jinja2.ext.Extension):
    """Accept ``{% generation %}...{% endgeneration %}`` blocks and render their body unchanged."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def raise_exception(message: str):
    """Template global: abort rendering with ``message``."""
    raise jinja2.exceptions.TemplateError(message)


def strftime_now(fmt: str) -> str:
    """Template global: the current local time formatted with ``fmt``."""
    return datetime.now().strftime(fmt)


def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    """Template filter: JSON without HTML escaping, with HF's keyword options."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


@lru_cache(maxsize=16)
def compile_template(source: str) -> jinja2.Template:
    """Compile a chat template once; the same source string reuses the compiled template."""
    return _environment().from_string(source)


@lru_cache(maxsize=16)
def template_variables(source: str) -> frozenset[str]:
    """The variables a chat template reads from its context (``messages``, ``tools``, ...)."""
    import jinja2.meta

    return frozenset(jinja2.meta.find_undeclared_variables(_environment().parse(source)))


def render_chat(
    template: str,
    messages: list[dict],
    add_generation_prompt: bool = True,
    tools: list[dict] | None = None,
    special_tokens: dict[str, str] | None = None,
    **kwargs,
) -> str:
    """Render ``messages`` with the chat ``template``.

    Message keys whose value is None are dropped, as HF does, so OpenAI-style ``content=None``
    renders like a missing key. ``special_tokens`` (``bos_token``, ``eos_token``, ...) and
    ``kwargs`` become template variables; ``kwargs`` win on a clash.
    """
    if not messages:
        raise ValueError("cannot apply a chat template to an empty conversation")
    cleaned = []
    for message in messages:
        if not isinstance(message, dict):
            raise TypeError(f"chat messages must be dicts, got {message!r}")
        cleaned.append({key: value for key, value in message.items() if value is not None})
    variables = {**(special_tokens or {}), **kwargs}
    return compile_template(template).render(
        messages=cleaned, tools=tools, add_generation_prompt=add_generation_prompt, **variables
    )
