"""Tokenizer, chat template rendering, incremental detokenization and stop strings."""

from __future__ import annotations

import pytest

from jackfield.loader.default_model import default_model_path
from jackfield.loader.gguf import convert_gguf
from jackfield.tokenizer.detokenizer import IncrementalDetokenizer, StopStringChecker, find_stop, hold_back_len
from jackfield.tokenizer.tokenizer import Tokenizer

MIXED_TEXT = "Café naïve 🤖🚀 你好，世界！ Ελληνικά — ok 👍🏽 done"


@pytest.fixture(scope="module")
def model_dir() -> str:
    return str(convert_gguf(default_model_path()))


@pytest.fixture(scope="module")
def tokenizer(model_dir) -> Tokenizer:
    return Tokenizer.load(model_dir)


@pytest.fixture(scope="module")
def hf_tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def test_properties(tokenizer):
    assert tokenizer.vocab_size == 49152
    assert tokenizer.eos_token_ids == (2,)
    assert tokenizer.bos_token_id == 1
    assert "<|im_start|>" in tokenizer.chat_template


def test_loaded_without_transformers_matches_hugging_face_wrapper(tokenizer, hf_tokenizer):
    wrapped = Tokenizer.from_hf(hf_tokenizer, [2])
    assert wrapped.eos_token_ids == tokenizer.eos_token_ids
    assert wrapped.bos_token_id == tokenizer.bos_token_id
    assert wrapped.vocab_size == tokenizer.vocab_size
    assert wrapped.chat_template == tokenizer.chat_template
    assert tokenizer._special == wrapped._special
    assert tokenizer.hf_tokenizer.encode(MIXED_TEXT) == tokenizer.encode(MIXED_TEXT)


def test_encode_decode_roundtrip(tokenizer, hf_tokenizer):
    for text in ("Hello world", MIXED_TEXT, "  leading spaces\nand\ttabs ", ""):
        ids = tokenizer.encode(text)
        assert ids == hf_tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("Hello world")) == ["Hello", "Ġworld"]


CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one, in 中文?"},
    ],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_hugging_face(tokenizer, hf_tokenizer, messages, add_generation_prompt):
    ours = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    theirs = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    assert ours == theirs


def test_template_features_match_hugging_face(tokenizer, hf_tokenizer):
    template = (
        "{{ bos_token }}{% if tools %}{{ tools | tojson(indent=2) }}\n{% endif %}"
        "{% for m in messages %}{% if m.role == 'stop' %}{% break %}{% endif %}"
        "{% generation %}[{{ m.role }}] {{ m.content }}{% endgeneration %}\n{% endfor %}"
        "{% if add_generation_prompt %}{{ eos_token }}{% endif %}"
    )
    messages = [{"role": "user", "content": "héllo <b>"}, {"role": "stop"}, {"role": "user", "content": "x"}]
    tools = [{"type": "function", "function": {"name": "f", "description": "café & <tags>"}}]
    ours = tokenizer.apply_chat_template(messages, tools=tools, chat_template=template)
    theirs = hf_tokenizer.apply_chat_template(
        messages, tools=tools, chat_template=template, add_generation_prompt=True, tokenize=False
    )
    assert ours == theirs


def test_raise_exception_and_missing_template(tokenizer, model_dir):
    from jinja2.exceptions import TemplateError
    from transformers import AutoTokenizer

    with pytest.raises(TemplateError, match="nope"):
        tokenizer.apply_chat_template([{"role": "user"}], chat_template="{{ raise_exception('nope') }}")
    bare = AutoTokenizer.from_pretrained(model_dir)
    bare.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        Tokenizer.from_hf(bare).apply_chat_template([{"role": "user", "content": "hi"}])


def stream(tokenizer, ids, skip_special_tokens=True):
    detokenizer = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip_special_tokens)
    deltas = [detokenizer.add([token_id]) for token_id in ids]
    return detokenizer, deltas


def test_detokenizer_streams_multibyte_text_exactly(tokenizer):
    ids = tokenizer.encode(MIXED_TEXT)
    assert any("\ufffd" in tokenizer.decode([token_id]) for token_id in ids)
    detokenizer, deltas = stream(tokenizer, ids)
    assert all("\ufffd" not in delta for delta in deltas)
    assert "".join(deltas) == detokenizer.text == tokenizer.decode(ids) == MIXED_TEXT
    assert detokenizer.flush() == ""


def test_detokenizer_special_tokens(tokenizer):
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "héllo 🤖"}])
    ids = tokenizer.encode(prompt)
    for skip in (True, False):
        detokenizer, deltas = stream(tokenizer, ids, skip_special_tokens=skip)
        assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=skip)
    assert "<|im_start|>" in tokenizer.decode(ids, skip_special_tokens=False)


def test_detokenizer_flushes_an_unfinished_character(tokenizer):
    ids = tokenizer.encode("ok 🤖")
    partial = next(i for i in range(1, len(ids)) if tokenizer.decode(ids[:i]).endswith("\ufffd"))
    detokenizer = IncrementalDetokenizer(tokenizer)
    assert detokenizer.add(ids[:partial]) == ""
    assert detokenizer.flush() == tokenizer.decode(ids[:partial]) == detokenizer.text
    assert detokenizer.text.startswith("ok")


def test_stop_string_spanning_tokens_is_found(tokenizer):
    text = "Hello world, the end. More text"
    ids = tokenizer.encode(text)
    detokenizer = IncrementalDetokenizer(tokenizer)
    checker = StopStringChecker(["the end"])
    for count, token_id in enumerate(ids, start=1):
        detokenizer.add([token_id])
        result = checker.check(detokenizer.text)
        if result is not None:
            break
    assert result == ("Hello world, ", "the end")
    assert len(tokenizer.encode("the end")) >= 2
    assert tokenizer.decode(ids[:count]).endswith("the end")


def test_find_stop():
    assert find_stop("abc STOP def", ["STOP"]) == (4, "STOP")
    assert find_stop("abc STOP def", ["def", "STOP"]) == (4, "STOP")
    assert find_stop("abcST", ["STOP"]) is None
    assert find_stop("xx STOP", ["STOP"], start=5) == (3, "STOP")
    assert find_stop("xx STOP yy STOP", ["STOP"], start=12) == (11, "STOP")
    assert find_stop("a<|end|>", ["<|", "<|end|>"]) == (1, "<|end|>")
    assert find_stop("anything", []) is None


def test_hold_back_len():
    assert hold_back_len("Hello wor", ["world!"]) == 3
    assert hold_back_len("Hello", ["\n\n", "lo!"]) == 2
    assert hold_back_len("Hello\n", ["\n\n"]) == 1
    assert hold_back_len("Hello", ["xyz"]) == 0
    assert hold_back_len("Hello world!", ["world!"]) == 0
    assert hold_back_len("", ["stop"]) == 0
    assert StopStringChecker(["END"]).hold_back_len("the EN") == 2
