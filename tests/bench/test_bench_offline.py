"""`jackfield bench offline` and `bench latency` on a tiny random Llama (CPU), with their
transformers peers: the reports count what really ran."""
from __future__ import annotations

import json

import pytest

from jackfield.cli import main

TINY = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=512,
            max_position_embeddings=2048, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
            tie_word_embeddings=False, hidden_act="silu")
COMMON = ["--load-format", "dummy", "--device", "cpu", "--dtype", "float32", "--input-len", "12", "--output-len", "5"]


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "config.json"
    path.write_text(json.dumps(TINY))
    return str(path)


def bench(tmp_path, *argv) -> dict:
    out = tmp_path / "report.json"
    assert main(["bench", *argv, "--output-file", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["command"].startswith("jackfield bench") and report["git_commit"]
    return report["metrics"]


def test_offline_with_transformers_peer(tiny_config, tmp_path):
    m = bench(tmp_path, "offline", "--model", tiny_config, *COMMON, "--num-prompts", "6", "--compare-transformers")
    assert m["num_prompts"] == 6 and m["device"] == "cpu"
    assert m["output_tok_per_s"] * m["total_s"] == pytest.approx(6 * 5)
    # 6 prefills in one chunk, then 4 decode steps (plus the overlap's last wait when it is on)
    assert 5 <= m["forward_steps"] <= 7
    peer = m["transformers"]
    assert "error" not in peer, peer
    assert peer["requests"] == 6 and peer["output_tokens"] == 6 * 5
    assert peer["output_tok_per_s"] > 0 and 0 < peer["total_s"] <= peer["call_wall_s"]
    assert m["speedup_output_tok_per_s"] == pytest.approx(m["output_tok_per_s"] / peer["output_tok_per_s"])


def test_offline_peer_failure_keeps_our_numbers(tiny_config, tmp_path, monkeypatch):
    from jackfield.bench import hf_peer

    monkeypatch.setattr(hf_peer.sys, "executable", "/nonexistent/python")
    m = bench(tmp_path, "offline", "--model", tiny_config, *COMMON, "--num-prompts", "2", "--compare-transformers")
    assert "/nonexistent/python" in m["transformers"]["error"] and "speedup_output_tok_per_s" not in m
    assert m["output_tok_per_s"] * m["total_s"] == pytest.approx(2 * 5)


def test_latency_with_transformers_peer(tiny_config, tmp_path):
    m = bench(tmp_path, "latency", "--model", tiny_config, *COMMON, "--batch-size", "1", "2", "--compare-transformers")
    rows = m["results"]
    assert [r["jackfield"]["batch_size"] for r in rows] == [1, 2]
    for r in rows:
        assert r["transformers"]["batch_size"] == r["jackfield"]["batch_size"]
        assert r["speedup_decode"] > 0


def test_report_commit_names_env_override_and_dirty_tree(tmp_path, monkeypatch):
    import subprocess

    from jackfield.bench.common import git_commit

    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "f.txt").write_text("a")
    subprocess.run([*git, "add", "f.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "c"], check=True)
    head = subprocess.check_output([*git, "rev-parse", "--short", "HEAD"], text=True).strip()
    monkeypatch.chdir(repo)
    monkeypatch.delenv("JACKFIELD_GIT_COMMIT", raising=False)
    assert git_commit() == head
    (repo / "f.txt").write_text("b")      # a tracked file changed: the code is not HEAD's
    assert git_commit() == f"{head}-dirty"
    monkeypatch.setenv("JACKFIELD_GIT_COMMIT", "abc1234")
    assert git_commit() == "abc1234"


def test_latency_warms_up_on_the_measured_shape(monkeypatch):
    """The warm-up batch has the measured batch size and prompt length, so the timed prefill is not
    a first forward of its token count."""
    from types import SimpleNamespace

    from jackfield.bench import common, latency

    calls = []

    def fake_run(sched, prompts, max_new_tokens, prefix="r", **kwargs):
        calls.append((prefix, len(prompts), {len(p) for p in prompts}))
        outputs = {f"{prefix}{i}": [1] * max_new_tokens for i in range(len(prompts))}
        return SimpleNamespace(first_token_s=0.1, total_s=0.5, outputs=outputs, step_times=[0] * max_new_tokens)

    monkeypatch.setattr(common, "run_requests", fake_run)
    sched = SimpleNamespace(runner=SimpleNamespace(config=SimpleNamespace(vocab_size=1000)))
    row = latency.measure(sched, 3, 200, 8)
    assert calls == [("warm", 3, {200}), ("r", 3, {200})]
    assert row["batch_size"] == 3 and row["decode_tok_per_s"] == 3 * 7 / 0.4
