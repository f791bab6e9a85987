"""A model served as an embedding model (a headless Qwen3 checkpoint, detected from its config):
/v1/embeddings and /api/embed answer, generation routes refuse with a 400 naming why."""
from __future__ import annotations

import httpx
import pytest
import torch
from server_harness import assert_error, start_server

HIDDEN = 64


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(0)
    model = Qwen3Model(Qwen3Config(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, head_dim=16, vocab_size=160, intermediate_size=128,
                                   max_position_embeddings=256)).eval()
    directory = tmp_path_factory.mktemp("embedder")
    model.save_pretrained(str(directory), safe_serialization=True)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model(torch.tensor([[5, 6, 7]])).last_hidden_state[0, -1], dim=0)
    srv = start_server(directory, "--model", str(directory), "--device", "cpu", "--kv-cache-bytes", "4194304",
                       "--file-storage-dir", str(directory / "files"))
    yield srv, ref
    try:
        assert srv.stop() == 0, srv.output()[-3000:]
    finally:
        srv.kill()


def test_embedding_model_embeds_and_refuses_generation(embedder):
    srv, ref = embedder
    http = httpx.Client(base_url=srv.url, timeout=60)
    info = http.get("/get_model_info").json()
    assert info["is_generation"] is False and info["embedding"]["pooling"] == "last"
    out = http.post("/v1/embeddings", json={"input": [[5, 6, 7]], "encoding_format": "float"}).json()
    assert out["data"][0]["embedding"] == pytest.approx(ref.tolist(), abs=1e-5)
    for path, body in [("/v1/completions", {"prompt": [5, 6], "max_tokens": 1}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
                       ("/generate", {"input_ids": [5, 6]})]:
        err = assert_error(http.post(path, json=body), 400, code="model_not_generative")
        assert "embedding model" in err["message"] and "/v1/embeddings" in err["message"]
    assert http.get("/health_generate").status_code == 200
