"""Routes and fields common clients call: GET /v1/models/{id}, Anthropic count_tokens and streamed
usage, Ollama /api/show, /api/ps and non-streamed durations."""
from __future__ import annotations

import json

from server_harness import assert_error

QUESTION = [{"role": "user", "content": "Name three colors of the rainbow, please, in a short list."}]


def test_retrieve_model(openai_client, model_name, http):
    card = openai_client.models.retrieve(model_name)
    assert card.id == model_name and card.object == "model"
    assert_error(http.get("/v1/models/gpt-17"), 404, code="model_not_found")


def test_count_tokens_matches_messages_usage(anthropic_client, model_name):
    counted = anthropic_client.messages.count_tokens(model=model_name, messages=QUESTION, system="Be brief.")
    msg = anthropic_client.messages.create(model=model_name, max_tokens=1, messages=QUESTION, system="Be brief.")
    usage = msg.usage
    assert counted.input_tokens == usage.input_tokens + usage.cache_read_input_tokens > 10


def test_streamed_message_start_reports_cached_tokens(http, model_name):
    body = {"model": model_name, "max_tokens": 2, "messages": QUESTION, "temperature": 0}
    plain = http.post("/v1/messages", json=body).json()["usage"]  # the prompt is now cached
    assert plain["cache_read_input_tokens"] > 0
    with http.stream("POST", "/v1/messages", json={**body, "stream": True}) as resp:
        events = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: ")]
    start = next(e for e in events if e["type"] == "message_start")["message"]["usage"]
    again = http.post("/v1/messages", json=body).json()["usage"]
    assert (start["input_tokens"], start["cache_read_input_tokens"]) == (again["input_tokens"],
                                                                         again["cache_read_input_tokens"])


def test_ollama_show_ps_and_durations(http, model_name):
    show = http.post("/api/show", json={"model": model_name}).json()
    assert show["model_info"]["general.architecture"] == "llama" and "completion" in show["capabilities"]
    assert show["model_info"]["llama.context_length"] == 8192 and "im_start" in show["template"]
    assert http.post("/api/show", json={"name": model_name}).status_code == 200
    assert_error(http.post("/api/show", json={"model": "nope"}), 404)
    assert_error(http.post("/api/show", json={}), 400, param="model")
    ps = http.get("/api/ps").json()["models"]
    assert [m["name"] for m in ps] == [model_name]
    out = http.post("/api/chat", json={"model": model_name, "messages": QUESTION, "stream": False,
                                       "options": {"num_predict": 8, "temperature": 0}}).json()
    assert out["eval_count"] > 1 and out["eval_duration"] > 0 and out["prompt_eval_duration"] > 0
    assert out["prompt_eval_duration"] + out["eval_duration"] <= out["total_duration"]
