"""Bad input to the offline Engine fails early with an exception that names the culprit.

Broken checkpoints fail at `Engine(...)`; bad requests fail at `generate` before reaching the
scheduler (sampling params, token ids) or, for a prompt too long for the context, when the
scheduler rejects it: the offline API raises ValueError with the scheduler's message instead of
returning a silent "abort" result. A rejected request leaves the engine serving.
"""
from __future__ import annotations

import asyncio
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from jackfield.engine import Engine
from jackfield.sampling.params import SamplingParamError
from jackfield.selection import SelectionError

from model_harness import SPECS, save_tiny_model, within

ENGINE_KW = dict(device="cpu", dtype="float32", kv_cache_bytes=1 << 20, max_running_requests=4)
CONTEXT = 256  # max_position_embeddings of the tiny checkpoints


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("good")
    save_tiny_model(SPECS["llama"], directory)
    return directory


@pytest.fixture(scope="module")
def engine(good_dir):
    with Engine(model=str(good_dir), **ENGINE_KW) as eng:
        yield eng


def copy_model(good_dir, tmp_path, name: str = "model"):
    target = tmp_path / name
    shutil.copytree(good_dir, target)
    return target


def edit_config(directory, **changes) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def still_serves(engine) -> None:
    out = within(60, engine.generate, [1, 2, 3, 4], {"temperature": 0, "max_new_tokens": 3})
    assert out["finish_reason"] == "length" and len(out["token_ids"]) == 3


# ---- broken model directories -----------------------------------------------------------------------
def test_unknown_architecture_is_named(good_dir, tmp_path):
    model = copy_model(good_dir, tmp_path)
    edit_config(model, architectures=["FooForCausalLM"])
    with pytest.raises(SelectionError, match="unknown model architecture.*FooForCausalLM") as info:
        Engine(model=str(model), **ENGINE_KW)
    assert "LlamaForCausalLM" in str(info.value)  # and says what is supported


def test_missing_weights_name_the_directory(good_dir, tmp_path):
    model = tmp_path / "config-only"
    model.mkdir()
    shutil.copy(good_dir / "config.json", model)
    with pytest.raises(FileNotFoundError, match=f"no safetensors weights in {model}"):
        Engine(model=str(model), **ENGINE_KW)


def test_missing_shard_of_a_sharded_checkpoint_is_named(good_dir, tmp_path):
    model = copy_model(good_dir, tmp_path)
    (model / "model.safetensors").rename(model / "model-00001-of-00002.safetensors")
    names = list(load_file(str(model / "model-00001-of-00002.safetensors")))
    index = {"metadata": {}, "weight_map": {n: "model-00001-of-00002.safetensors" for n in names[:-1]}}
    index["weight_map"][names[-1]] = "model-00002-of-00002.safetensors"
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="missing shards: model-00002-of-00002.safetensors"):
        Engine(model=str(model), **ENGINE_KW)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_safetensors_names_the_file(good_dir, tmp_path, damage):
    model = copy_model(good_dir, tmp_path)
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"garbage": b"\x00not a safetensors file" * 8, "truncated": data[:len(data) // 2],
                         "empty": b""}[damage])
    with pytest.raises(ValueError, match=f"cannot read weights file {weights}"):
        Engine(model=str(model), **ENGINE_KW)


def test_nonexistent_model_path_is_named(tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(FileNotFoundError, match=f"model path '{missing}' does not exist"):
        Engine(model=str(missing), **ENGINE_KW)


def test_directory_without_config_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no config.json for model '{tmp_path}'"):
        Engine(model=str(tmp_path), **ENGINE_KW)


def test_unparsable_config_is_named(good_dir, tmp_path):
    model = copy_model(good_dir, tmp_path)
    (model / "config.json").write_text("{ not json")
    with pytest.raises(ValueError, match=f"cannot read model config {model / 'config.json'}"):
        Engine(model=str(model), **ENGINE_KW)


def test_checkpoint_missing_a_tensor_names_it(good_dir, tmp_path):
    model = copy_model(good_dir, tmp_path)
    tensors = load_file(str(model / "model.safetensors"))
    del tensors["model.layers.1.post_attention_layernorm.weight"]
    save_file(tensors, str(model / "model.safetensors"))
    with pytest.raises(ValueError, match="weights missing from the checkpoint: "
                                         "model.layers.1.post_attention_layernorm.weight"):
        Engine(model=str(model), **ENGINE_KW)


def test_checkpoint_with_an_unknown_tensor_names_it(good_dir, tmp_path):
    model = copy_model(good_dir, tmp_path)
    tensors = load_file(str(model / "model.safetensors"))
    tensors["model.layers.0.mystery.weight"] = torch.zeros(4)
    save_file(tensors, str(model / "model.safetensors"))
    with pytest.raises(ValueError, match="'model.layers.0.mystery.weight' has no matching parameter"):
        Engine(model=str(model), **ENGINE_KW)


@pytest.mark.parametrize("tensor", ["model.norm.weight", "model.layers.0.self_attn.k_proj.weight"])
def test_checkpoint_with_a_wrong_shape_names_the_tensor(good_dir, tmp_path, tensor):
    model = copy_model(good_dir, tmp_path)
    tensors = load_file(str(model / "model.safetensors"))
    tensors[tensor] = torch.zeros(tensors[tensor].shape[0] + 1, *tensors[tensor].shape[1:])
    save_file(tensors, str(model / "model.safetensors"))
    with pytest.raises(ValueError, match="shape") as info:
        Engine(model=str(model), **ENGINE_KW)
    assert f"'{tensor}'" in str(info.value)


# ---- bad requests ---------------------------------------------------------------------------------------
def test_prompt_longer_than_the_context_raises(engine):
    with pytest.raises(ValueError, match=f"exceeds the context length {CONTEXT}"):
        within(60, engine.generate, list(range(100)) * 3, {"max_new_tokens": 4})
    # fits alone, but not with max_new_tokens on top
    with pytest.raises(ValueError, match=rf"context length {CONTEXT} \(270 requested\)"):
        within(60, engine.generate, [5] * 250, {"max_new_tokens": 20})
    still_serves(engine)


def test_streaming_a_prompt_longer_than_the_context_raises(engine):
    async def consume():
        async for _ in engine.generate_stream(list(range(100)) * 3, {"max_new_tokens": 4}):
            pass

    with pytest.raises(ValueError, match=f"exceeds the context length {CONTEXT}"):
        within(60, asyncio.run, consume())
    still_serves(engine)


def test_a_rejected_prompt_in_a_batch_raises_and_stops_the_others(engine):
    prompts = [[1, 2, 3], [7] * 300, [4, 5, 6, 7]]
    with pytest.raises(ValueError, match=f"context length {CONTEXT}"):
        within(60, engine.generate, prompts, {"temperature": 0, "max_new_tokens": 8})
    still_serves(engine)
    stats = within(30, engine.get_stats)
    assert stats.num_running == 0 and stats.num_waiting == 0


@pytest.mark.parametrize("token", [160, 10**6, -1])
def test_prompt_token_outside_the_vocabulary_is_named(engine, token):
    with pytest.raises(ValueError, match=rf"prompt token id {token} is outside the vocabulary \[0, 160\)"):
        engine.generate([1, 2, token], {"max_new_tokens": 2})
    still_serves(engine)


def test_text_prompt_without_a_tokenizer(engine):
    with pytest.raises(ValueError, match="no tokenizer"):
        engine.generate("hello", {"max_new_tokens": 2})
    with pytest.raises(ValueError, match="no tokenizer"):
        engine.chat([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("kwargs", [{"max_tokens": 1}, {"temperature": 0, "enable_thinking": False}])
def test_chat_refuses_sampling_parameters_as_template_keywords(engine, kwargs):
    with pytest.raises(TypeError, match=r"chat\(\) got sampling parameters \['(max_tokens|temperature)'\]"):
        engine.chat([{"role": "user", "content": "hi"}], **kwargs)


def test_prompt_of_the_wrong_type(engine):
    with pytest.raises(ValueError, match="a prompt must be a string or a list of token ids"):
        engine.generate([[1, 2.5, 3]], {"max_new_tokens": 2})


@pytest.mark.parametrize("params, param", [
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -5}, "top_k"),
    ({"min_p": 2}, "min_p"),
    ({"max_new_tokens": -1}, "max_new_tokens"),
    ({"n": 0}, "n"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"frequency_penalty": 3}, "frequency_penalty"),
    ({"temperature": "hot"}, "temperature"),
    ({"stop_token_ids": [160]}, "stop_token_ids"),
    ({"logit_bias": {"999": 1.0}}, "logit_bias"),
    ({"stop": [""]}, "stop"),
    ({"tempreature": 0.5}, "tempreature"),
])
def test_invalid_sampling_params_are_named(engine, params, param):
    with pytest.raises(ValueError, match=param) as info:
        engine.generate([1, 2, 3], params)
    assert isinstance(info.value, SamplingParamError) and info.value.param == param
