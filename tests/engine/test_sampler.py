"""The vectorized sampler and SamplingBatch: every parameter changes the outcome it should."""
import random

import torch

from jackfield.sampling.batch import SamplingBatch
from jackfield.sampling.params import SamplingParams as P
from jackfield.sampling.sampler import Sampler, mix64, seeded_exponential

V = 64
EOS = V - 1


def batch(params, slots=None, eos=(EOS,)):
    return SamplingBatch.from_params(params, slots if slots is not None else list(range(len(params))), V, eos, "cpu")


def lens(values):
    return torch.tensor(values, dtype=torch.int64)


def sample(params, logits, output_lens=None, sampler=None, slots=None):
    sampler = sampler or Sampler(V, 128, "cpu")
    output_lens = lens([0] * len(params)) if output_lens is None else lens(output_lens)
    return sampler.sample(logits, batch(params, slots), output_lens)


def flat_logits(rows, scale=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(V, generator=g) * scale).repeat(rows, 1)


def test_temperature_zero_is_argmax():
    logits = torch.randn(32, V) * 0.1
    out = sample([P(temperature=0.0)] * 32, logits)
    assert torch.equal(out.next_token_ids, logits.argmax(-1))


def test_top_k_one_is_greedy_at_temperature_one():
    logits = torch.randn(32, V) * 0.1
    out = sample([P(temperature=1.0, top_k=1)] * 32, logits)
    assert torch.equal(out.next_token_ids, logits.argmax(-1))


def seeded_run(p, steps, position, companions, sampler_seed):
    sampler = Sampler(V, 8, "cpu", seed=sampler_seed)
    params = list(companions)
    params.insert(position, p)
    logits = torch.randn(len(params), V)
    logits[position] = flat_logits(1)[0]
    tokens = []
    for step in range(steps):
        output_lens = [step * 3 + i for i in range(len(params))]
        output_lens[position] = step
        tokens.append(int(sampler.sample(logits, batch(params), lens(output_lens)).next_token_ids[position]))
    return tokens


def test_seed_reproducible_across_calls_and_batch_composition():
    alone = seeded_run(P(seed=1234), 20, 0, [], sampler_seed=0)
    mixed = seeded_run(P(seed=1234), 20, 2, [P(), P(temperature=0.5), P(seed=7)], sampler_seed=99)
    moved = seeded_run(P(seed=1234), 20, 1, [P(top_k=5)], sampler_seed=5)
    assert alone == mixed == moved
    assert len(set(alone)) > 5
    assert seeded_run(P(seed=4321), 20, 0, [], sampler_seed=0) != alone


def test_unseeded_rows_follow_the_sampler_generator():
    logits = flat_logits(16)
    a = sample([P()] * 16, logits, sampler=Sampler(V, 8, "cpu", seed=1)).next_token_ids
    b = sample([P()] * 16, logits, sampler=Sampler(V, 8, "cpu", seed=1)).next_token_ids
    c = sample([P()] * 16, logits, sampler=Sampler(V, 8, "cpu", seed=2)).next_token_ids
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_tiny_top_p_always_takes_the_top_token():
    logits = flat_logits(300, scale=0.5)
    out = sample([P(top_p=1e-6)] * 300, logits)
    assert torch.all(out.next_token_ids == logits[0].argmax())


def test_top_k_never_samples_outside_the_top_k():
    logits = flat_logits(500, scale=0.5)
    out = sample([P(top_k=5)] * 500, logits)
    chosen = set(out.next_token_ids.tolist())
    assert chosen <= set(logits[0].topk(5).indices.tolist())
    assert len(chosen) > 1


def test_min_p_filters_low_probability_tokens():
    probs = torch.full((V,), 0.3 / (V - 2))
    probs[0], probs[1] = 0.4, 0.3
    logits = probs.log().repeat(500, 1)
    out = sample([P(min_p=0.5)] * 500, logits)
    assert set(out.next_token_ids.tolist()) == {0, 1}


def test_top_p_applies_after_top_k():
    probs = torch.full((V,), 0.01 / (V - 4))
    probs[:4] = torch.tensor([0.4, 0.3, 0.2, 0.09])
    logits = probs.log().repeat(500, 1)
    narrow = sample([P(top_k=2, top_p=0.5)] * 500, logits)
    assert set(narrow.next_token_ids.tolist()) == {0}
    wide = sample([P(top_k=2, top_p=0.6)] * 500, logits)
    assert set(wide.next_token_ids.tolist()) == {0, 1}


def greedy_steps(p, logits_row, steps, prompt=(), sampler=None, slot=3):
    sampler = sampler or Sampler(V, 8, "cpu")
    sampler.start_request(slot, list(prompt), p.needs_penalties)
    b = batch([p], slots=[slot])
    return [int(sampler.sample(logits_row.unsqueeze(0), b, lens([i])).next_token_ids[0]) for i in range(steps)]


def crafted(values):
    logits = torch.zeros(V)
    for token, value in values.items():
        logits[token] = value
    return logits


def test_repetition_penalty_on_prompt_and_output_tokens():
    logits = crafted({3: 2.0, 5: 1.5})
    assert greedy_steps(P(temperature=0), logits, 1, prompt=[3]) == [3]
    assert greedy_steps(P(temperature=0, repetition_penalty=2.0), logits, 1, prompt=[3]) == [5]
    assert greedy_steps(P(temperature=0, repetition_penalty=2.0), logits, 2) == [3, 5]
    negative = crafted({t: -1.0 for t in range(V)} | {3: -0.5, 5: -0.8})
    assert greedy_steps(P(temperature=0, repetition_penalty=2.0), negative, 1, prompt=[3]) == [5]


def test_frequency_and_presence_penalties():
    logits = crafted({3: 2.0, 5: 1.0})
    assert greedy_steps(P(temperature=0), logits, 3) == [3, 3, 3]
    assert greedy_steps(P(temperature=0, frequency_penalty=0.6), logits, 3) == [3, 3, 5]
    assert greedy_steps(P(temperature=0, presence_penalty=0.6), logits, 3) == [3, 3, 3]
    assert greedy_steps(P(temperature=0, presence_penalty=1.5), logits, 3) == [3, 5, 3]


def test_penalty_state_is_lazy_and_reset_per_request():
    sampler = Sampler(V, 8, "cpu")
    sampler.start_request(0, [1, 2])
    assert sampler.output_counts is None and sampler.prompt_mask is None
    logits = crafted({3: 2.0, 5: 1.0})
    p = P(temperature=0, frequency_penalty=1.5)
    assert greedy_steps(p, logits, 2, sampler=sampler, slot=4) == [3, 5]
    assert sampler.output_counts.shape == (8, V)
    assert greedy_steps(p, logits, 2, sampler=sampler, slot=4) == [3, 5]


def test_uncounted_rows_stay_out_of_the_penalty_counts():
    sampler = Sampler(V, 8, "cpu")
    p = P(temperature=0, frequency_penalty=1.5)
    sampler.start_request(2, [], needs_penalties=True)
    logits = crafted({3: 2.0, 5: 1.0}).unsqueeze(0)
    b = batch([p], slots=[2])
    assert int(sampler.sample(logits, b, lens([0]), counted=torch.tensor([False])).next_token_ids[0]) == 3
    assert int(sampler.sample(logits, b, lens([0])).next_token_ids[0]) == 3
    assert int(sampler.sample(logits, b, lens([1])).next_token_ids[0]) == 5


def test_logit_bias_forces_and_forbids():
    logits = torch.randn(3, V)
    low, high = int(logits[0].argmin()), int(logits[2].argmax())
    params = [P(temperature=0, logit_bias=((low, 100.0),)), P(logit_bias=((low, 100.0),)),
              P(temperature=0, logit_bias=((high, -100.0),))]
    logits[1] = logits[0]
    out = sample(params, logits).next_token_ids
    assert out.tolist()[:2] == [low, low]
    assert int(out[2]) == int(logits[2].topk(2).indices[1])
    forced = sample([P(logit_bias=((low, 100.0),))] * 200, flat_logits(200)).next_token_ids
    assert torch.all(forced == low)


def test_min_new_tokens_blocks_eos_and_stop_tokens_until_reached():
    logits = torch.randn(5, V)
    logits[:, EOS], logits[:, 7] = 10.0, 9.0
    out = sample([P(temperature=0, min_new_tokens=3, stop_token_ids=(7,))] * 5, logits, [0, 1, 2, 3, 4])
    assert all(t not in (EOS, 7) for t in out.next_token_ids[:3].tolist())
    assert out.next_token_ids[3:].tolist() == [EOS, EOS]
    padded = crafted({EOS: 10.0, 0: 8.0, 7: 9.0}).repeat(2, 1)
    params = [P(temperature=0, min_new_tokens=2, stop_token_ids=(7,)), P(temperature=0, min_new_tokens=2)]
    assert sample(params, padded).next_token_ids.tolist() == [0, 7]
    sampled = sample([P(temperature=2.0, min_new_tokens=4)] * 300, flat_logits(300), [3] * 300)
    assert not torch.any(sampled.next_token_ids == EOS)


def test_logprobs_come_from_raw_logits():
    logits = torch.randn(3, V)
    params = [P(temperature=0.7, logit_bias=((2, 5.0),), logprobs=True, top_logprobs_num=4),
              P(temperature=0, repetition_penalty=1.5, top_logprobs_num=2), P()]
    sampler = Sampler(V, 8, "cpu")
    for slot, p in enumerate(params):
        sampler.start_request(slot, list(range(10)), p.needs_penalties)
    out = sample(params, logits, sampler=sampler)
    raw = torch.log_softmax(logits, -1)
    assert torch.allclose(out.logprobs, raw.gather(1, out.next_token_ids.unsqueeze(1)).squeeze(1))
    assert out.top_logprob_ids.shape == (3, 4)
    assert torch.all(out.top_logprob_vals[:, :-1] >= out.top_logprob_vals[:, 1:])
    assert torch.equal(out.top_logprob_ids[:, 0], logits.argmax(-1))
    assert torch.allclose(out.top_logprob_vals, raw.topk(4).values)
    plain = sample([P()] * 3, logits)
    assert plain.logprobs is None and plain.top_logprob_ids is None


def test_filter_and_merge_keep_rows_consistent():
    a = [P(seed=1), P(seed=2, top_k=10, logit_bias=((3, 1.0), (4, 2.0))), P(seed=3, top_p=0.8)]
    b = [P(seed=4, min_p=0.1, stop_token_ids=(5, 6), min_new_tokens=2), P(temperature=0)]
    logits, output_lens = torch.randn(5, V), lens([0, 4, 2, 1, 7])
    merged = batch(a, [0, 1, 2]).merge(batch(b, [3, 4]))
    assert merged.stop_ids.shape == (5, 3) and merged.logit_bias_ids.shape == (5, 2)
    together = Sampler(V, 8, "cpu").sample(logits, merged, output_lens).next_token_ids
    first = Sampler(V, 8, "cpu").sample(logits[:3], batch(a, [0, 1, 2]), output_lens[:3]).next_token_ids
    second = Sampler(V, 8, "cpu").sample(logits[3:], batch(b, [3, 4]), output_lens[3:]).next_token_ids
    assert torch.equal(together, torch.cat([first, second]))

    keep = torch.tensor([4, 0, 3])
    kept = merged.filter(keep)
    assert kept.req_slots.tolist() == [4, 0, 3]
    assert kept.top_ks.tolist() == [V, V, V] and kept.stop_ids.tolist() == [[EOS, -1, -1], [EOS, -1, -1], [EOS, 5, 6]]
    assert not kept.need_top_k and not kept.need_top_p and kept.need_min_p and kept.need_min_new_tokens
    assert not kept.all_greedy and merged.filter(torch.tensor([4])).all_greedy
    again = Sampler(V, 8, "cpu").sample(logits[keep], kept, output_lens[keep]).next_token_ids
    assert torch.equal(again, together[keep])
    mask = torch.tensor([True, False, True, False, False])
    assert merged.filter(mask).req_slots.tolist() == [0, 2]
    assert len(merged.filter(torch.tensor([], dtype=torch.int64))) == 0


def test_mixed_batch_of_64_rows():
    rng = random.Random(0)
    logits = torch.randn(64, V)
    kinds = [rng.randrange(7) for _ in range(64)]
    targets = [rng.randrange(V - 1) for _ in range(64)]
    params, output_lens = [], []
    sampler = Sampler(V, 64, "cpu", seed=3)
    for row, kind in enumerate(kinds):
        p = [P(temperature=0), P(top_k=3, temperature=1.5), P(top_p=1e-6, temperature=0.8),
             P(logit_bias=((targets[row], 100.0),)), P(min_new_tokens=5, temperature=0),
             P(seed=row, temperature=0.8, top_p=0.9, logprobs=True),
             P(temperature=0, repetition_penalty=100.0, top_logprobs_num=3)][kind]
        params.append(p)
        output_lens.append(rng.randrange(5))
        if kind == 4:
            logits[row, EOS] = 20.0
        sampler.start_request(row, [int(logits[row].argmax())], p.needs_penalties)
    out = sampler.sample(logits, batch(params), lens(output_lens))
    ranked = logits.argsort(-1, descending=True)
    for row, kind in enumerate(kinds):
        token = int(out.next_token_ids[row])
        if kind in (0, 2):
            assert token == int(ranked[row, 0])
        elif kind == 1:
            assert token in ranked[row, :3].tolist()
        elif kind == 3:
            assert token == targets[row]
        elif kind == 4:
            assert token == int(ranked[row, 1])
        elif kind == 5:
            alone = Sampler(V, 64, "cpu").sample(logits[row:row + 1], batch([params[row]]), lens([output_lens[row]]))
            assert token == int(alone.next_token_ids[0])
        else:
            assert token == int(ranked[row, 1])
    assert out.logprobs.shape == (64,) and out.top_logprob_ids.shape == (64, 3)


def test_bf16_logits_and_caller_logits_untouched():
    logits = torch.randn(4, V)
    copy = logits.clone()
    params = [P(temperature=0, logit_bias=((1, 100.0),)), P(top_k=2), P(temperature=0), P(min_new_tokens=1)]
    out = sample(params, logits.bfloat16())
    assert out.next_token_ids.dtype == torch.int64 and int(out.next_token_ids[0]) == 1
    sample(params, logits)
    assert torch.equal(logits, copy)


def test_all_greedy_bf16_batch_takes_the_float32_argmax():
    """The plain greedy path argmaxes the logits as given: same tokens as a float32 copy, ties to the
    first index, logits untouched; with logprobs the copy is made again."""
    logits = (torch.randn(16, V) * 3).bfloat16()
    logits[3, 5] = logits[3, 9] = logits[3].max() + 1  # a tie: index 5 wins
    copy = logits.clone()
    out = sample([P(temperature=0)] * 16, logits)
    assert torch.equal(out.next_token_ids, logits.float().argmax(-1)) and int(out.next_token_ids[3]) == 5
    assert torch.equal(logits, copy)
    with_lp = sample([P(temperature=0, logprobs=True)] * 16, logits)
    assert torch.equal(with_lp.next_token_ids, out.next_token_ids) and with_lp.logprobs.dtype == torch.float32


def test_seeded_noise_is_splitmix64_and_exponential():
    def reference(x):
        m = 2**64 - 1
        x &= m
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
        return x ^ (x >> 31)
    values = [0, 1, -5, 12345678901234, 2**62 + 7]
    assert [int(v) & (2**64 - 1) for v in mix64(torch.tensor(values))] == [reference(v) for v in values]
    noise = seeded_exponential(torch.tensor([1, 2]), torch.tensor([0, 0]), 20000)
    assert noise.min() > 0 and abs(float(noise.mean()) - 1.0) < 0.03
    assert not torch.equal(noise[0], noise[1])
