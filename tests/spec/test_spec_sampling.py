"""Sampling with speculation draws from the target's distribution.

1,200 requests sample three tokens each (temperature 1, top-k 4) from one prompt on the kit's tiny
random Llama while the target itself drafts trees (draft_model, top-2 branching), so most draft
tokens are likely but not certain. The empirical joint distribution of (t1, t2, t3) (t1 from the
prefill, t2 and t3 from verify steps, either accepted drafts or the target's own pick) is compared
with the exact one computed by transformers on the same weights, by a chi-square test (cells with
fewer than 5 expected samples are pooled).

The test can fail: the same run with a biased acceptance rule, one that accepts the draft's first
child half the time whatever the target sampled (the kind of shortcut "typical acceptance" takes),
gives a p-value below 1e-6; the correct rule gives p > 1e-3 (fixed seeds, so the outcome is fixed).
"""
from __future__ import annotations

import random

import pytest
import torch

from jackfield.io_struct import TokenizedGenerateReq
from jackfield.sampling.params import SamplingParams
from jackfield.spec import tree as tree_mod
from jackfield.testing.suites.speculative import pool_idle_problem, spec_scheduler
from jackfield_plugins.spec.draft_model import DraftModelDecoder

PROMPT = [5, 9, 17, 33, 2, 8]
N = 1200
TOP_K = 4


def sample_triples(model: str, workdir: str) -> list[tuple[int, int, int]]:
    sched = spec_scheduler(DraftModelDecoder, model, workdir, max_running_requests=128, max_total_tokens=20000,
                           speculative_eagle_topk=2, speculative_num_steps=2, speculative_num_draft_tokens=5)
    params = SamplingParams(max_new_tokens=5, temperature=1.0, top_k=TOP_K, ignore_eos=True)
    out: dict[str, list[int]] = {}
    for i in range(N):
        for b in sched.handle(TokenizedGenerateReq(f"c{i}", PROMPT, params)):
            pass
    while sched.has_work():
        for b in sched.step():
            for o in b.outputs:
                out.setdefault(o.rid, []).extend(o.new_token_ids)
    assert sched.spec.stats.accepted > N // 2 and pool_idle_problem(sched) is None
    sched.close()
    return [tuple(v[:3]) for v in out.values()]


def exact_joint(model: str) -> dict[tuple[int, int, int], float]:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model).eval()

    def dist(ids):
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0, -1].double()
        top = logits.topk(TOP_K)
        return dict(zip(top.indices.tolist(), top.values.softmax(-1).tolist()))

    joint = {}
    for a, pa in dist(PROMPT).items():
        for b, pb in dist(PROMPT + [a]).items():
            for c, pc in dist(PROMPT + [a, b]).items():
                joint[(a, b, c)] = pa * pb * pc
    return joint


def chi_square_p(samples: list[tuple[int, int, int]], joint: dict) -> float:
    counts: dict = {}
    for s in samples:
        counts[s] = counts.get(s, 0) + 1
    assert set(counts) <= set(joint), "a sample outside the top-k support"
    big = [k for k, p in joint.items() if p * len(samples) >= 5]
    observed = [counts.get(k, 0) for k in big] + [len(samples) - sum(counts.get(k, 0) for k in big)]
    expected = [joint[k] * len(samples) for k in big]
    expected.append(len(samples) - sum(expected))
    stat = sum((o - e) ** 2 / e for o, e in zip(observed, expected) if e > 0)
    dof = sum(e > 0 for e in expected) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def biased_accept(self, picks):
    """Half the time, take the draft's first child whatever the target picked."""
    rng = random.Random(len(picks))
    paths = []
    for i, pick in enumerate(picks):
        kids, path = self.children(i), [0]
        while True:
            options = kids.get(path[-1], {})
            nxt = min(options.values()) if options and rng.random() < 0.5 else options.get(pick[path[-1]])
            if nxt is None:
                break
            path.append(nxt)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def joint(tiny_target):
    return exact_joint(tiny_target)


def test_speculative_sampling_matches_target_distribution(tiny_target, joint, tmp_path):
    p = chi_square_p(sample_triples(tiny_target, str(tmp_path)), joint)
    assert p > 1e-3, f"chi-square p-value {p:.2e}: speculative sampling is biased"


def test_a_biased_acceptance_rule_fails_the_chi_square(tiny_target, joint, tmp_path, monkeypatch):
    monkeypatch.setattr(tree_mod.VerifyTrees, "accept", biased_accept)
    p = chi_square_p(sample_triples(tiny_target, str(tmp_path)), joint)
    assert p < 1e-6, f"the biased rule passed the chi-square test (p = {p:.2e}): the test has no power"
