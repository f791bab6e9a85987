"""Prompt logprobs and embeddings on CUDA (bf16, the default backends, the stream launcher of the
overlap loop, CUDA-graph decode after a readout), against transformers in float32 on the same GPU.

The readout's device tensors are copied to pinned host memory asynchronously with the sampler's
(`overlap._HostOutput`); these tests check that path and the numbers: bf16 logprobs within 0.1 on
average of the float32 reference, the same argmax almost everywhere, and embeddings with cosine
similarity above 0.99.
"""
import os

import pytest
import torch

pytestmark = pytest.mark.gpu
TEXT = ("The old lighthouse keeper climbed the spiral stairs every evening, counting each step aloud, until "
        "the lamp at the top was lit and the ships far out at sea could find their way home. ") * 6


@pytest.fixture(scope="module")
def engine():
    from jackfield import Engine

    eng = Engine(device="cuda", chunked_prefill_size=64)
    yield eng
    eng.shutdown()
    torch.cuda.empty_cache()


@pytest.fixture(scope="module")
def reference(engine):
    from transformers import AutoModelForCausalLM

    from jackfield.loader.default_model import default_model_path

    path = default_model_path()
    hf = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                              dtype=torch.float32).cuda().eval()
    ids = engine.tokenizer.encode(TEXT)
    with torch.no_grad():
        out = hf(torch.tensor([ids], device="cuda"), output_hidden_states=True)
    return ids, torch.log_softmax(out.logits[0].float(), -1).cpu(), out.hidden_states[-1][0].float().cpu()


def test_prompt_logprobs_on_cuda(engine, reference):
    ids, ref, _ = reference
    assert len(ids) > 4 * 64
    engine.flush_cache()
    out = engine.generate(ids, {"max_new_tokens": 8, "temperature": 0, "top_logprobs_num": 3}, logprob_start_len=0)
    lps = out["input_logprobs"]
    assert [e["token_id"] for e in lps] == ids and lps[0]["logprob"] is None and len(out["token_ids"]) == 8
    ours = torch.tensor([e["logprob"] for e in lps[1:]])
    want = ref[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    assert (ours - want).abs().mean() < 0.1, (ours - want).abs().max()
    top1 = torch.tensor([e["top_logprobs"][0][0] for e in lps[1:]])
    assert (top1 == ref[:-1].argmax(-1)).float().mean() > 0.95
    again = engine.generate(ids, {"max_new_tokens": 8, "temperature": 0}, logprob_start_len=100)
    assert again["usage"]["cached_tokens"] == 99
    later = torch.tensor([e["logprob"] for e in again["input_logprobs"]])
    assert (later - ours[99:]).abs().max() < 0.1


def test_embeddings_on_cuda(engine, reference):
    ids, _, hidden = reference
    last = torch.tensor(engine.embed(ids))
    mean = torch.tensor(engine.embed(ids, pooling="mean"))
    cos = torch.nn.functional.cosine_similarity
    assert cos(last, hidden[-1], dim=0) > 0.99 and cos(mean, hidden.mean(0), dim=0) > 0.99
    assert engine.get_stats().kv_used_tokens == 0
