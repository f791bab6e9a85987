"""The reasoning_parser suite: reasoning and answer come back apart, streamed as at once.

Pure Python, no device. Streaming is checked on random splits (fixed seeds); at every step the
reasoning and the answer sent so far must be beginnings of the final ones.
"""
from __future__ import annotations

from jackfield.sdk.reasoning_parser import ReasoningDelta
from jackfield.testing.kit import Check, KitTarget, expect
from jackfield.testing.streaming import fed_in_chunks

PAIRS = (("Paris is in France, so the capital is Paris.", "The capital of France is Paris."),
         ("Two cases:\n1. a < b\n2. a > b </not-a-tag>", "It depends on **a**."),
         ("", "Short answer."),
         ("Only thinking, then", ""))
PLAIN = ("Hello! How can I help?", "  spaced  ", "<thinking is not a tag", "")
SEEDS = range(8)


def stream_in_chunks(parser, text: str, seed: int, final: ReasoningDelta) -> ReasoningDelta:
    out = ReasoningDelta()
    for delta in fed_in_chunks(parser, text, seed, max_piece=6):
        out.extend(delta)
        expect(final.reasoning.startswith(out.reasoning) and final.content.startswith(out.content),
               f"streamed {out!r} is not on the way to {final!r} (a stream cannot take text back)")
    return out


def _round_trip(t: KitTarget) -> None:
    for opened in (False, True):
        for reasoning, content in PAIRS:
            text = t.cls.format_reasoning(reasoning, content, opened)
            got = t.cls(in_reasoning=opened).parse(text)
            expect(got == ReasoningDelta(reasoning, content),
                   f"format_reasoning then parse (opened={opened}) gave {got!r} from {text!r}")


def _streaming_equals_parse(t: KitTarget) -> None:
    for opened in (False, True):
        for reasoning, content in PAIRS:
            text = t.cls.format_reasoning(reasoning, content, opened)
            whole = t.cls(in_reasoning=opened).parse(text)
            for seed in SEEDS:
                got = stream_in_chunks(t.cls(in_reasoning=opened), text, seed, whole)
                expect(got == whole, f"streamed {got!r} != parsed {whole!r} (seed {seed}, text {text!r})")


def _plain_text_passes(t: KitTarget) -> None:
    for text in PLAIN:
        expected = ReasoningDelta("", text)
        got = t.cls().parse(text)
        expect(got == expected, f"text without reasoning {text!r} parsed as {got!r}")
        for seed in SEEDS[:3]:
            streamed = stream_in_chunks(t.cls(), text, seed, expected)
            expect(streamed == expected, f"text without reasoning {text!r} streamed as {streamed!r}")


def _unterminated_is_reasoning(t: KitTarget) -> None:
    text = t.cls.format_reasoning("cut off here", "", opened=True)
    cut = text[:text.index("cut off here") + len("cut off here")]
    got = t.cls(in_reasoning=True).parse(cut)
    expect(got == ReasoningDelta("cut off here", ""), f"reasoning cut off by the token limit parsed as {got!r}")


def _opened_by_prompt(t: KitTarget) -> None:
    opened_prompt = t.cls.format_reasoning("", "", opened=False)
    expect(not t.cls.starts_in_reasoning("<|user|>hi<|assistant|>"),
           "starts_in_reasoning is true for a prompt that opens no reasoning")
    start = opened_prompt[:len(opened_prompt) - len(t.cls.format_reasoning("", "", opened=True))]
    expect(t.cls.starts_in_reasoning("<|user|>hi<|assistant|>" + start + "\n"),
           f"starts_in_reasoning is false for a prompt ending in the reasoning's opening {start!r}")
    for template in (None, ""):
        expect(t.cls.template_score(template) == 0, f"template_score({template!r}) is not 0")


def checks(target: KitTarget) -> list[Check]:
    return [
        Check("format_reasoning then parse gives reasoning and answer back, opened by the prompt or not", _round_trip),
        Check("streaming in random chunks equals parsing at once, nothing taken back", _streaming_equals_parse),
        Check("text without reasoning passes through as the answer", _plain_text_passes),
        Check("reasoning cut off before its end stays reasoning", _unterminated_is_reasoning),
        Check("tells a prompt that opened the reasoning; scores an empty template 0", _opened_by_prompt),
    ]
