"""The model's tokenizer: a Rust ``tokenizers`` backend plus jackfield's own chat rendering."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from jackfield.tokenizer.chat import render_chat
from jackfield.tokenizer.parallel_encode import PieceEncoder

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")


class Tokenizer:
    """Encode, decode and chat-format text for one model.

    Encoding and decoding go straight to the Rust ``tokenizers`` backend (a long text is encoded in
    pieces on several cores where that gives the same ids: parallel_encode.py); decoding never cleans
    up spaces, so decoded text is exactly what the tokens spell. ``special_tokens`` maps names
    such as ``bos_token`` to token strings and is also handed to chat templates.
    """

    def __init__(
        self,
        backend,
        special_tokens: dict[str, str],
        chat_template: str | None = None,
        extra_eos_ids: Iterable[int] = (),
        source: str | None = None,
    ):
        self._backend = backend
        self._pieces = PieceEncoder(backend)
        self._special = dict(special_tokens)
        self._chat_template = chat_template
        self._source = source
        self._hf = None
        self._max_token_chars: int | None = None
        ids = [self._token_id("eos_token"), *extra_eos_ids]
        self._eos_ids = tuple(dict.fromkeys(int(i) for i in ids if i is not None))

    @classmethod
    def load(cls, path: str) -> Tokenizer:
        """Load the tokenizer of the Hugging Face model directory ``path``.

        A directory with ``tokenizer.json`` is read without importing ``transformers`` (fast
        start-up); one without it is loaded through ``transformers.AutoTokenizer``. End-of-sequence
        ids are the eos token plus any ``eos_token_id`` in ``generation_config.json`` or
        ``config.json``.
        """
        model_dir = Path(path)
        extra_eos = config_eos_ids(model_dir)
        if not (model_dir / "tokenizer.json").is_file():
            from transformers import AutoTokenizer

            return cls.from_hf(AutoTokenizer.from_pretrained(path), extra_eos)
        from tokenizers import Tokenizer as Backend

        backend = Backend.from_file(str(model_dir / "tokenizer.json"))
        config = read_json(model_dir / "tokenizer_config.json")
        special = {**read_json(model_dir / "special_tokens_map.json"), **config}
        special_tokens = {name: token_text(special[name]) for name in SPECIAL_TOKEN_NAMES if special.get(name)}
        return cls(backend, special_tokens, find_chat_template(model_dir, config), extra_eos, source=path)

    @classmethod
    def from_hf(cls, hf_tokenizer, extra_eos_ids: Iterable[int] = ()) -> Tokenizer:
        """Wrap an already loaded Hugging Face fast tokenizer."""
        if not getattr(hf_tokenizer, "is_fast", False):
            raise ValueError(f"tokenizer {hf_tokenizer.name_or_path!r} has no fast (Rust) implementation")
        template = hf_tokenizer.chat_template
        if isinstance(template, dict):
            template = template.get("default")
        tokens = hf_tokenizer.special_tokens_map
        special = {name: str(tokens[name]) for name in SPECIAL_TOKEN_NAMES if tokens.get(name)}
        tokenizer = cls(hf_tokenizer.backend_tokenizer, special, template, extra_eos_ids, hf_tokenizer.name_or_path)
        tokenizer._hf = hf_tokenizer
        return tokenizer

    @property
    def hf_tokenizer(self):
        """The Hugging Face tokenizer for the same files, loaded on first use (for grammar backends)."""
        if self._hf is None:
            from transformers import AutoTokenizer

            self._hf = AutoTokenizer.from_pretrained(self._source)
        return self._hf

    @property
    def backend(self):
        """The Rust ``tokenizers.Tokenizer`` (read-only use: its vocabulary and description)."""
        return self._backend

    @property
    def vocab_size(self) -> int:
        """Number of tokens, added tokens included."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def max_token_chars(self) -> int:
        """Characters in the longest token of the vocabulary (added tokens included): a text of c
        characters encodes to at least c / max_token_chars tokens."""
        if self._max_token_chars is None:
            self._max_token_chars = max(map(len, self._backend.get_vocab(with_added_tokens=True)), default=1)
        return self._max_token_chars

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Token ids that end generation, in a stable order without duplicates."""
        return self._eos_ids

    @property
    def bos_token_id(self) -> int | None:
        """The beginning-of-sequence token id, if the tokenizer has one."""
        return self._token_id("bos_token")

    @property
    def special_tokens(self) -> dict[str, str]:
        """Special token strings by name (``bos_token``, ``eos_token``, ...), those the model has."""
        return dict(self._special)

    @property
    def chat_template(self) -> str | None:
        """The model's default chat template source, or None when it has none."""
        return self._chat_template

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens`` adds the model's BOS/EOS decorations."""
        return self._pieces.encode(text, add_special_tokens=add_special_tokens)

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

        Extra ``kwargs`` (``enable_thinking``, ``documents``, ...) become template variables, and
        ``chat_template=`` overrides the model's template. Raises ``ValueError`` when there is no
        template to use.
        """
        template = kwargs.pop("chat_template", None) or self._chat_template
        if template is None:
            raise ValueError("this model has no chat template; send a plain completion prompt instead")
        return render_chat(
            template, messages, add_generation_prompt=add_generation_prompt, tools=tools,
            special_tokens=self._special, **kwargs,
        )

    def _token_id(self, name: str) -> int | None:
        token = self._special.get(name)
        return None if token is None else self._backend.token_to_id(token)


def read_json(file: Path) -> dict:
    """The JSON object in ``file``, or an empty dict when the file does not exist."""
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}


def token_text(value) -> str:
    """A special token's string, whether stored plainly or as a serialized ``AddedToken``."""
    return value["content"] if isinstance(value, dict) else str(value)


def find_chat_template(model_dir: Path, tokenizer_config: dict) -> str | None:
    """The default chat template, looked up where ``transformers`` saves it."""
    jinja_file = model_dir / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = read_json(model_dir / "chat_template.json").get("chat_template")
    template = template or tokenizer_config.get("chat_template")
    if isinstance(template, list):
        named = {entry["name"]: entry["template"] for entry in template}
        template = named.get("default")
    return template


def config_eos_ids(model_dir: Path) -> list[int]:
    """``eos_token_id`` values (int or list) from ``generation_config.json`` and ``config.json``."""
    ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        value = read_json(model_dir / name).get("eos_token_id")
        if isinstance(value, int):
            ids.append(value)
        elif isinstance(value, list):
            ids.extend(int(v) for v in value)
    return ids
