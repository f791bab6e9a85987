"""Prompt logprobs and embeddings on CUDA (bf16, the default backends, the stream launcher of the
overlap loop, CUDA-graph decode next to readouts).

On the 1B-shaped dummy model: the prompt logprobs the prefill reads (chunks of 64) of a sequence
must equal the logprobs the decode steps gave when they generated it (bf16: within 0.05, near-ties
aside, as in test_e2e_backends.py), with and without a cached prefix; pooled states must not depend
on the cache. On SmolLM2 (when its package is installed): against transformers in float32, a
grammar-constrained request's included.
"""
import os

import pytest
import torch

pytestmark = pytest.mark.gpu
CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "configs", "llama-1b.json")
PROMPT = [128000] + list(range(2000, 2000 + 300))


@pytest.fixture(scope="module")
def engine():
    from jackfield import Engine

    eng = Engine(model=CONFIG, load_format="dummy", max_total_tokens=32768, max_running_requests=8,
                 cuda_graph_max_bs=8, chunked_prefill_size=64, seed=1)
    yield eng
    eng.shutdown()
    del eng
    torch.cuda.empty_cache()


def test_prompt_logprobs_equal_the_decode_logprobs(engine):
    gen = engine.generate(PROMPT, {"temperature": 0, "max_new_tokens": 24, "ignore_eos": True, "logprobs": True,
                                   "top_logprobs_num": 5})
    seq = PROMPT + gen["token_ids"]
    engine.flush_cache()
    echo = engine.generate(seq, {"temperature": 0, "max_new_tokens": 0, "top_logprobs_num": 5}, logprob_start_len=0)
    inputs = echo["input_logprobs"]
    assert [e["token_id"] for e in inputs] == seq and inputs[0]["logprob"] is None
    for step, (dec, pre) in enumerate(zip(gen["logprobs"], inputs[len(PROMPT):])):
        assert dec["token_id"] == pre["token_id"]
        assert abs(dec["logprob"] - pre["logprob"]) < 0.05, (step, dec, pre)
        best = dict(pre["top_logprobs"])
        assert pre["token_id"] in best and max(best.values()) - pre["logprob"] < 0.05, (step, pre)  # greedy
    cached = engine.generate(seq, {"temperature": 0, "max_new_tokens": 1}, logprob_start_len=200)
    assert cached["usage"]["cached_tokens"] == 199
    for a, b in zip(cached["input_logprobs"], inputs[200:]):
        assert a["token_id"] == b["token_id"] and abs(a["logprob"] - b["logprob"]) < 0.05


def test_pooled_states_do_not_depend_on_the_cache(engine):
    engine.flush_cache()
    fresh = [torch.tensor(engine.embed(PROMPT, pooling=p)) for p in ("last", "mean")]
    engine.generate(PROMPT, {"temperature": 0, "max_new_tokens": 1})  # PROMPT is now cached
    again = [torch.tensor(engine.embed(PROMPT, pooling=p)) for p in ("last", "mean")]
    for a, b in zip(fresh, again):
        assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.999
    assert engine.get_stats().kv_used_tokens == 0


def test_smollm2_against_transformers():
    from jackfield import Engine
    from jackfield.loader.default_model import default_model_path

    try:
        path = default_model_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                              dtype=torch.float32).cuda().eval()
    eng = Engine(device="cuda", chunked_prefill_size=64)
    try:
        ids = eng.tokenizer.encode("The old lighthouse keeper climbed the spiral stairs every evening. " * 20)
        with torch.no_grad():
            out = hf(torch.tensor([ids], device="cuda"), output_hidden_states=True)
        ref = torch.log_softmax(out.logits[0].float(), -1).cpu()
        hidden = out.hidden_states[-1][0].float().cpu()
        lps = eng.generate(ids, {"max_new_tokens": 0, "top_logprobs_num": 1}, logprob_start_len=0)["input_logprobs"]
        ours = torch.tensor([e["logprob"] for e in lps[1:]])
        want = ref[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
        assert (ours - want).abs().mean() < 0.1, (ours - want).abs().max()
        top1 = torch.tensor([e["top_logprobs"][0][0] for e in lps[1:]])
        assert (top1 == ref[:-1].argmax(-1)).float().mean() > 0.95
        emb = torch.tensor(eng.embed(ids, normalize=False))
        assert torch.nn.functional.cosine_similarity(emb, hidden[-1], dim=0) > 0.99
        # A constrained request samples late (the stream launcher keeps its readout until the mask is filled).
        out = eng.generate(ids[:40], {"max_new_tokens": 4, "temperature": 0, "regex": "(yes|no)"}, logprob_start_len=0)
        assert out["text"] in ("yes", "no")
        got = torch.tensor([e["logprob"] for e in out["input_logprobs"][1:]])
        assert (got - want[:39]).abs().mean() < 0.1, (got - want[:39]).abs().max()
    finally:
        eng.shutdown()
        del hf
        torch.cuda.empty_cache()
