"""`jackfield bench grammar`: what structured outputs cost (JSON output).

Parts (`--parts`, default all three):
- `mask`: per-token CPU time of each installed grammar backend on a fixed schema set: fill the
  token bitmask and accept the token, along the tokenization of a valid document (plus compile time).
- `throughput`: output tok/s of JSON-schema-constrained requests against unconstrained ones at each
  `--batch-size` (jump-forward off, so every token is decoded; the schema cannot end before
  `--output-len` tokens, and the unconstrained requests ignore EOS, so both produce the same count).
- `jump`: latency of one request (batch 1) on a schema with long fixed keys, jump-forward on and off.

Dummy-weight models have no tokenizer: pass `--tokenizer DIR` (for example the embedded SmolLM2's
directory, the default when the model has none); its tokens fill the model's logits from id 0.
"""
from __future__ import annotations

import argparse
import json
import time

from jackfield.cli.settings_args import add_settings_arguments, cli_overrides

PARTS = ("mask", "throughput", "jump")
MASK_REPEATS = 5  # the best of several walks: the first pays caches and allocation
NAME = {"type": "string", "maxLength": 12}
MASK_SCHEMAS = {  # schema, a valid document in the one-line layout every backend accepts
    "person": ({"type": "object", "properties": {"name": NAME, "age": {"type": "integer"}, "email": NAME},
                "required": ["name", "age", "email"]}, {"name": "Ada Lovelace", "age": 36, "email": "ada@x.org"}),
    "order": ({"type": "object", "properties": {"id": {"type": "integer"}, "items": {"type": "array", "items": {
        "type": "object", "properties": {"sku": NAME, "qty": {"type": "integer"}}, "required": ["sku", "qty"]},
        "maxItems": 4}, "paid": {"type": "boolean"}}, "required": ["id", "items", "paid"]},
        {"id": 7, "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-22", "qty": 1}], "paid": True}),
    "enum_list": ({"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 6},
                  ["red", "blue", "blue", "green"]),
    "free_text": ({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
                  {"text": "The quick brown fox jumps over the lazy dog, twice; then it rests."}),
}
THROUGHPUT_SCHEMA = {"type": "array", "minItems": 512, "items": {"type": "object", "properties": {
    "id": {"type": "integer"}, "name": NAME}, "required": ["id", "name"]}}
LONG_KEYS_SCHEMA = {"type": "object", "properties": {k: NAME for k in (
    "customer_full_legal_name", "customer_primary_email_address", "shipping_address_first_line",
    "shipping_address_city_or_town", "billing_address_postal_code", "preferred_delivery_time_window")},
    "required": ["customer_full_legal_name", "customer_primary_email_address", "shipping_address_first_line",
                 "shipping_address_city_or_town", "billing_address_postal_code", "preferred_delivery_time_window"]}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--backends", nargs="+", default=None, help="grammar backends of the mask part (default: all installed)")
    p.add_argument("--batch-size", type=int, nargs="+", default=[1, 32])
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--jump-repeats", type=int, default=3)
    p.add_argument("--output-file", default=None, help="write the JSON report here")
    add_settings_arguments(p)


def mask_costs(sched, names: list[str] | None) -> dict:
    """Per-token fill + accept time and compile time of each backend, on the model's vocabulary."""
    from jackfield.sdk.grammar import GrammarSpec

    manager = sched.grammars
    out = {}
    for name in names or sorted(manager.classes):
        backend = manager.backend(name)
        rows = {}
        for label, (schema, doc) in MASK_SCHEMAS.items():
            t0 = time.perf_counter()
            try:
                grammar = backend.compile(GrammarSpec("json_schema", json.dumps(schema)))
            except Exception as exc:
                rows[label] = {"error": str(exc)}
                continue
            compile_ms = (time.perf_counter() - t0) * 1e3
            tokens = manager.vocab.encode(json.dumps(doc, separators=(", ", ": ")))
            try:
                best = min(_walk_seconds(grammar.copy(), tokens, manager.vocab.vocab_size) for _ in range(MASK_REPEATS))
            except ValueError as exc:
                rows[label] = {"error": str(exc)}
                continue
            rows[label] = {"tokens": len(tokens), "compile_ms": round(compile_ms, 3),
                           "us_per_token": round(best * 1e6 / len(tokens), 2)}
        out[name] = rows
    return out


def _walk_seconds(grammar, tokens: list[int], vocab_size: int) -> float:
    from jackfield.sdk.grammar import allocate_bitmask

    bitmask = allocate_bitmask(1, vocab_size)
    t0 = time.perf_counter()
    for token in tokens:
        grammar.fill_bitmask(bitmask, 0)
        if not grammar.accept_token(token):
            raise ValueError(f"refused token {token} of the document")
    return time.perf_counter() - t0


def _tok_per_s(sched, prompts, params) -> dict:
    from jackfield.bench.common import run_requests

    res = run_requests(sched, prompts, params.max_new_tokens, params=params)
    tokens = sum(len(v) for v in res.outputs.values())
    return {"tokens": tokens, "seconds": round(res.total_s, 4), "tok_per_s": round(tokens / res.total_s, 2)}


def throughput(sched, batch_sizes: list[int], input_len: int, output_len: int) -> list[dict]:
    from jackfield.bench.common import random_prompts
    from jackfield.sampling.params import SamplingParams

    vocab = sched.runner.config.vocab_size
    plain = SamplingParams(max_new_tokens=output_len, temperature=0.0, ignore_eos=True)
    constrained = SamplingParams(max_new_tokens=output_len, temperature=0.0, json_schema=json.dumps(THROUGHPUT_SCHEMA))
    sched.jump_forward = False
    _tok_per_s(sched, random_prompts(2, 8, vocab, 99), constrained)  # compile and warm up
    rows = []
    for bs in batch_sizes:
        prompts = random_prompts(bs, input_len, vocab, bs)
        base, cons = _tok_per_s(sched, prompts, plain), _tok_per_s(sched, prompts, constrained)
        rows.append({"batch_size": bs, "unconstrained": base, "json_schema": cons,
                     "overhead_pct": round(100 * (base["tok_per_s"] / cons["tok_per_s"] - 1), 2)})
    return rows


def jump_latency(sched, input_len: int, output_len: int, repeats: int) -> dict:
    from jackfield.bench.common import random_prompts
    from jackfield.sampling.params import SamplingParams

    params = SamplingParams(max_new_tokens=output_len * 4, temperature=0.0, json_schema=json.dumps(LONG_KEYS_SCHEMA))
    vocab = sched.runner.config.vocab_size
    out = {}
    for on in (False, True, False, True):  # interleaved, so drift on a shared machine hits both
        sched.jump_forward = on
        runs = [_tok_per_s(sched, random_prompts(1, input_len, vocab, 1000 + i), params) for i in range(repeats)]
        key = "jump_forward_on" if on else "jump_forward_off"
        prev = out.get(key, {"seconds": 0.0, "tokens": 0})
        out[key] = {"seconds": prev["seconds"] + sum(r["seconds"] for r in runs),
                    "tokens": prev["tokens"] + sum(r["tokens"] for r in runs)}
    for key in ("jump_forward_on", "jump_forward_off"):
        out[key]["seconds_per_request"] = round(out[key]["seconds"] / (2 * repeats), 4)
    out["speedup"] = round(out["jump_forward_off"]["seconds"] / out["jump_forward_on"]["seconds"], 3)
    return out


def run(args) -> int:
    from jackfield.bench.common import write_report
    from jackfield.config import load_settings
    from jackfield.engine_loop import build_scheduler

    overrides = dict(cli_overrides(args))
    if overrides.get("load_format") == "dummy" and not overrides.get("tokenizer"):
        from jackfield.loader.source import resolve_model

        overrides["tokenizer"] = str(resolve_model(None, "auto").path)
    settings = load_settings(args.config_file, overrides).settings
    sched, info = build_scheduler(settings, progress=False)
    metrics = {"model": info.model_path, "device": info.device, "grammar_backend": info.components["grammar"]["name"]}
    try:
        if "mask" in args.parts:
            metrics["mask"] = mask_costs(sched, args.backends)
        if "throughput" in args.parts:
            metrics["throughput"] = throughput(sched, args.batch_size, args.input_len, args.output_len)
        if "jump" in args.parts:
            metrics["jump"] = jump_latency(sched, args.input_len, args.output_len, args.jump_repeats)
    finally:
        sched.close()
    write_report(args.output_file, "jackfield bench grammar", metrics)
    return 0
