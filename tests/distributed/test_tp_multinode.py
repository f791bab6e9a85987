"""A two-"node" launch on one machine: `jackfield serve --nnodes 2 --node-rank 0|1 --tp-size 2
--dist-init-addr 127.0.0.1:P` as two processes. Node 0 serves HTTP and runs rank 0's scheduler;
node 1 runs rank 1 only and exits when node 0 stops."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from server_harness import SERVE, descendants, start_server, wait_gone  # noqa: E402
from jackfield.distributed.group import free_loopback_addr  # noqa: E402
import tp_harness  # noqa: E402,F401  (puts tests/engine on the path)
from model_harness import ArchSpec, save_tiny_model  # noqa: E402

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def tiny_with_tokenizer(directory: Path) -> Path:
    """The TP test model with SmolLM2's vocabulary size and tokenizer, so the server can take text."""
    from jackfield.loader.source import resolve_model

    spec = ArchSpec("llama_tp_served", "LlamaConfig", {"tie_word_embeddings": True, "vocab_size": 49152}, seed=12)
    save_tiny_model(spec, directory)
    smollm2 = resolve_model(None, "auto").path
    for name in TOKENIZER_FILES:
        shutil.copy(smollm2 / name, directory / name)
    return directory


def test_two_nodes_serve_a_request(tmp_path):
    model = tiny_with_tokenizer(tmp_path / "model")
    addr = free_loopback_addr()
    common = [str(model), "--device", "cpu", "--dtype", "float32", "--kv-cache-bytes", str(1 << 22),
              "--max-running-requests", "4", "--tp-size", "2", "--nnodes", "2", "--dist-init-addr", addr,
              "--dist-timeout", "60"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    node1_log = tmp_path / "node1.log"
    with open(node1_log, "wb") as out:
        node1 = subprocess.Popen([*SERVE, "--model", *common, "--node-rank", "1"], stdout=out,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    server = None
    try:
        server = start_server(tmp_path, "--model", *common, "--node-rank", "0", env={"OMP_NUM_THREADS": "1"})
        children = descendants(server.proc.pid) | descendants(node1.pid)
        assert "rank 1 on cpu: heads 2..3, KV heads 1..1" in server.output()
        resp = httpx.post(server.url + "/v1/completions", timeout=120,
                          json={"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["usage"]["completion_tokens"] == 6 and body["choices"][0]["finish_reason"] == "length"
        assert server.stop() == 0, server.output()[-3000:]
        assert node1.wait(timeout=60) == 0, node1_log.read_text(errors="replace")[-3000:]
        assert not wait_gone(children), "rank processes survived the server"
    finally:
        if server is not None:
            server.kill()
        if node1.poll() is None:
            os.killpg(node1.pid, 9)
            node1.wait(10)
