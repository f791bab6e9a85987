"""Unit tests of the speculative pieces that need no model: draft trees (validation, mask, accept,
padding), the load policy, the n-gram corpus and EAGLE-2's tree search."""
from __future__ import annotations

import random

import pytest
import torch

from jackfield.sdk import DraftProposal
from jackfield.spec.load import LoadPolicy
from jackfield.spec.tree import ProposalError, VerifyTrees
from jackfield_plugins.spec.ngram_corpus import DraftTree, HistoryIndex, TokenTrie
from jackfield_plugins.spec.tree_search import TreeSearch


def test_proposals_become_trees_and_bad_ones_are_named():
    p = DraftProposal.from_lists([[5, 6, 7], []], [[-1, 0, 0], []])
    trees = VerifyTrees.from_proposal([1, 2], p, (3, 0), 10, "dec")
    assert trees.tokens == [[1, 5, 6, 7], [2]] and trees.parents == [[-1, 0, 1, 1], [-1]]
    assert trees.depths() == [[0, 1, 2, 2], [0]]
    chain = VerifyTrees.from_proposal([1], DraftProposal(torch.tensor([[4, 5]])), (2,), 10, "dec")
    assert chain.parents == [[-1, 0, 1]]
    for bad, why in [(DraftProposal.from_lists([[5, 6]], [[-1, 1]]), "does not come before"),
                     (DraftProposal.from_lists([[5, 6, 7, 8]]), "proposed 4 nodes for request 0, allowed 3"),
                     (DraftProposal.from_lists([[12]]), "outside \\[0, 10\\)"),
                     (DraftProposal(torch.zeros(2, 1, dtype=torch.int64)), "expected \\[1, n\\]")]:
        with pytest.raises(ProposalError, match=why):
            VerifyTrees.from_proposal([1], bad, (3,), 10, "dec")


def test_accept_follows_the_target_picks_and_ignores_padding():
    trees = VerifyTrees([[1, 5, 6, 7, 8]], [[-1, 0, 0, 1, 2]])  # root -> 5 -> 7, root -> 6 -> 8
    assert trees.accept([[6, 0, 8, 0, 3]]) == [[0, 2, 4]]
    assert trees.accept([[9, 0, 0, 0, 0]]) == [[0]]
    padded = VerifyTrees([[1, 5]], [[-1, 0]]).padded(4)
    assert padded.sizes == [4] and padded.real_sizes == [2]
    assert padded.accept([[1, 0, 0, 0]]) == [[0]]  # padding holds the root's token: never accepted
    mask, indptr = trees.mask(torch.device("cpu"))
    m = mask.view(5, 5)
    assert m[3].tolist() == [True, True, False, True, False] and indptr.tolist() == [0, 25]


def reference_accept(trees: VerifyTrees, picks: list[list[int]]) -> list[list[int]]:
    """The acceptance walk node by node: from the root, to the first child holding the pick."""
    paths = []
    for i, pick in enumerate(picks):
        kids, path = trees.children(i), [0]
        while (nxt := kids.get(path[-1], {}).get(pick[path[-1]])) is not None:
            path.append(nxt)
        paths.append(path)
    return paths


def test_tensor_acceptance_mask_and_depths_match_the_node_walk():
    rng = random.Random(0)
    for _ in range(40):
        tokens, parents = [], []
        for _ in range(rng.randint(1, 6)):
            n = rng.randint(1, 9)
            tokens.append([rng.randint(0, 3) for _ in range(n)])  # few tokens: equal siblings, root-token children
            parents.append([-1] + [rng.randint(0, j - 1) for j in range(1, n)])
        trees = VerifyTrees(tokens, parents)
        if rng.random() < 0.3:
            trees = trees.padded(max(trees.sizes) + 2)
        picks = [[rng.randint(0, 3) for _ in row] for row in trees.tokens]
        assert trees.accept(picks) == reference_accept(trees, picks)
        assert trees.accept(torch.tensor([p + [0] * (max(trees.sizes) - len(p)) for p in picks])) == \
            reference_accept(trees, picks)
        depths = [[0] * len(p) for p in trees.parents]
        for d, par in zip(depths, trees.parents):
            for j in range(1, len(par)):
                d[j] = d[par[j]] + 1
        assert trees.depths() == depths
        mask, indptr = trees.mask(torch.device("cpu"))
        for i, par in enumerate(trees.parents):
            block = mask[indptr[i]:indptr[i + 1]].view(len(par), len(par))
            for j in range(len(par)):
                seen, k = set(), j
                while k >= 0:
                    seen.add(k)
                    k = par[k]
                assert [c for c in range(len(par)) if block[j, c]] == sorted(seen)


def test_load_policy_measures_and_switches():
    pol = LoadPolicy()
    assert pol.speculate(4)                       # nothing measured: one speculative step first
    pol.record_spec(4, 0.030, 2.0)                # 2 tokens per 30 ms
    assert not pol.speculate(4)                   # then one plain step to compare with
    pol.record_plain(4, 0.020)                    # 1 token per 20 ms: speculation wins (66 vs 50 tok/s)
    assert all(pol.speculate(5) for _ in range(10))
    pol.record_spec(128, 0.100, 1.5)              # big batch: 15 tok/s per request
    pol.record_spec(128, 0.100, 1.5)
    pol.record_plain(128, 0.050)                  # plain 20 tok/s: speculation loses, ratio 0.75
    decisions = [pol.speculate(128) for _ in range(202)]
    # a probe loses 0.100 / 0.050 - 1.5 = 0.5 plain steps: one every 0.5 / 0.5 % = 100 steps
    assert [i for i, d in enumerate(decisions) if d] == [99, 199]
    assert all(pol.speculate(3) for _ in range(5))  # load dropped: back on
    assert pol.table()[-1]["spec_over_plain"] == pytest.approx(0.75)
    assert not LoadPolicy(enabled=False).buckets and LoadPolicy(enabled=False).speculate(512)


def test_load_policy_warmup_stops_at_the_first_losing_measurement():
    pol = LoadPolicy(warmup=4)
    assert [pol.speculate(8) for _ in range(2)] == [True, True]  # nothing to compare with yet
    pol.record_spec(8, 0.010, 2.0)
    pol.record_spec(8, 0.010, 2.0)
    assert [pol.speculate(8) for _ in range(2)] == [True, True]  # warm-up: 4 speculative steps, then plain
    pol.record_spec(8, 0.010, 2.0)
    pol.record_spec(8, 0.010, 2.0)
    assert not pol.speculate(8)
    # plain steps measured first (requests with speculative: false): one losing speculative step ends the warm-up
    pol.record_plain(16, 0.010)
    assert pol.speculate(16)
    pol.record_spec(16, 0.050, 1.5)              # ratio 0.3; the engine is warm (4 speculative steps at 8-15):
    decisions = [pol.speculate(16) for _ in range(1400)]  # one step decides; a probe loses 3.5 plain steps
    assert [i for i, d in enumerate(decisions) if d] == [699, 1399]  # so one every 700 steps
    assert pol.table()[1]["spec_steps"] == 1


def test_load_policy_one_slow_step_does_not_decide():
    pol = LoadPolicy()
    assert pol.speculate(8)
    pol.record_spec(8, 1.0, 2.0)                  # the first verify compiled its kernels: 1 s
    assert not pol.speculate(8)
    pol.record_plain(8, 0.010)
    decisions = [pol.speculate(8) for _ in range(4)]
    assert decisions.index(True) == 2             # one speculative step measured: a second after 4 decisions
    pol.record_spec(8, 0.012, 2.0)                # the probe: 2 tokens in 12 ms against 1 in 10 ms
    assert pol.speculate(8)                       # lower median of (1.0, 0.012): the slow step is ignored
    for _ in range(3):
        pol.record_spec(8, 0.012, 2.0)
    pol.record_spec(8, 0.050, 2.0)                # one slow step among five does not turn it off
    assert pol.speculate(8) and pol.table()[0]["spec_s"] == pytest.approx(0.012)


def test_load_policy_larger_buckets_start_plain_after_a_far_loss():
    pol = LoadPolicy()
    pol.record_spec(32, 0.012, 0.7)
    pol.record_plain(32, 0.010)
    assert pol.speculate(64)                      # one speculative step at 32-63 (maybe the slow first): measured here
    pol = LoadPolicy()
    pol.record_spec(32, 0.012, 0.7)
    pol.record_spec(32, 0.012, 0.7)
    pol.record_plain(32, 0.010)                   # ratio 0.58 at batch 32-63, a probe loses 0.5 plain steps
    decisions = [pol.speculate(128) for _ in range(110)]
    assert [i for i, d in enumerate(decisions) if d] == [99]  # probed as if it lost like batch 32: every 100 steps
    pol.record_spec(128, 0.005, 2.0)
    pol.record_plain(128, 0.008)                  # the probe says it wins here after all
    assert pol.speculate(128)
    narrow = LoadPolicy()
    narrow.record_spec(32, 0.011, 1.0)
    narrow.record_spec(32, 0.011, 1.0)
    narrow.record_plain(32, 0.010)                # ratio 0.91: not by far, a larger bucket measures for itself
    assert narrow.speculate(64) and narrow.speculate(1)


def test_load_policy_bucket_below_a_far_loss_starts_plain():
    pol = LoadPolicy()
    for _ in range(2):
        pol.record_spec(64, 0.040, 2.0)
    pol.record_plain(64, 0.010)                   # ratio 0.5 at 64-127: a probe loses 2 plain steps
    decisions = [pol.speculate(40) for _ in range(400)]  # 32-63, right below it: plain, probed every 400 steps
    assert [i for i, d in enumerate(decisions) if d] == [399]
    assert pol.speculate(8)                       # 8-15, further below: it measures for itself


def test_ngram_history_trie_and_draft_tree():
    idx = HistoryIndex(1, 3)
    idx.extend_to([1, 2, 3, 4, 1, 2, 3, 5, 1, 2])
    assert idx.continuations(3, 4) == [[3, 5, 1], [3, 4, 1]]  # suffix [1, 2]: latest occurrence first
    trie = TokenTrie(depth=4, capacity=1000)
    trie.insert([7, 8, 9, 10, 7, 8, 9, 11, 7, 8, 9, 10])
    assert trie.continuations([5, 7, 8], 1, 3, 3, 2) == [[9, 10]]  # depth 4: two levels below [7, 8]
    tree = DraftTree(4)
    for path in ([3, 5, 1], [3, 4, 1], [9]):
        tree.add(path)
    assert tree.tokens == [3, 5, 1, 4] and tree.parents == [-1, 0, 1, 0]


def test_tree_search_expands_by_cumulative_probability():
    s = TreeSearch(topk=2)
    s.expand_root(torch.tensor([0.5, 0.3, 0.2]).log())
    assert [s.tokens[f] for f in s.frontier] == [0, 1]
    s.expand(torch.tensor([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1]]).log())
    # candidates 0.45 (0->0), 0.025, 0.18 (1->0), 0.09: the frontier keeps 0->0 and 1->0
    assert [(s.tokens[f], s.parents[f]) for f in s.frontier] == [(0, 0), (0, 1)]
    tokens, parents = s.select(3)
    assert tokens == [0, 1, 0] and parents == [-1, -1, 0]  # 0.5, 0.3, 0.45: the best three, as a tree
    assert s.forward_nodes() == [0, 1, 2, 4]


def test_request_flag_meta_info_and_metrics():
    from jackfield.io_struct import StatsOut
    from jackfield.sampling.params import SamplingParams, SamplingParamError
    from jackfield.server.metrics import ServerMetrics
    from jackfield.server.protocol import CompletionRequest
    from jackfield.spec.meta import spec_meta

    body = CompletionRequest(prompt="hi", speculative=False)
    assert SamplingParams.from_dict(body.sampling_values()).speculative is False
    with pytest.raises(SamplingParamError, match="speculative must be a boolean"):
        SamplingParams.from_dict({"speculative": "no"})
    meta = spec_meta({"verify_ct": 4, "proposed": 20, "accepted": 8, "emitted": 12})
    assert meta["spec_accept_length"] == 3.0 and meta["spec_accept_rate"] == 0.4
    m = ServerMetrics()
    m.update_scheduler(StatsOut(1, 0, 10, 100, 0.0, 0.0, 0.0, spec_verify_steps=4, spec_proposed=20,
                                spec_accepted=8, spec_emitted=12))
    text = m.render().decode()
    assert "jackfield_spec_accept_length 3.0" in text and "jackfield_spec_accept_rate 0.4" in text


class CountingGrammar:
    """Allows only token t + 1 after token t (and 0 after 9); records accepts and rollbacks."""

    def __init__(self, last: int):
        self.stack = [last]

    def accept_token(self, token: int) -> bool:
        if token != (self.stack[-1] + 1) % 10:
            return False
        self.stack.append(token)
        return True

    def rollback(self, n: int) -> None:
        del self.stack[-n:]

    def is_terminated(self) -> bool:
        return False

    def fill_bitmask(self, bitmask, row: int) -> None:
        bitmask[row] = 0
        t = (self.stack[-1] + 1) % 10
        bitmask[row, t >> 5] = 1 << (t & 31)


def test_grammar_masks_follow_each_draft_path_and_restore_the_matcher():
    from jackfield.spec.grammar_tree import allows, fill_tree_bitmask

    g = CountingGrammar(last=3)
    tokens, parents = [3, 4, 7, 5, 6], [-1, 0, 0, 1, 1]  # root 3 -> 4 -> (5, 6); root -> 7 (refused)
    mask = torch.zeros(8, 1, dtype=torch.int32)
    fill_tree_bitmask(g, tokens, parents, mask, row0=2)
    assert g.stack == [3]                                   # rolled back
    assert [allows(mask, 2 + j, t) for j, t in [(0, 4), (1, 5), (3, 6)]] == [True, True, True]
    assert not allows(mask, 2 + 0, 7) and not allows(mask, 2 + 1, 6)
    assert int(mask[2 + 2]) == -1 and int(mask[2 + 4]) == -1  # a refused child's subtree: all allowed


def test_ngram_trie_takes_released_requests_at_the_next_proposal():
    """A released request's tokens enter the trie at the next propose (not on release, which may be a
    plain step), and the next request drafts from them; only the latest PENDING releases wait."""
    from types import SimpleNamespace

    from jackfield.sdk import SpecInput, SpecRuntime
    from jackfield_plugins.spec import ngram

    settings = SimpleNamespace(speculative_ngram_min_match=1, speculative_ngram_max_match=3,
                               speculative_ngram_max_trie_depth=6, speculative_ngram_capacity=10_000)
    dec = ngram.NgramDecoder(SpecRuntime(settings, None, torch.device("cpu"), torch.float32, num_draft_tokens=4))
    dec.propose(SpecInput(("a",), ([5, 6, 7, 8, 9],), (3,)))
    dec.release("a")
    assert dec.trie.size == 0 and len(dec.pending) == 1  # released, not inserted yet
    proposal = dec.propose(SpecInput(("b",), ([1, 6, 7],), (3,)))
    assert dec.trie.size > 0 and not dec.pending
    assert proposal.tokens[0, :proposal.counts[0]].tolist() == [8, 9]  # a's continuation of [6, 7]
    for i in range(ngram.PENDING + 5):
        dec.history[f"r{i}"] = HistoryIndex(1, 3)
        dec.release(f"r{i}")
    assert len(dec.pending) == ngram.PENDING
