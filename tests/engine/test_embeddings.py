"""Embedding models: detection (headless architectures, sentence-transformers layouts, the settings)
and pooled hidden states of a tiny random headless Qwen3 (`Qwen3Model`, no LM head) against
transformers' `last_hidden_state`, through the scheduler with a small prefill chunk."""
from __future__ import annotations

import json

import pytest
import torch

from jackfield.config import settings_for
from jackfield.embedding import embedding_spec
from model_harness import BASE, VOCAB, randomize_, within

QWEN3 = {**BASE, "tie_word_embeddings": True, "attention_bias": False}
LENGTHS = (5, 11, 19)


@pytest.fixture(scope="module")
def headless(tmp_path_factory):
    """(checkpoint dir, transformers Qwen3Model) of a tiny random Qwen3 saved without its head."""
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(0)
    model = Qwen3Model(Qwen3Config(**QWEN3)).eval()
    randomize_(model, 11)
    directory = tmp_path_factory.mktemp("qwen3_embedding")
    model.save_pretrained(str(directory), safe_serialization=True)
    assert json.loads((directory / "config.json").read_text())["architectures"] == ["Qwen3Model"]
    return directory, model


def write_sentence_transformers(directory, pooling_key: str, normalize: bool) -> None:
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (directory / "modules.json").write_text(json.dumps(modules))
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 64, pooling_key: True}))


def test_detection(tmp_path):
    generative = embedding_spec(settings_for(), tmp_path, ("Qwen3ForCausalLM",))
    assert not generative.is_embedding and generative.pooling == "last" and generative.normalize
    spec = embedding_spec(settings_for(), tmp_path, ("Qwen3Model",))
    assert spec.is_embedding and spec.headless and "headless" in spec.reason
    write_sentence_transformers(tmp_path, "pooling_mode_mean_tokens", normalize=False)
    st = embedding_spec(settings_for(), tmp_path, ("Qwen3ForCausalLM",))
    assert st.is_embedding and not st.headless and (st.pooling, st.normalize) == ("mean", False)
    forced = embedding_spec(settings_for(is_embedding=False, embedding_pooling="last", embedding_normalize=True),
                            tmp_path, ("Qwen3ForCausalLM",))
    assert not forced.is_embedding and (forced.pooling, forced.normalize) == ("last", True)


def test_unsupported_pooling_is_named(tmp_path):
    write_sentence_transformers(tmp_path, "pooling_mode_cls_token", normalize=True)
    with pytest.raises(ValueError, match="pooling_mode_cls_token"):
        embedding_spec(settings_for(), tmp_path, ("Qwen3ForCausalLM",))


def test_headless_qwen3_embeddings_equal_transformers(headless):
    from jackfield.engine import Engine

    directory, hf = headless
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, VOCAB, (n,), generator=gen).tolist() for n in LENGTHS]
    with torch.no_grad():
        hidden = [hf(torch.tensor([p])).last_hidden_state[0] for p in prompts]
    with Engine(model=str(directory), device="cpu", dtype="float32", kv_cache_bytes=1 << 22, chunked_prefill_size=8,
                disable_overlap_schedule=False) as eng:
        assert eng.info.embedding.is_embedding and eng.info.embedding.headless
        last = within(60, eng.embed, prompts, "last", False)
        mean = within(60, eng.embed, prompts, "mean", True)
        assert eng.get_stats().kv_used_tokens == 0
    for i, h in enumerate(hidden):
        assert torch.allclose(torch.tensor(last[i]), h[-1], atol=1e-5), f"prompt {i}: last token"
        ref = torch.nn.functional.normalize(h.mean(0), dim=0)
        assert torch.allclose(torch.tensor(mean[i]), ref, atol=1e-5), f"prompt {i}: mean"
