"""Prompt sources for `jackfield bench serving`: random-length prompts, random prompts in groups
that share a prefix, and ShareGPT conversations.

Without a tokenizer, random prompts are built from a fixed list of common English words that
each encode to roughly one token in typical BPE vocabularies, and ShareGPT lengths are estimated
from word counts. With a tokenizer (a Hugging Face path), lengths are exact token counts.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

WORDS = (
    "the of and to in is it you that he was for on are as with his they at be this have from "
    "or one had by word but not what all were we when your can said there use an each which "
    "she do how their if will up other about out many then them these so some her would make "
    "like him into time has look two more write go see number no way could people my than "
    "first water been call who oil its now find long down day did get come made may part over "
    "new sound take only little work know place year live me back give most very after thing "
    "our just name good sentence man think say great where help through much before line right "
    "too mean old any same tell boy follow came want show also around form three small set put"
).split()

MIN_SHAREGPT_LEN = 4  # drop conversations whose prompt or answer is shorter than this


@dataclass
class BenchRequest:
    """One prompt to send: text (and token ids when a tokenizer built it) plus its target lengths."""

    prompt: str
    prompt_len: int
    output_len: int
    prompt_ids: list[int] | None = None


def load_tokenizer(path: str | None) -> Any:
    """Load a Hugging Face tokenizer from `path`, or return None when no path is given."""
    if not path:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def count_tokens(text: str, tokenizer: Any = None) -> int:
    """Token count of `text`: exact with a tokenizer, else about 1.3 tokens per whitespace word."""
    if tokenizer is not None:
        return len(tokenizer.encode(text, add_special_tokens=False))
    words = len(text.split())
    return max(1, math.ceil(words * 1.3)) if words else 0


def sample_lengths(rng: np.random.Generator, num: int, length: int, range_ratio: float) -> list[int]:
    """`num` integer lengths drawn uniformly from [length * range_ratio, length], at least 1."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if not 0.0 <= range_ratio <= 1.0:
        raise ValueError(f"--random-range-ratio must be within [0, 1], got {range_ratio}")
    low = max(1, int(length * range_ratio))
    return [int(x) for x in rng.integers(low, length + 1, size=num)]


def _random_token_prompt(rng: np.random.Generator, tokenizer: Any, length: int) -> tuple[str, list[int]]:
    """Random non-special token ids decoded to text, re-encoded so text and ids agree."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    vocab = len(tokenizer)
    ids = [int(i) for i in rng.integers(0, vocab, size=length * 2) if int(i) not in special][:length]
    text = tokenizer.decode(ids)
    ids = tokenizer.encode(text, add_special_tokens=False)[:length]
    return tokenizer.decode(ids), ids


def sample_random_requests(
    num: int,
    input_len: int,
    output_len: int,
    range_ratio: float = 0.0,
    tokenizer: Any = None,
    seed: int = 0,
) -> list[BenchRequest]:
    """Build `num` random prompts with input/output lengths uniform in [len * ratio, len]."""
    rng = np.random.default_rng(seed)
    in_lens = sample_lengths(rng, num, input_len, range_ratio)
    out_lens = sample_lengths(rng, num, output_len, range_ratio)
    requests = []
    for in_len, out_len in zip(in_lens, out_lens):
        text, ids = _random_prompt(rng, tokenizer, in_len)
        requests.append(BenchRequest(text, len(ids) if ids is not None else in_len, out_len, ids))
    return requests


def _random_prompt(rng: np.random.Generator, tokenizer: Any, length: int) -> tuple[str, list[int] | None]:
    """`length` random tokens (text and ids) with a tokenizer, else `length` common words (no ids)."""
    if tokenizer is not None:
        return _random_token_prompt(rng, tokenizer, length)
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), size=length)), None


def with_shared_prefixes(own: list[BenchRequest], num_groups: int, prefix_len: int, tokenizer: Any = None,
                         seed: int = 0) -> list[BenchRequest]:
    """The prompts of `own` in `num_groups` groups (SGLang's generated-shared-prefix workload): each
    prompt after its group's random prefix of `prefix_len` tokens (a shared system prompt or
    document). Groups interleave in a random order, so a server sees every group from the start."""
    if num_groups < 1 or prefix_len < 1:
        raise ValueError(f"shared prefixes need at least one group of at least one token, got {num_groups} "
                         f"group(s) of {prefix_len}")
    rng = np.random.default_rng(seed)
    prefixes = [_random_prompt(rng, tokenizer, prefix_len) for _ in range(num_groups)]
    requests = []
    for i, req in enumerate(own):
        text, ids = prefixes[i % num_groups]
        if ids is not None:  # token ids are sent as they are: the prefix is shared exactly
            requests.append(BenchRequest(text + req.prompt, len(ids) + req.prompt_len, req.output_len,
                                         ids + req.prompt_ids))
        else:
            requests.append(BenchRequest(f"{text} {req.prompt}", prefix_len + req.prompt_len, req.output_len))
    return [requests[i] for i in rng.permutation(len(requests))]


def _first_exchange(conversations: list[dict]) -> tuple[str, str] | None:
    """The first human turn and the gpt answer that follows it, if both exist."""
    for i, turn in enumerate(conversations):
        if turn.get("from") == "human":
            for later in conversations[i + 1:]:
                if later.get("from") == "gpt":
                    return str(turn.get("value", "")), str(later.get("value", ""))
            return None
    return None


def sample_sharegpt_requests(
    path: str,
    num: int,
    tokenizer: Any = None,
    seed: int = 0,
    fixed_output_len: int | None = None,
) -> list[BenchRequest]:
    """Pick up to `num` (prompt, answer-length) pairs from a ShareGPT JSON file, shuffled by seed.

    The file is a list of {"conversations": [{"from": "human"|"gpt", "value": str}, ...]}; the
    first human turn is the prompt and the following gpt answer's length is the output length
    (or `fixed_output_len` when given). Very short prompts or answers are skipped.
    """
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of conversations")
    order = np.random.default_rng(seed).permutation(len(data))
    requests: list[BenchRequest] = []
    for idx in order:
        entry = data[int(idx)]
        convs = entry.get("conversations") if isinstance(entry, dict) else None
        pair = _first_exchange(convs) if isinstance(convs, list) else None
        if pair is None:
            continue
        prompt, answer = pair
        prompt_len = count_tokens(prompt, tokenizer)
        output_len = fixed_output_len or count_tokens(answer, tokenizer)
        if prompt_len < MIN_SHAREGPT_LEN or (not fixed_output_len and output_len < MIN_SHAREGPT_LEN):
            continue
        requests.append(BenchRequest(prompt, prompt_len, output_len))
        if len(requests) >= num:
            break
    if not requests:
        raise ValueError(f"{path}: no usable conversations (need a human turn followed by a gpt turn)")
    return requests
