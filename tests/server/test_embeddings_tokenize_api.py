"""/v1/embeddings and Ollama /api/embed on the served (generative) SmolLM2, and vLLM's /tokenize,
/detokenize and /tokenizer_info. Embedding values are checked against transformers in
tests/engine/test_prompt_readout.py; here the shapes, encodings and agreement between routes."""
from __future__ import annotations

import math

import pytest
from server_harness import assert_error

TEXTS = ["The capital of France is Paris.", "Bees make honey."]


def test_openai_client_embeddings(openai_client, model_name, http):
    out = openai_client.embeddings.create(model=model_name, input=TEXTS)  # the client asks for base64
    assert [d.index for d in out.data] == [0, 1] and out.model == model_name
    vecs = [d.embedding for d in out.data]
    assert all(len(v) == 576 and math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-4) for v in vecs)
    floats = http.post("/v1/embeddings", json={"input": TEXTS, "encoding_format": "float"}).json()
    assert all(d["embedding"] == pytest.approx(v, abs=1e-6) for d, v in zip(floats["data"], vecs))
    ids = http.post("/tokenize", json={"prompt": TEXTS[0]}).json()["tokens"]
    assert floats["usage"]["prompt_tokens"] == len(ids) + len(http.post("/tokenize", json={"prompt": TEXTS[1]}).json()["tokens"])
    by_ids = http.post("/v1/embeddings", json={"input": [ids], "encoding_format": "float"}).json()
    assert by_ids["data"][0]["embedding"] == pytest.approx(vecs[0], abs=1e-5)
    ollama = http.post("/api/embed", json={"model": model_name, "input": TEXTS}).json()
    assert all(e == pytest.approx(v, abs=1e-5) for e, v in zip(ollama["embeddings"], vecs))
    assert ollama["prompt_eval_count"] > 0
    assert vecs[0] != pytest.approx(vecs[1], abs=1e-2)


def test_embedding_bad_input(http, model_name):
    assert_error(http.post("/v1/embeddings", json={"input": "x", "dimensions": 128}), 400, param="dimensions")
    assert_error(http.post("/v1/embeddings", json={"input": "x", "encoding_format": "int8"}), 400,
                 param="encoding_format")
    assert_error(http.post("/v1/embeddings", json={"input": []}), 400, param="input")
    assert_error(http.post("/v1/embeddings", json={"input": "hello " * 9000}), 400, code="context_length_exceeded")
    assert_error(http.post("/v1/embeddings", json={"input": "x", "model": "nope"}), 404, code="model_not_found")
    assert_error(http.post("/api/embed", json={"model": model_name, "input": "hello " * 9000, "truncate": False}), 400,
                 code="context_length_exceeded")
    # truncated to the context (8191 tokens), which is more than this test server's small KV cache holds
    err = assert_error(http.post("/api/embed", json={"model": model_name, "input": "hello " * 9000}), 400)
    assert "8191 tokens" in err["message"] and "KV cache" in err["message"]


def test_tokenize_and_detokenize(http, model_name):
    out = http.post("/tokenize", json={"model": model_name, "prompt": "Hello world", "return_token_strs": True}).json()
    assert out["count"] == len(out["tokens"]) == len(out["token_strs"]) and out["max_model_len"] == 8192
    assert http.post("/detokenize", json={"tokens": out["tokens"]}).json() == {"prompt": "Hello world"}
    chat = http.post("/tokenize", json={"messages": [{"role": "user", "content": "Hi"}]}).json()
    text = http.post("/detokenize", json={"tokens": chat["tokens"]}).json()["prompt"]
    assert text.endswith("<|im_start|>assistant\n") and "Hi<|im_end|>" in text
    open_turn = http.post("/tokenize", json={"messages": [{"role": "user", "content": "Hi"},
                                                          {"role": "assistant", "content": "Hello the"}],
                                             "add_generation_prompt": False, "continue_final_message": True}).json()
    assert http.post("/detokenize", json={"tokens": open_turn["tokens"]}).json()["prompt"].endswith("Hello the")
    usage = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                    "max_tokens": 1}).json()["usage"]
    assert usage["prompt_tokens"] == chat["count"]
    info = http.get("/tokenizer_info").json()
    assert info["eos_token"] == "<|im_end|>" and "im_start" in info["chat_template"]


@pytest.mark.parametrize("path,body,param", [
    ("/tokenize", {}, "prompt"),
    ("/tokenize", {"prompt": "x", "messages": [{"role": "user", "content": "x"}]}, "prompt"),
    ("/tokenize", {"messages": [{"role": "user", "content": "x"}], "continue_final_message": True},
     "continue_final_message"),
    ("/detokenize", {"tokens": [1, 99999999]}, "tokens"),
    ("/detokenize", {"tokens": "abc"}, "tokens"),
])
def test_tokenize_bad_input(http, path, body, param):
    assert_error(http.post(path, json=body), 400, param=param)
