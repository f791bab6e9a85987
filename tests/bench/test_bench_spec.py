"""`jackfield bench spec` and benchmarks/spec_oracle.py on a tiny random Llama with SmolLM2's
tokenizer (CPU): greedy outputs equal with speculation on and off, and an oracle drafter whose
first a - 1 drafts are right makes every verify forward emit exactly a tokens."""
from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

from jackfield.cli import main

ORACLE = Path(__file__).resolve().parents[2] / "benchmarks" / "spec_oracle.py"
TINY = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=49152,
            max_position_embeddings=2048, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
            tie_word_embeddings=False, hidden_act="silu")


@pytest.fixture(scope="module")
def common(tmp_path_factory) -> list[str]:
    from jackfield.loader.source import resolve_model

    path = tmp_path_factory.mktemp("tiny_spec") / "config.json"
    path.write_text(json.dumps(TINY))
    return ["--model", str(path), "--load-format", "dummy", "--tokenizer", str(resolve_model(None).path),
            "--device", "cpu", "--dtype", "float32", "--max-total-tokens", "8000"]


def test_bench_spec_reports_equal_greedy_outputs(common, tmp_path):
    out, prof = tmp_path / "report.json", tmp_path / "spec.prof.txt"
    # every step speculates (speculation loses on a tiny CPU model: the load policy would stop it)
    assert main(["bench", "spec", *common, "--speculative-algorithm", "ngram", "--batch-sizes", "1,2",
                 "--num-prompts", "2", "--output-len", "5", "--no-speculative-load-aware", "--output-file", str(out),
                 "--profile", str(prof)]) == 0
    text = prof.read_text()  # the speculating runs' profile: the decoder's propose is in it, twice sorted
    assert text.count("Ordered by: internal time") == 1 and text.count("Ordered by: cumulative time") == 1
    assert "(propose)" in text
    m = json.loads(out.read_text())["metrics"]
    assert [r["batch_size"] for r in m["results"]] == [1, 2] and m["algorithm"] == "ngram"
    for r in m["results"]:
        assert r["outputs_differing"] == 0 and r["num_prompts"] == 2 and 2 <= r["output_tokens"] <= 10
    assert all(r["verify_request_steps"] > 0 for r in m["results"])


def test_oracle_drafter_emits_its_accepted_length(common, tmp_path, monkeypatch):
    out = tmp_path / "oracle.json"
    monkeypatch.setattr(sys, "argv", [str(ORACLE), *common, "--batch-sizes", "1", "--accept-lengths", "1,3", "--num-prompts", "2",
                                      "--output-len", "7", "--out", str(out)])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(ORACLE), run_name="__main__")
    assert done.value.code == 0
    rows = json.loads(out.read_text())["results"]
    # 7 tokens: the prefill's, then 6 from verify forwards of a tokens each
    assert [(r["accept_length_drafted"], r["accept_length"], r["outputs_differing"]) for r in rows] == [(1, 1.0, 0), (3, 3.0, 0)]


def test_attention_warmup_runs_every_mode_and_names_a_failure(capsys):
    """benchmarks/attention_warmup.py (built before the FlashInfer GPU runs): one forward per mode,
    each in its own process; a backend that cannot run here fails with its reason."""
    warmup = runpy.run_path(str(ORACLE.with_name("attention_warmup.py")))
    small = ["--heads", "4", "--kv-heads", "2", "--head-dim", "16", "--page-size", "4", "--dtype", "float32"]
    assert warmup["main"]([*small, "--backend", "torch_native", "--device", "cpu", "--sliding-window", "5"]) == 0
    assert [line.split(":")[0] for line in capsys.readouterr().out.splitlines()] == ["extend", "decode", "verify"]
    assert warmup["main"]([*small, "--backend", "no_such_backend", "--device", "cpu", "--modes", "verify"]) == 1
    assert "verify: FAILED" in capsys.readouterr().out


def test_spec_host_time_reports_host_ms_per_step(tmp_path, monkeypatch):
    """benchmarks/spec_host_time.py: full-batch decode steps timed plain and speculating, host time
    (step minus forward) positive, the report written with its provenance."""
    out = tmp_path / "host.json"
    script = ORACLE.with_name("spec_host_time.py")
    monkeypatch.setattr(sys, "argv", [str(script), "--batch-sizes", "2", "--output-len", "6", "--out", str(out)])
    runpy.run_path(str(script), run_name="__main__")
    report = json.loads(out.read_text())
    assert report["command"].startswith("python3 benchmarks/spec_host_time.py") and report["git_commit"]
    (row,) = report["metrics"]["results"]
    assert row["batch_size"] == 2
    for kind in ("plain", "spec"):
        assert row[kind]["steps"] > 0 and 0 < row[kind]["host_ms"] < row[kind]["step_ms"]
