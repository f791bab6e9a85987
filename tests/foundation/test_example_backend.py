"""The example plugin's attention backend: certified by the conformance kit (as is the dup fixture's),
and in a real Engine against the built-in torch_native backend."""
from __future__ import annotations

import os

import pytest

from jackfield.testing import certify

@pytest.fixture
def backends(plugin_path):
    from jackfield_dup_plugin import DupExampleBackend
    from jackfield_example_plugin.sdpa import ExampleSDPABackend

    return {"example": ExampleSDPABackend, "dup": DupExampleBackend}


@pytest.mark.parametrize("which", ["example", "dup"])
def test_the_kit_certifies_both_backends(backends, which):
    """Numerics over the kit's shapes (GQA, page sizes, cached prefixes, strided q, mixed batches,
    sliding window where declared, every declared dtype) against the float32 reference."""
    report = certify(backends[which], "cpu")
    assert report.ok, report.format()


def test_example_declares_what_it_supports(backends):
    cls = backends["example"]
    assert cls.name == "example_sdpa" and cls.priority == -100
    assert "sliding_window" in cls.capabilities.features
    assert cls.availability().ok


TINY_LLAMA = ('{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 256, "hidden_size": 64, '
              '"intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, '
              '"max_position_embeddings": 256, "rms_norm_eps": 1e-5}')


@pytest.fixture
def tiny_llama(plugin_path, tmp_path, monkeypatch):
    """A dummy-weight Llama directory, with only the fixture and the needed built-in plugins enabled."""
    (tmp_path / "config.json").write_text(TINY_LLAMA)
    for var in [v for v in os.environ if v.startswith("JACKFIELD_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("JACKFIELD_PLUGINS", "example,dup,torch_native,unquantized,llama")
    return tmp_path


def greedy_tokens(model_dir, **settings) -> list[list[int]]:
    from jackfield import Engine

    with Engine(model=str(model_dir), load_format="dummy", kv_cache_bytes=1 << 24, warmup=False, **settings) as engine:
        assert engine.info.components["attention"]["name"] == settings["attention_backend"]
        outs = engine.generate([[1, 2, 3, 4, 5, 6, 7], [9, 8, 7]], {"temperature": 0, "max_new_tokens": 8})
        return [o["token_ids"] for o in outs]


def test_engine_with_the_example_backend_matches_torch_native(tiny_llama, caplog):
    with caplog.at_level("INFO", logger="jackfield_example_plugin"):
        reference_tokens = greedy_tokens(tiny_llama, attention_backend="torch_native")
        example_tokens = greedy_tokens(tiny_llama, attention_backend="example_sdpa",
                                       plugin_choice={"attention.example_sdpa": "jackfield-example-plugin"})
    assert example_tokens == reference_tokens
    assert caplog.text.count("example plugin: engine started (EngineInfo)") == 2


def test_engine_refuses_the_ambiguous_name(tiny_llama):
    from jackfield import Engine
    from jackfield.selection import SelectionError

    with pytest.raises(SelectionError, match="jackfield-example-plugin.*jackfield-dup-plugin|jackfield-dup-plugin.*jackfield-example-plugin"):
        Engine(model=str(tiny_llama), load_format="dummy", attention_backend="example_sdpa", warmup=False)


def test_per_mode_attention_backends(tiny_llama, monkeypatch):
    """prefill_attention_backend / decode_attention_backend: one backend per mode, in one engine. The
    example backend counts its calls by mode; the tokens equal torch_native's alone."""
    from jackfield import Engine
    from jackfield.hybrid_attention import HybridAttnBackend
    from jackfield_example_plugin.sdpa import ExampleSDPABackend

    calls = []
    for mode in ("forward_extend", "forward_decode"):
        real = getattr(ExampleSDPABackend, mode)
        monkeypatch.setattr(ExampleSDPABackend, mode,
                            lambda self, *a, _real=real, _mode=mode: calls.append(_mode) or _real(self, *a))
    reference_tokens = greedy_tokens(tiny_llama, attention_backend="torch_native")
    choice = {"attention.example_sdpa": "jackfield-example-plugin"}
    for prefill, decode in (("example_sdpa", "torch_native"), ("torch_native", "example_sdpa")):
        calls.clear()
        with Engine(model=str(tiny_llama), load_format="dummy", kv_cache_bytes=1 << 24, warmup=False,
                    attention_backend="torch_native", prefill_attention_backend=prefill,
                    decode_attention_backend=decode, plugin_choice=choice) as engine:
            comps = engine.info.components
            assert (comps["prefill_attention"]["name"], comps["decode_attention"]["name"]) == (prefill, decode)
            backend = engine.loop.scheduler.runner.attn_backend
            assert isinstance(backend, HybridAttnBackend)
            outs = engine.generate([[1, 2, 3, 4, 5, 6, 7], [9, 8, 7]], {"temperature": 0, "max_new_tokens": 8})
        assert [o["token_ids"] for o in outs] == reference_tokens
        assert set(calls) == {"forward_extend" if prefill == "example_sdpa" else "forward_decode"}, (prefill, calls)


def test_per_mode_attention_backend_errors(tiny_llama):
    from jackfield import Engine
    from jackfield.selection import SelectionError

    with pytest.raises(SelectionError, match="no attention component named 'nope'"):
        Engine(model=str(tiny_llama), load_format="dummy", decode_attention_backend="nope", warmup=False)
    with pytest.raises(SelectionError, match="decode_attention cannot be 'none'"):
        Engine(model=str(tiny_llama), load_format="dummy", attention_backend="torch_native",
               decode_attention_backend="none", warmup=False)
