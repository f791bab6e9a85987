"""GGUF conversion: weights equal transformers' GGUF loader, caching, and bad input."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from jackfield.loader import gguf as gguf_loader
from jackfield.loader.default_model import DEFAULT_MODEL_FILE, default_model_path
from jackfield.loader.gguf import convert_gguf, hf_tensor_name, unpermute_qk


@pytest.fixture(scope="session")
def gguf_path() -> str:
    return default_model_path()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory, gguf_path, session_started) -> str:
    """A cache root whose conversion of the embedded model is this session's own work: the default
    cache where a test earlier in this session converted the file into it (the first engine of a
    run on a fresh home, as in CI: converting it again would take ~20 s), else a new directory,
    where `converted` converts it. Never an entry left by an earlier run (older code)."""
    entry = gguf_loader.cache_root() / "gguf" / gguf_loader.cache_key(Path(gguf_path).resolve())
    if (entry / "config.json").is_file() and (entry / "config.json").stat().st_mtime >= session_started:
        return str(gguf_loader.cache_root())
    return str(tmp_path_factory.mktemp("jackfield-cache"))


@pytest.fixture(scope="session")
def converted(gguf_path, cache_dir) -> Path:
    return convert_gguf(gguf_path, cache_dir=cache_dir)


def test_default_model_path_points_at_the_gguf(gguf_path):
    assert os.path.isabs(gguf_path)
    assert gguf_path.endswith(DEFAULT_MODEL_FILE)
    with open(gguf_path, "rb") as file:
        assert file.read(4) == b"GGUF"


def test_converted_directory_layout(converted):
    names = {path.name for path in converted.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    config = json.loads((converted / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (9, 3, 64)
    assert config["tie_word_embeddings"] is True
    assert config["max_position_embeddings"] == 8192
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)


def test_weights_equal_transformers_gguf_loader(converted, smollm2_hf_dir):
    """Against the model transformers' GGUF loader reads from the same file, float32 (the session's
    saved copy of it, config and weights as loaded: tests/conftest.py's smollm2_hf_dir)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(str(smollm2_hf_dir), dtype=torch.float32).state_dict()
    ours = load_file(str(converted / "model.safetensors"))
    assert set(ours) == set(reference) - {"lm_head.weight"}
    for name, tensor in ours.items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, reference[name]), name
    assert torch.equal(ours["model.embed_tokens.weight"], reference["lm_head.weight"])

    ref_config = AutoConfig.from_pretrained(str(smollm2_hf_dir))
    our_config = AutoConfig.from_pretrained(str(converted))
    for key in ("rope_parameters", "rms_norm_eps", "head_dim", "num_key_value_heads", "intermediate_size"):
        assert getattr(our_config, key) == getattr(ref_config, key), key


def test_second_conversion_is_a_cache_hit(converted, gguf_path, cache_dir):
    started = time.perf_counter()
    again = convert_gguf(gguf_path, cache_dir=cache_dir)
    assert time.perf_counter() - started < 5
    assert again == converted


def test_cache_root_comes_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("JACKFIELD_CACHE_DIR", str(tmp_path))
    assert gguf_loader.cache_root() == tmp_path
    assert gguf_loader.cache_root("/elsewhere") == Path("/elsewhere")


def test_failed_conversion_leaves_no_cache_entry(monkeypatch, tmp_path):
    def explode(reader, arch, config, out_dir, desc):
        (out_dir / "model.safetensors").write_bytes(b"half a file")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(gguf_loader, "write_weights", explode)
    with pytest.raises(RuntimeError, match="disk on fire"):
        convert_gguf(str(write_tiny_gguf(tmp_path / "tiny.gguf", "llama")), cache_dir=str(tmp_path))
    assert list((tmp_path / "gguf").iterdir()) == []


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        convert_gguf(str(missing), cache_dir=str(tmp_path))


def test_garbage_file_is_a_value_error_naming_the_path(tmp_path):
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match="garbage.gguf"):
        convert_gguf(str(garbage), cache_dir=str(tmp_path / "cache"))
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []


TINY_TENSORS = {
    "token_embd.weight": (4, 8), "output_norm.weight": (8,), "output.weight": (4, 8),
    "blk.0.attn_q.weight": (8, 8), "blk.0.attn_k.weight": (4, 8), "blk.0.attn_v.weight": (4, 8),
    "blk.0.attn_output.weight": (8, 8), "blk.0.attn_norm.weight": (8,), "blk.0.ffn_norm.weight": (8,),
    "blk.0.ffn_gate.weight": (16, 8), "blk.0.ffn_up.weight": (16, 8), "blk.0.ffn_down.weight": (8, 16),
}
QWEN2_BIASES = {"blk.0.attn_q.bias": (8,), "blk.0.attn_k.bias": (4,), "blk.0.attn_v.bias": (4,)}
QWEN3_NORMS = {"blk.0.attn_q_norm.weight": (4,), "blk.0.attn_k_norm.weight": (4,)}


def write_tiny_gguf(path: Path, arch: str, with_metadata: bool = True) -> Path:
    """A one-layer float32 GGUF file (hidden 8, 2 heads, 1 kv head, head_dim 4, vocab 4)."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch)
    keys = {
        "block_count": 1, "embedding_length": 8, "feed_forward_length": 16, "vocab_size": 4,
        "attention.head_count": 2, "attention.head_count_kv": 1, "attention.key_length": 4,
    }
    for key, value in keys.items() if with_metadata else ():
        writer.add_uint32(f"{arch}.{key}", value)
    extra = {"qwen2": QWEN2_BIASES, "qwen3": QWEN3_NORMS}.get(arch, {})
    rng = np.random.default_rng(0)
    for name, shape in {**TINY_TENSORS, **extra}.items():
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_unknown_architecture_is_named(tmp_path):
    with pytest.raises(ValueError, match="'mamba'"):
        convert_gguf(str(write_tiny_gguf(tmp_path / "mamba.gguf", "mamba")), cache_dir=str(tmp_path / "cache"))


def test_missing_metadata_is_named(tmp_path):
    path = write_tiny_gguf(tmp_path / "headless.gguf", "llama", with_metadata=False)
    with pytest.raises(ValueError, match="headless.gguf.*llama.attention.head_count"):
        convert_gguf(str(path), cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_qwen_tensors_load_into_transformers(tmp_path, arch):
    from transformers import AutoConfig, AutoModelForCausalLM

    reader = gguf_loader.open_gguf(write_tiny_gguf(tmp_path / f"{arch}.gguf", arch))
    config = gguf_loader.hf_config(reader, arch, gguf_loader.ARCHITECTURES[arch])
    assert config["architectures"] == [f"{arch.capitalize()}ForCausalLM"]
    assert config["tie_word_embeddings"] is False
    (tmp_path / "config.json").write_text(json.dumps(config))
    gguf_loader.write_weights(reader, gguf_loader.ARCHITECTURES[arch], config, tmp_path, desc="")
    expected = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(tmp_path))).state_dict()
    ours = load_file(str(tmp_path / "model.safetensors"))
    assert {name: tuple(t.shape) for name, t in ours.items()} == {n: tuple(t.shape) for n, t in expected.items()}
    for tensor in reader.tensors:
        converted = ours[hf_tensor_name(tensor.name)]
        assert torch.equal(converted, torch.from_numpy(np.array(tensor.data)).reshape(converted.shape))


def test_tensor_names_map_to_hugging_face():
    assert hf_tensor_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_tensor_name("output.weight") == "lm_head.weight"
    assert hf_tensor_name("output_norm.weight") == "model.norm.weight"
    assert hf_tensor_name("blk.7.attn_output.weight") == "model.layers.7.self_attn.o_proj.weight"
    assert hf_tensor_name("blk.0.attn_q.bias") == "model.layers.0.self_attn.q_proj.bias"
    assert hf_tensor_name("blk.2.attn_k_norm.weight") == "model.layers.2.self_attn.k_norm.weight"
    assert hf_tensor_name("blk.1.ffn_norm.weight") == "model.layers.1.post_attention_layernorm.weight"
    assert hf_tensor_name("rope_freqs.weight") is None
    with pytest.raises(ValueError, match="ssm_conv1d"):
        hf_tensor_name("blk.0.ssm_conv1d.weight")


def test_unpermute_reverses_llama_cpp_permute():
    n_head, head_dim, hidden = 3, 8, 5
    original = np.arange(n_head * head_dim * hidden, dtype=np.float32).reshape(n_head * head_dim, hidden)
    permuted = (
        original.reshape(n_head, 2, head_dim // 2, hidden).swapaxes(1, 2).reshape(original.shape)
    )
    assert np.array_equal(unpermute_qk(permuted, n_head), original)


def test_large_models_are_written_as_indexed_shards(monkeypatch, tmp_path):
    tensors = {f"model.layers.{i}.mlp.up_proj.weight": torch.full((16, 16), float(i)) for i in range(5)}
    monkeypatch.setattr(gguf_loader, "hf_tensors", lambda *args: iter(tensors.items()))
    monkeypatch.setattr(gguf_loader, "SHARD_BYTES", 2 * 16 * 16 * 4)
    gguf_loader.write_weights(None, None, {}, tmp_path, desc="")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    loaded = {}
    for file in files:
        loaded.update(load_file(str(tmp_path / file)))
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[name], tensors[name]) for name in tensors)
    assert not (tmp_path / "model.safetensors").exists()
