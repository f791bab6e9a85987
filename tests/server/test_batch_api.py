"""The OpenAI Files and Batch APIs through the official `openai` client: upload, create, poll to
completion, download the output and error files; malformed lines; limits; unknown ids; cancelling a
running batch."""
from __future__ import annotations

import json
import time

import openai
import pytest
from server_harness import UPLOAD_LIMIT, assert_error


def jsonl(lines: list) -> bytes:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()


def chat_line(custom_id: str, content: str, **extra) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": content}], "max_tokens": 4, "temperature": 0, **extra}}


def wait_for(client, batch_id: str, statuses: tuple[str, ...], timeout: float = 120):
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses or time.monotonic() > deadline:
            return batch
        time.sleep(0.2)


def records(client, file_id: str | None) -> list[dict]:
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()] if file_id else []


def test_batch_runs_with_malformed_lines_reported_per_line(openai_client, http):
    lines = [chat_line("a", "Say hi."), "{not json", chat_line("b", "Say bye.", temperature=-1),
             {"custom_id": "c", "method": "GET", "url": "/v1/chat/completions", "body": {}},
             chat_line("d", "Count to three.", frobnicate=1), chat_line("a", "Duplicate id."),
             chat_line("e", "Name a fruit.")]
    file = openai_client.files.create(file=("requests.jsonl", jsonl(lines)), purpose="batch")
    assert file.purpose == "batch" and file.bytes == len(jsonl(lines))
    assert openai_client.files.retrieve(file.id).filename == "requests.jsonl"
    batch = openai_client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                         completion_window="24h", metadata={"run": "t1"})
    assert batch.status in ("validating", "in_progress") and batch.metadata == {"run": "t1"}
    batch = wait_for(openai_client, batch.id, ("completed", "failed"))
    assert batch.status == "completed", batch
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (7, 2, 5)
    done = records(openai_client, batch.output_file_id)
    assert [r["custom_id"] for r in done] == ["a", "e"]
    direct = http.post("/v1/chat/completions", json=chat_line("a", "Say hi.")["body"]).json()
    assert done[0]["response"]["status_code"] == 200
    assert done[0]["response"]["body"]["choices"][0]["message"] == direct["choices"][0]["message"]
    errors = records(openai_client, batch.error_file_id)
    by_line = {e["error"]["message"].split(":")[0]: e for e in errors if e["response"] is None}
    assert set(by_line) == {"line 2", "line 4", "line 6"}
    assert by_line["line 6"]["custom_id"] == "a"
    failed = {e["custom_id"]: e for e in errors if e["response"] is not None}
    assert set(failed) == {"b", "d"}
    assert failed["b"]["response"]["status_code"] == 400 and failed["b"]["response"]["body"]["error"]["param"] == \
        "temperature"
    assert "frobnicate" in failed["d"]["error"]["message"]
    assert_error(http.post(f"/v1/batches/{batch.id}/cancel"), 400, param="batch_id")  # it has completed
    listed = [b.id for b in openai_client.batches.list()]
    assert batch.id in listed
    assert {file.id, batch.output_file_id, batch.error_file_id} <= {f.id for f in openai_client.files.list()}
    openai_client.files.delete(file.id)
    with pytest.raises(openai.NotFoundError):
        openai_client.files.retrieve(file.id)


def test_cancel_a_running_batch(openai_client, http):
    lines = [chat_line(f"r{i}", f"Tell story number {i}.", max_tokens=400, ignore_eos=True) for i in range(24)]
    file = openai_client.files.create(file=("long.jsonl", jsonl(lines)), purpose="batch")
    batch = openai_client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                         completion_window="24h")
    wait_for(openai_client, batch.id, ("in_progress",))
    time.sleep(1.0)
    assert http.get("/get_server_info").json()["num_running"] > 0  # its requests are running
    cancelling = openai_client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    batch = wait_for(openai_client, batch.id, ("cancelled",), timeout=60)
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    assert batch.request_counts.completed < 24
    assert len(records(openai_client, batch.output_file_id)) == batch.request_counts.completed
    deadline = time.monotonic() + 30
    while (info := http.get("/get_server_info").json())["num_running"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert info["num_running"] == 0 and info["num_waiting"] == 0 and info["requests_in_flight"] == 0
    assert openai_client.batches.cancel(batch.id).status == "cancelled"  # cancelling again changes nothing


def test_files_and_batches_bad_input(openai_client, http):
    with pytest.raises(openai.APIStatusError) as too_big:
        openai_client.files.create(file=("big.jsonl", b"x" * (UPLOAD_LIMIT + 1)), purpose="batch")
    assert too_big.value.status_code == 413 and too_big.value.body["param"] == "file"
    assert_error(http.post("/v1/files", files={"file": ("a.jsonl", b"{}\n")}, data={"purpose": "fine-tune"}), 400,
                 param="purpose")
    assert_error(http.post("/v1/files", files={"file": ("a.jsonl", b"{}\n")},
                           data={"purpose": "batch", "expires_after": "1"}), 400, param="expires_after")
    for path in ("/v1/files/file-0000", "/v1/files/file-0000/content", "/v1/files/../etc", "/v1/batches/batch_0"):
        assert_error(http.get(path), 404)
    assert_error(http.delete("/v1/files/file-0000"), 404)
    assert_error(http.post("/v1/batches/batch_0/cancel"), 404, code="batch_not_found")
    assert_error(http.post("/v1/batches", json={"input_file_id": "file-0000", "endpoint": "/v1/completions",
                                               "completion_window": "24h"}), 404, code="file_not_found")
    file = openai_client.files.create(file=("e.jsonl", b"\n\n"), purpose="batch")
    for body, param in [({"endpoint": "/v1/responses"}, "endpoint"), ({"completion_window": "1h"}, "completion_window"),
                        ({"output_expires_after": {"anchor": "created_at", "seconds": 3600}}, "output_expires_after")]:
        req = {"input_file_id": file.id, "endpoint": "/v1/completions", "completion_window": "24h", **body}
        assert_error(http.post("/v1/batches", json=req), 400, param=param)
    empty = openai_client.batches.create(input_file_id=file.id, endpoint="/v1/completions", completion_window="24h")
    empty = wait_for(openai_client, empty.id, ("failed", "completed"))
    assert empty.status == "failed" and empty.errors.data[0].code == "invalid_file"
