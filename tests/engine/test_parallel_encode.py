"""Long texts encoded in pieces (jackfield.tokenizer.parallel_encode) give exactly the ids of one call,
for the byte-level BPE layouts it accepts; every other tokenizer is encoded in one call."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from jackfield.loader.default_model import default_model_path
from jackfield.loader.gguf import convert_gguf
from jackfield.tokenizer.parallel_encode import SPLIT_PATTERNS, PieceEncoder, cut_points, supports_pieces

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
MIXED = "Café naïve 🤖🚀 你好，世界！ Ελληνικά — ok 👍🏽 done. It's   spaced\n\n\tout, isn't it? x=1;y = 22 "
CODE = "def f(a, b):\n    return a+b  # sum\n\nclass A:\n    pass\n" * 20


class Counting:
    """A backend that counts the batch calls (the pieces path) and passes everything through."""

    def __init__(self, backend):
        self.backend, self.batches = backend, 0

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def encode_batch_fast(self, *args, **kwargs):
        self.batches += 1
        return self.backend.encode_batch_fast(*args, **kwargs)


@pytest.fixture(scope="module")
def smollm2() -> Tokenizer:
    return Tokenizer.from_file(str(Path(convert_gguf(default_model_path())) / "tokenizer.json"))


def _trained(pre, normalizer=None) -> Tokenizer:
    """A small byte-level BPE trained here, with special tokens that text may contain."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=["<|begin_of_text|>", "<|eot_id|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([README, MIXED, CODE], trainer)
    return tok


@pytest.fixture(scope="module")
def llama3_style() -> Tokenizer:
    split = pre_tokenizers.Split(Regex(SPLIT_PATTERNS[0]), behavior="isolated", invert=False)
    return _trained(pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
                    normalizers.NFC())


def _texts(backend: Tokenizer, seed: int) -> list[str]:
    rng = random.Random(seed)
    vocab = backend.get_vocab_size()
    special = [t.content for t in backend.get_added_tokens_decoder().values()]
    randoms = [backend.decode([rng.randrange(vocab) for _ in range(n)], skip_special_tokens=False)
               for n in (700, 1500, 4096)]
    chat = "".join(f"{rng.choice(special)}user {README[i:i + 900]}{rng.choice(special)}" for i in range(0, 9000, 900))
    return randoms + [README, MIXED * 60, CODE, chat, "word " * 3000, "x" * 5000]


@pytest.mark.parametrize("layout", ["smollm2", "llama3_style"])
def test_pieces_give_the_ids_of_one_call(layout, request):
    backend = request.getfixturevalue(layout)
    assert supports_pieces(backend)
    counting = Counting(backend)
    encoder = PieceEncoder(counting, cores=8)
    for text in _texts(backend, seed=len(layout)):
        for special in (True, False):
            assert encoder.encode(text, add_special_tokens=special) == backend.encode(
                text, add_special_tokens=special).ids, (layout, text[:60])
    assert counting.batches >= 10  # the long texts did go through the pieces


def test_short_text_and_one_core_take_one_call(smollm2):
    counting = Counting(smollm2)
    assert PieceEncoder(counting, cores=8).encode(README[:1500]) == smollm2.encode(README[:1500]).ids
    assert PieceEncoder(counting, cores=1).encode(README) == smollm2.encode(README).ids
    assert counting.batches == 0


def test_cuts_fall_between_letters_and_away_from_added_tokens():
    text = ("alpha beta <|eot_id|>gamma delta " * 200) + "omega"
    cuts = cut_points(text, 8, ("<|eot_id|>",), reach=12)
    assert 3 <= len(cuts) <= 7 and cuts == sorted(set(cuts))
    for i in cuts:
        assert text[i] == " " and text[i - 1].isalpha() and text[i + 1].isalpha()
        assert "<|eot_id|>" not in text[i - 12:i + 12]
    assert cut_points("no-spaces-here-" * 300, 4, (), 1) == []


def test_other_tokenizers_are_encoded_in_one_call(smollm2, llama3_style):
    metaspace = _trained(pre_tokenizers.Metaspace())
    lowercase = _trained(pre_tokenizers.ByteLevel(), normalizers.Lowercase())
    other_split = _trained(pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\w+|\s+"), behavior="isolated"),
                                                    pre_tokenizers.ByteLevel(use_regex=False)]))
    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    wordpiece.pre_tokenizer = pre_tokenizers.ByteLevel()
    for backend in (metaspace, lowercase, other_split, wordpiece):
        assert not supports_pieces(backend)
    truncated = Tokenizer.from_str(smollm2.to_str())
    truncated.enable_truncation(512)
    assert not supports_pieces(truncated)
    counting = Counting(truncated)
    assert PieceEncoder(counting, cores=8).encode(README) == truncated.encode(README).ids
    assert counting.batches == 0
