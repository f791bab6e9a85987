"""Reasoning parsers: split a reasoning model's thinking from its answer (`reasoning_content` / `content`).

Qwen3, QwQ and DeepSeek-R1 write `<think> ... </think>` before the answer. DeepSeek-R1's template
opens `<think>` itself at the end of the generation prompt, so the generation starts inside the
reasoning: `starts_in_reasoning(prompt)` tells from the rendered prompt, for every template alike.
One instance per generation; `feed` takes detokenized text as it comes and holds back a partial
tag (`</thi`) until it is decided. Whitespace around the reasoning is layout: the reasoning and the
answer that follows it are returned stripped of it.
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from jackfield.sdk.component import Component
from jackfield.sdk.markers import WHITESPACE, partial_suffix


@dataclass
class ReasoningDelta:
    """What one increment added to the reasoning and to the answer."""

    reasoning: str = ""
    content: str = ""

    def extend(self, other: ReasoningDelta) -> ReasoningDelta:
        self.reasoning += other.reasoning
        self.content += other.content
        return self


class ReasoningParser(Component):
    """Base class of reasoning parsers: `feed`/`finish` per generation, `parse` for a finished one."""

    kind: ClassVar[str] = "reasoning_parser"
    template_markers: ClassVar[tuple[str, ...]] = ()
    """Strings whose presence in a chat template marks a reasoning model of this format."""

    def __init__(self, in_reasoning: bool = False):
        self.in_reasoning = in_reasoning

    @classmethod
    def template_score(cls, chat_template: str | None) -> int:
        """How surely `chat_template` is a reasoning template of this format (0: not at all)."""
        return sum(marker in (chat_template or "") for marker in cls.template_markers)

    @classmethod
    @abstractmethod
    def starts_in_reasoning(cls, prompt: str) -> bool:
        """Whether the rendered generation prompt already opened the reasoning (DeepSeek-R1)."""

    @abstractmethod
    def feed(self, text: str) -> ReasoningDelta:
        """Take the next piece of generated text; return what is decided."""

    @abstractmethod
    def finish(self) -> ReasoningDelta:
        """The generation ended: return what is held back (unterminated reasoning stays reasoning)."""

    @classmethod
    @abstractmethod
    def format_reasoning(cls, reasoning: str, content: str, opened: bool = False) -> str:
        """A generation in this format (`opened`: the prompt already opened the reasoning); the kit's
        round trip parses it back."""

    def parse(self, text: str) -> ReasoningDelta:
        return self.feed(text).extend(self.finish())


class TagReasoningParser(ReasoningParser):
    """Reasoning between a `start` and an `end` tag at the beginning of the generation."""

    start: ClassVar[str] = "<think>"
    end: ClassVar[str] = "</think>"

    def __init__(self, in_reasoning: bool = False):
        super().__init__(in_reasoning)
        self.buf = ""
        self.state = "reasoning" if in_reasoning else "start"
        self.reasoning_started = False  # leading whitespace of the reasoning is skipped

    @classmethod
    def starts_in_reasoning(cls, prompt: str) -> bool:
        return prompt.rstrip(WHITESPACE).endswith(cls.start)

    @classmethod
    def format_reasoning(cls, reasoning: str, content: str, opened: bool = False) -> str:
        return ("" if opened else cls.start) + f"\n{reasoning}\n{cls.end}\n\n{content}"

    def feed(self, text: str) -> ReasoningDelta:
        self.buf += text
        return self._advance(final=False)

    def finish(self) -> ReasoningDelta:
        return self._advance(final=True)

    def _advance(self, final: bool) -> ReasoningDelta:
        out = ReasoningDelta()
        while True:
            if self.state == "start":
                head = self.buf.lstrip(WHITESPACE)
                if head.startswith(self.start):
                    self.buf, self.state = head[len(self.start):], "reasoning"
                    continue
                if not final and self.start.startswith(head):
                    return out
                self.state = "content"
            elif self.state == "reasoning":
                if not self.reasoning_started:
                    self.buf = self.buf.lstrip(WHITESPACE)
                    self.reasoning_started = bool(self.buf)
                k = self.buf.find(self.end)
                if k >= 0:
                    out.reasoning += self.buf[:k].rstrip(WHITESPACE)
                    self.buf, self.state = self.buf[k + len(self.end):], "after"
                    continue
                hold = len(self.buf) if final else len(self.buf) - partial_suffix(self.buf, self.end)
                upto = len(self.buf[:hold].rstrip(WHITESPACE))
                out.reasoning += self.buf[:upto]
                self.buf = "" if final else self.buf[upto:]
                return out
            elif self.state == "after":
                self.buf = self.buf.lstrip(WHITESPACE)
                if not self.buf and not final:
                    return out
                self.state = "content"
            else:
                out.content += self.buf
                self.buf = ""
                return out

