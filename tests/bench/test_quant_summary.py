"""benchmarks/quant_summary.py on hand-written reports: the batch-1 decode limit from the bytes a
step reads, and a profile_decode.py report split into host time, linear-layer kernels and the rest."""
from __future__ import annotations

import json
import runpy
from pathlib import Path

SUMMARY = Path(__file__).resolve().parents[2] / "benchmarks" / "quant_summary.py"
VOCAB, HIDDEN = 1000, 500  # an untied input embedding of 1 MB (bf16), not read by a decode step


def _write(tmp_path: Path, name: str, report: dict) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(report))
    return str(path)


def _table(capsys, paths: list[str], hbm: str = "3000") -> list[list[str]]:
    main = runpy.run_path(str(SUMMARY))["main"]
    assert main(["--hbm-gbps", hbm, *paths]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| quant-")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_profile_report_splits_the_step(tmp_path, capsys):
    model = tmp_path / "config.json"
    model.write_text(json.dumps({"vocab_size": VOCAB, "hidden_size": HIDDEN, "tie_word_embeddings": False}))
    report = {"model": str(model), "quantization": "fp8", "weight_bytes": 9_000_000_000 + VOCAB * HIDDEN * 2,
              "decode_tok_per_s": 285.7, "step_ms": 3.5, "graph_only_ms": 3.0,
              "graph_kernels": {"device_us_per_call": 4000.0, "kernels": [
                  {"kernel": "_gemv_kernel", "us_per_call": 2600.0},
                  {"kernel": "nvjet_sm90_tst_384x8_64x4_2x1_v_bz_TNT", "us_per_call": 400.0},
                  {"kernel": "_decode_split_kernel", "us_per_call": 1000.0}]}}
    cut_off = {k: v for k, v in report.items() if k != "graph_kernels"}
    empty = tmp_path / "quant-profile-8b-killed.json"  # a run killed before printing its report
    empty.write_text("")
    rows = _table(capsys, [_write(tmp_path, "quant-profile-8b-fp8.json", report),
                           _write(tmp_path, "quant-profile-8b-cut.json", cut_off), str(empty)])
    # 3/4 of the profiled device time is GEMV + cuBLAS: 2.25 of the graph's 3 ms; 9 GB read a step
    assert rows[0] == ["quant-profile-8b-fp8.json", "fp8", "285.7", "3.500", "3.000", "0.500", "2.250", "0.750",
                       "9.00 (3.000)", "4000"]
    assert rows[1] == ["quant-profile-8b-cut.json", "fp8", "285.7", "3.500", "-", "-", "-", "-", "9.00 (3.000)", "-"]


def test_latency_report_limit(tmp_path, capsys):
    model = tmp_path / "config.json"
    model.write_text(json.dumps({"vocab_size": VOCAB, "hidden_size": HIDDEN, "tie_word_embeddings": True}))
    report = {"git_commit": "abc", "metrics": {
        "model": str(model), "quantization": "awq", "weight_bytes": 6_000_000_000,
        "results": [{"jackfield": {"decode_tok_per_s": 250.0, "prefill_s": 0.02}}]}}
    rows = _table(capsys, [_write(tmp_path, "quant-latency-8b-awq.json", report)])
    # tied embeddings: every stored byte is read; 3000 GB/s over 6 GB is 500 tok/s
    assert rows == [["quant-latency-8b-awq.json", "awq", "5.59", "250.0", "500", "50%", "0.020"]]
