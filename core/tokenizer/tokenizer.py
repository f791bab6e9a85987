"""A thin tokenizer over a Hugging Face fast tokenizer, with jackfield's own chat rendering."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from jackfield.tokenizer.chat import render_chat


class Tokenizer:
    """Encode, decode and chat-format text for one model.

    Encoding and decoding go straight to the Rust ``tokenizers`` backend; decoding never cleans
    up spaces, so decoded text is exactly what the tokens spell.
    """

    def __init__(self, hf_tokenizer, extra_eos_ids: Iterable[int] = ()):
        self._hf = hf_tokenizer
        self._backend = hf_tokenizer.backend_tokenizer
        ids = [hf_tokenizer.eos_token_id, *extra_eos_ids]
        self._eos_ids = tuple(dict.fromkeys(int(i) for i in ids if i is not None))

    @classmethod
    def load(cls, path: str) -> Tokenizer:
        """Load the tokenizer of the Hugging Face model directory ``path``.

        End-of-sequence ids are the tokenizer's own eos token plus any ``eos_token_id`` found in
        the directory's ``generation_config.json`` or ``config.json``.
        """
        from transformers import AutoTokenizer

        hf_tokenizer = AutoTokenizer.from_pretrained(path)
        if not getattr(hf_tokenizer, "is_fast", False):
            raise ValueError(f"the tokenizer in {path} has no fast (Rust) implementation")
        return cls(hf_tokenizer, config_eos_ids(Path(path)))

    @property
    def hf_tokenizer(self):
        """The wrapped Hugging Face tokenizer, for components that need its full API."""
        return self._hf

    @property
    def vocab_size(self) -> int:
        """Number of tokens, added tokens included."""
        return len(self._hf)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Token ids that end generation, in a stable order without duplicates."""
        return self._eos_ids

    @property
    def bos_token_id(self) -> int | None:
        """The beginning-of-sequence token id, if the tokenizer has one."""
        return self._hf.bos_token_id

    @property
    def chat_template(self) -> str | None:
        """The model's default chat template source, or None when it has none."""
        template = self._hf.chat_template
        if isinstance(template, dict):
            template = template.get("default")
        return template

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens`` adds the model's BOS/EOS decorations."""
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """The text spelled by ``ids``."""
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        """The vocabulary strings of ``ids``."""
        return [self._backend.id_to_token(int(i)) for i in ids]

    def apply_chat_template(
        self, messages: list[dict], add_generation_prompt: bool = True, tools: list[dict] | None = None, **kwargs
    ) -> str:
        """Render ``messages`` into a prompt string with the model's chat template.

        Extra ``kwargs`` (``enable_thinking``, ``documents``, ...) become template variables.
        Raises ``ValueError`` when the model has no chat template.
        """
        template = kwargs.pop("chat_template", None) or self.chat_template
        if template is None:
            raise ValueError("this model has no chat template; send a plain completion prompt instead")
        return render_chat(
            template, messages, add_generation_prompt=add_generation_prompt, tools=tools,
            special_tokens=self._hf.special_tokens_map, **kwargs,
        )


def config_eos_ids(model_dir: Path) -> list[int]:
    """``eos_token_id`` values (int or list) from ``generation_config.json`` and ``config.json``."""
    ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        file = model_dir / name
        if not file.is_file():
            continue
        value = json.loads(file.read_text()).get("eos_token_id")
        if isinstance(value, int):
            ids.append(value)
        elif isinstance(value, list):
            ids.extend(int(v) for v in value)
    return ids
