import random
from dataclasses import dataclass, field

import pytest
import torch

from jackfield.mem.allocator import TokenAllocator
from jackfield.mem.chunk_cache import ChunkCache
from jackfield.mem.radix_cache import RadixCache
from jackfield.mem.req_to_token import ReqToTokenPool
from jackfield.scheduler.policy import SchedulePolicy


@dataclass
class FakeReq:
    arrival_seq: int
    origin_input_ids: list[int]
    output_ids: list[int] = field(default_factory=list)
    prefix_indices: torch.Tensor | None = None
    last_node: object = None
    priority: int = 0

    @property
    def prefix_limit(self) -> int:
        return max(len(self.origin_input_ids) + len(self.output_ids) - 1, 0)


def radix_with(*seqs, page_size=1):
    cache = RadixCache(ReqToTokenPool(4, 64, "cpu"), TokenAllocator(256, page_size, "cpu"), page_size)
    for seq in seqs:
        n = len(seq) - len(seq) % page_size
        cache.insert(seq, cache.allocator.alloc(n))
    return cache


def arrivals(reqs):
    return [r.arrival_seq for r in reqs]


def test_fcfs_orders_by_arrival():
    waiting = [FakeReq(3, [1]), FakeReq(1, [2]), FakeReq(2, [3])]
    SchedulePolicy("fcfs", radix_with(), True).calc_priority(waiting)
    assert arrivals(waiting) == [1, 2, 3]


def test_lpm_orders_by_match_length_and_stores_match():
    cache = radix_with([1, 2, 3, 4, 5, 6], [7, 8, 9])
    waiting = [
        FakeReq(0, [5, 5, 5]),               # 0
        FakeReq(1, [7, 8, 0]),               # 2
        FakeReq(2, [1, 2, 3, 4, 0]),         # 4
        FakeReq(3, [1, 2, 3], output_ids=[9]),  # 3 (input + output minus the last token)
        FakeReq(5, [1, 2, 3, 4]),            # 3: the last token is never matched
        FakeReq(4, [7, 8, 1]),               # 2, later arrival than req 1
    ]
    SchedulePolicy("lpm", cache, True).calc_priority(waiting)
    assert arrivals(waiting) == [2, 3, 5, 1, 4, 0]
    assert [r.prefix_indices.numel() for r in waiting] == [4, 3, 3, 2, 2, 0]
    assert waiting[0].last_node.key == [4] and waiting[0].last_node.parent.key == [1, 2, 3]  # split by req 3
    assert waiting[-1].last_node is cache.root_node


def test_lpm_falls_back_to_fcfs_on_long_queue_or_disabled_cache():
    cache = radix_with([1, 2, 3])
    long_queue = [FakeReq(i, [1, 2, 3] if i % 2 else [9]) for i in reversed(range(129))]
    SchedulePolicy("lpm", cache, True).calc_priority(long_queue)
    assert arrivals(long_queue) == list(range(129))
    short = [FakeReq(1, [9]), FakeReq(0, [9]), FakeReq(2, [1, 2, 3])]
    chunk = ChunkCache(ReqToTokenPool(2, 8, "cpu"), TokenAllocator(8, 1, "cpu"), 1)
    for policy in ("lpm", "dfs-weight"):
        SchedulePolicy(policy, chunk, False).calc_priority(short)
        assert arrivals(short) == [0, 1, 2]


def test_dfs_weight_groups_requests_sharing_a_subtree():
    a, b = [1, 1, 1, 1], [2, 2, 2, 2]
    cache = radix_with(a + [3, 3], a + [4, 4], b + [5, 5])
    waiting = [
        FakeReq(0, b + [5, 5, 0]),
        FakeReq(1, a + [3, 3, 0]),
        FakeReq(2, b + [9]),
        FakeReq(3, a + [4, 4, 0]),
        FakeReq(4, [7, 7]),
        FakeReq(5, a + [3, 3, 1]),
        FakeReq(6, a + [0]),
    ]
    SchedulePolicy("dfs-weight", cache, True).calc_priority(waiting)
    order = arrivals(waiting)
    assert sorted(order) == list(range(7))
    assert order[0] == 4  # requests ending at the root come first
    # the a-subtree (4 requests) before the b-subtree (2), each contiguous; inside a: the node's
    # own request, then the heavier [3, 3] branch, then [4, 4]
    assert order[1:] == [6, 1, 5, 3, 2, 0]


def test_random_is_a_seeded_permutation():
    def run(seed):
        waiting = [FakeReq(i, [i]) for i in range(20)]
        SchedulePolicy("random", radix_with(), True, seed=seed).calc_priority(waiting)
        return arrivals(waiting)

    assert sorted(run(1)) == list(range(20))
    assert run(1) == run(1)
    assert run(1) != list(range(20))
    expected = list(range(20))
    random.Random(1).shuffle(expected)
    assert run(1) == expected


def test_unknown_policy_raises():
    with pytest.raises(ValueError, match="nope"):
        SchedulePolicy("nope", radix_with(), True)


def test_lpm_with_paged_cache():
    cache = radix_with(list(range(10)), page_size=4)
    waiting = [FakeReq(0, [0, 1, 2]), FakeReq(1, list(range(10))), FakeReq(2, list(range(6)))]
    SchedulePolicy("lpm", cache, True).calc_priority(waiting)
    assert arrivals(waiting) == [1, 2, 0]
    assert [r.prefix_indices.numel() for r in waiting] == [8, 4, 0]


@pytest.mark.parametrize("policy", ["fcfs", "lpm", "random"])
def test_a_higher_priority_class_goes_first_in_the_policy_order(policy):
    cache = radix_with([1, 2, 3, 4])
    waiting = [FakeReq(0, [9], priority=-1), FakeReq(1, [1, 2, 3, 4, 5], priority=-1), FakeReq(2, [8]),
               FakeReq(3, [1, 2, 7])]
    SchedulePolicy(policy, cache, True, seed=0).calc_priority(waiting)
    assert {r.arrival_seq for r in waiting[:2]} == {2, 3} and {r.arrival_seq for r in waiting[2:]} == {0, 1}
    if policy == "fcfs":
        assert arrivals(waiting) == [2, 3, 0, 1]
    if policy == "lpm":
        assert arrivals(waiting) == [3, 2, 1, 0]
