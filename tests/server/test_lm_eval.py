"""EleutherAI's lm-evaluation-harness against the server, unchanged: its `local-completions` model
sends `{"echo": true, "logprobs": 1, "max_tokens": 1}` to /v1/completions and finds the server's
tokenizer through /tokenizer_info and /tokenize. A small multiple-choice task (JSONL + YAML written
here; nothing downloaded) must score the same accuracy as lm-eval's `hf` model on the same weights
(SmolLM2's GGUF dequantized by transformers), with every loglikelihood within float32 noise.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

QUESTIONS = [
    ("The capital of France is", ["Paris", "London", "Berlin", "Madrid"], 0),
    ("Water freezes at a temperature of", ["zero degrees Celsius", "fifty degrees Celsius", "ten degrees Celsius"], 0),
    ("The largest planet in the solar system is", ["Mars", "Jupiter", "Venus"], 1),
    ("A week has", ["five days", "seven days", "twelve days"], 1),
    ("The sun rises in the", ["west", "east", "north"], 1),
    ("Bees make", ["milk", "honey", "silk"], 1),
]
TASK = "jackfield_mc"
YAML = f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {{path}}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: choices
doc_to_target: answer
target_delimiter: " "
metric_list:
  - metric: acc
"""


@pytest.fixture(scope="module")
def task_manager(tmp_path_factory):
    from lm_eval.tasks import TaskManager

    folder = tmp_path_factory.mktemp("lm_eval_task")
    data = folder / "mc.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS))
    (folder / f"{TASK}.yaml").write_text(YAML.format(path=data))
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    return TaskManager(include_path=str(folder))


def evaluate(model, model_args, task_manager) -> tuple[float, list[list[float]]]:
    import lm_eval  # imported here, not at collection: it takes seconds

    out = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=[TASK], task_manager=task_manager,
                                  log_samples=True, bootstrap_iters=0, batch_size=4)
    samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])
    lls = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    return out["results"][TASK]["acc,none"], lls


def test_lm_eval_local_completions_matches_hf(server, model_name, task_manager, smollm2_hf_dir):
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jackfield.loader.default_model import default_model_path

    args = {"base_url": server.url + "/v1/completions", "model": model_name, "num_concurrent": 2, "max_retries": 1}
    served_acc, served = evaluate("local-completions", args, task_manager)
    path = default_model_path()
    folder, name = os.path.dirname(path), os.path.basename(path)
    # transformers' GGUF reader's model, as saved once per session (tests/conftest.py: smollm2_hf_dir)
    hf = AutoModelForCausalLM.from_pretrained(str(smollm2_hf_dir), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    ref_acc, ref = evaluate(HFLM(pretrained=hf, tokenizer=tok, batch_size=4, device="cpu"), None, task_manager)
    assert served_acc == ref_acc
    for doc, (ours, theirs) in enumerate(zip(served, ref)):
        assert ours == pytest.approx(theirs, abs=2e-3), f"question {doc}: {ours} vs {theirs}"
