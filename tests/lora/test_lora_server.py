"""LoRA through a real `jackfield serve` (SmolLM2, CPU) and the official `openai` client.

The server starts with one adapter (`--lora-paths`), a `--lora-dir` holding more, and an API key.
Requests pick adapters by `model: "<model>:<adapter>"` or `lora_path`; `/v1/models` lists them;
`/v1/load_lora_adapter` and `/v1/unload_lora_adapter` change them at run time. Bad input answers in
the OpenAI error shape: unknown adapters 404, bad adapters 400 naming the value, paths outside
`--lora-dir` 403, a missing API key 401.
"""
from __future__ import annotations

import json
import os

import httpx
import pytest
import torch

from server_harness import SMALL, assert_error, start_server

if os.environ.get("JACKFIELD_TEST_SMOLLM2", "1").lower() in ("0", "off", "false", "no"):
    pytest.skip("JACKFIELD_TEST_SMOLLM2 is off", allow_module_level=True)

KEY = "lora-test-key"
GREEDY = {"temperature": 0, "max_tokens": 8}
PROMPT = "The capital of France is"


def write_adapter(directory, rank: int, targets: tuple[str, ...], seed: int, base: str = "SmolLM2-135M") -> None:
    """A PEFT LoRA directory for SmolLM2 with random A and B, written as peft writes it."""
    from safetensors.torch import save_file

    from jackfield.loader.source import resolve_model

    cfg = resolve_model(None).hf_config
    hidden, inter, head = cfg["hidden_size"], cfg["intermediate_size"], cfg["hidden_size"] // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * head
    shapes = {"q_proj": (hidden, hidden), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (hidden, hidden),
              "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(cfg["num_hidden_layers"]):
        for module in targets:
            part = "self_attn" if module in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            key = f"base_model.model.model.layers.{layer}.{part}.{module}"
            n_in, n_out = shapes[module]
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, n_in, generator=g) / n_in ** 0.5
            tensors[f"{key}.lora_B.weight"] = torch.randn(n_out, rank, generator=g) / rank ** 0.5
    directory.mkdir(parents=True)
    (directory / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(targets),
        "base_model_name_or_path": base, "bias": "none", "use_rslora": False}))
    save_file(tensors, str(directory / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-dir")
    write_adapter(root / "sql", 8, ("q_proj", "v_proj"), seed=1)
    write_adapter(root / "chat", 4, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), 2)
    write_adapter(root / "auto", 2, ("o_proj", "down_proj"), seed=3)
    write_adapter(root / "huge", 32, ("q_proj",), seed=4)
    write_adapter(root.parent / "outside", 4, ("q_proj",), seed=5)
    return root


@pytest.fixture(scope="module")
def server(lora_dir, tmp_path_factory):
    # one torch thread in the server too (see conftest.py): much faster on a busy machine
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        srv = start_server(tmp_path_factory.mktemp("lora-server"), *SMALL, "--lora-dir", str(lora_dir),
                           "--lora-paths", f"sql={lora_dir / 'sql'}", "--max-loras", "2", "--api-key", KEY)
    finally:
        if before is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = before
    yield srv
    try:
        assert srv.stop() == 0, srv.output()[-3000:]
    finally:
        srv.kill()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def base(client) -> str:
    return client.models.list().data[0].id


def complete(client, model: str, **extra) -> str:
    out = client.completions.create(model=model, prompt=PROMPT, **GREEDY, extra_body=extra or None)
    return out.choices[0].text


def model_ids(client) -> set[str]:
    return {m.id for m in client.models.list().data}


def test_models_lists_the_startup_adapter(client, base):
    assert f"{base}:sql" in model_ids(client)


def test_adapter_by_model_name_or_lora_path(client, base):
    plain, tuned = complete(client, base), complete(client, f"{base}:sql")
    assert tuned != plain
    assert complete(client, base, lora_path="sql") == tuned
    assert complete(client, "sql") == tuned  # the bare adapter name, vLLM's convention
    chat = client.chat.completions.create(model=f"{base}:sql", messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=4, temperature=0)
    assert chat.model == f"{base}:sql" and chat.choices[0].message.content


def test_load_by_name_from_lora_dir_then_unload(client, base):
    import openai

    loaded = client.post("/load_lora_adapter", body={"lora_name": "chat"}, cast_to=object)
    assert loaded["ok"] and "chat" in {a["name"] for a in loaded["adapters"]}
    assert f"{base}:chat" in model_ids(client)
    tuned = complete(client, f"{base}:chat")
    assert tuned != complete(client, base)
    gone = client.post("/unload_lora_adapter", body={"lora_name": "chat"}, cast_to=object)
    assert gone["ok"] and f"{base}:chat" not in model_ids(client)
    with pytest.raises(openai.NotFoundError):
        client.post("/unload_lora_adapter", body={"lora_name": "chat"}, cast_to=object)
    assert complete(client, base, lora_path="chat") == tuned  # loaded again from lora_dir on first use


def test_an_adapter_in_lora_dir_loads_on_first_use(client, base):
    assert f"{base}:auto" not in model_ids(client)
    assert complete(client, f"{base}:auto") != complete(client, base)
    assert f"{base}:auto" in model_ids(client)


def test_native_and_ollama_routes_take_the_adapter(server, client, base):
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"text": PROMPT, "sampling_params": {"temperature": 0, "max_new_tokens": 8}}
    plain = httpx.post(server.url + "/generate", json=body, headers=headers, timeout=120).json()
    tuned = httpx.post(server.url + "/generate", json={**body, "lora_path": "sql"}, headers=headers, timeout=120).json()
    assert tuned["text"] == complete(client, f"{base}:sql") and tuned["text"] != plain["text"]
    batch = httpx.post(server.url + "/generate", json={**body, "text": [PROMPT, PROMPT], "lora_path": ["sql", None]},
                       headers=headers, timeout=120).json()
    assert [b["text"] for b in batch] == [tuned["text"], plain["text"]]
    ollama = {"model": f"{base}:sql", "prompt": PROMPT, "raw": True, "stream": False,
              "options": {"temperature": 0, "num_predict": 8}}
    resp = httpx.post(server.url + "/api/generate", json=ollama, headers=headers, timeout=120)
    assert resp.status_code == 200 and resp.json()["response"] == tuned["text"]


def test_bad_input(server, client, base, lora_dir):
    import openai

    with pytest.raises(openai.NotFoundError) as err:
        complete(client, f"{base}:nope")
    assert err.value.code == "model_not_found" and "nope" in err.value.message
    with pytest.raises(openai.NotFoundError):
        complete(client, base, lora_path="nope")
    with pytest.raises(openai.BadRequestError, match="rank r=32 exceeds max_lora_rank 16"):
        client.post("/load_lora_adapter", body={"lora_name": "huge"}, cast_to=object)
    with pytest.raises(openai.PermissionDeniedError, match="outside lora_dir"):
        client.post("/load_lora_adapter", body={"lora_name": "x", "lora_path": str(lora_dir.parent / "outside")},
                    cast_to=object)
    with pytest.raises(openai.PermissionDeniedError):
        client.post("/load_lora_adapter", body={"lora_name": "x", "lora_path": "../outside"}, cast_to=object)
    with pytest.raises(openai.BadRequestError, match="already loaded"):
        client.post("/load_lora_adapter", body={"lora_name": "sql"}, cast_to=object)
    with pytest.raises(openai.BadRequestError):
        complete(client, f"{base}:sql", lora_path="auto")
    headers = {"Authorization": f"Bearer {KEY}"}
    assert_error(httpx.post(server.url + "/v1/load_lora_adapter", json={}, headers=headers), 400, param="lora_name")
    assert_error(httpx.post(server.url + "/v1/load_lora_adapter", json={"lora_name": "chat"}), 401)
    assert_error(httpx.post(server.url + "/v1/unload_lora_adapter", json={"lora_name": "sql"}), 401)
    assert f"{base}:sql" in model_ids(client)
