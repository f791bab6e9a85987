"""benchmarks/pad_tokenizer.py: a byte-level BPE tokenizer padded to a dummy model's vocabulary spells
every id with text and tokenizes prompts exactly as before; the server warns when it is needed."""
from __future__ import annotations

import logging
import random
import runpy
from pathlib import Path

import pytest

from jackfield.engine_loop import warn_unspellable_ids
from jackfield.loader.default_model import default_model_path
from jackfield.loader.gguf import convert_gguf
from jackfield.tokenizer.tokenizer import Tokenizer

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "pad_tokenizer.py"
VOCAB = 128256


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> tuple[Tokenizer, Tokenizer]:
    src = Path(convert_gguf(default_model_path()))
    dst = tmp_path_factory.mktemp("padded")
    added = runpy.run_path(str(SCRIPT))["pad_tokenizer"](src, dst, VOCAB)
    plain = Tokenizer.load(str(src))
    assert added == VOCAB - plain.vocab_size
    return plain, Tokenizer.load(str(dst))


def test_every_id_spells_text_and_prompts_are_unchanged(tokenizers):
    plain, padded = tokenizers
    assert padded.vocab_size == VOCAB
    assert plain.decode([VOCAB - 1]) == ""
    assert padded.decode([plain.vocab_size, VOCAB - 1]) == f" pad{plain.vocab_size} pad{VOCAB - 1}"
    rng = random.Random(0)
    for _ in range(5):
        text = plain.decode([rng.randrange(plain.vocab_size) for _ in range(500)])
        assert padded.encode(text) == plain.encode(text)
    assert padded.encode("Hello, world! The capital of France is Paris.") == plain.encode(
        "Hello, world! The capital of France is Paris.")


def test_refuses_a_smaller_size(tokenizers, tmp_path):
    plain, _ = tokenizers
    src = Path(convert_gguf(default_model_path()))
    with pytest.raises(SystemExit, match="not fewer than --vocab-size"):
        runpy.run_path(str(SCRIPT))["pad_tokenizer"](src, tmp_path / "x", plain.vocab_size)


def test_dummy_weights_warn_when_ids_cannot_be_spelled(tokenizers, caplog):
    plain, padded = tokenizers
    with caplog.at_level(logging.WARNING, logger="jackfield.engine_loop"):
        warn_unspellable_ids(padded, VOCAB)
        assert not caplog.records
        warn_unspellable_ids(plain, VOCAB)
    assert f"the tokenizer has {plain.vocab_size} ids and the model {VOCAB}" in caplog.text
