import random

import pytest
import torch

from jackfield.mem.allocator import TokenAllocator
from jackfield.mem.req_to_token import ReqToTokenPool


@pytest.mark.parametrize("page_size", [1, 4])
def test_random_alloc_free_exact_accounting(page_size):
    rng = random.Random(page_size)
    alloc = TokenAllocator(num_pages=64, page_size=page_size, device="cpu")
    owned: list[torch.Tensor] = []
    for _ in range(500):
        if owned and rng.random() < 0.45:
            alloc.free(owned.pop(rng.randrange(len(owned))))
        else:
            n = rng.randint(1, 12) * page_size
            before = alloc.available_size()
            slots = alloc.alloc(n)
            if slots is None:
                assert n > before and alloc.available_size() == before
                continue
            assert slots.dtype == torch.int64 and slots.numel() == n
            assert alloc.available_size() == before - n
            owned.append(slots)
        held = torch.cat(owned) if owned else torch.empty(0, dtype=torch.int64)
        assert torch.unique(held).numel() == held.numel()
        assert not held.numel() or int(held.min()) >= page_size
        assert alloc.available_size() + held.numel() == alloc.capacity
    alloc.debug_check()
    for slots in owned:
        alloc.free(slots)
    assert alloc.available_size() == alloc.capacity
    alloc.debug_check()


def test_lowest_pages_first_and_page0_reserved():
    alloc = TokenAllocator(num_pages=8, page_size=4, device="cpu")
    assert alloc.alloc(8).tolist() == [4, 5, 6, 7, 8, 9, 10, 11]
    everything = alloc.alloc(alloc.available_size())
    assert int(everything.min()) >= 4 and int(everything.max()) == 8 * 4 + 3
    assert alloc.alloc(4) is None
    alloc.free(torch.tensor([8]))  # a part-used page: its first slot frees it whole
    assert alloc.alloc(4).tolist() == [8, 9, 10, 11]


def test_free_takes_runs_of_whole_pages():
    """What an owner frees starts at a page start; checks (on off CUDA) reject anything else, and
    without checks the same frees leave the same state."""
    checked, unchecked = TokenAllocator(8, 4, "cpu"), TokenAllocator(8, 4, "cpu", checks=False)
    for a in (checked, unchecked):
        a.alloc_extend([0, 0], [6, 9], [-1, -1])  # pages 1-2 and 3-5
        a.free(torch.tensor([12, 13, 14, 15, 16, 17, 18, 19, 20]))  # the second request, last page part-used
        assert a.num_free_pages() == 6
        a.debug_check()
    assert torch.equal(checked._page_free, unchecked._page_free)
    with pytest.raises(ValueError, match="whole pages"):
        checked.free(torch.tensor([5, 6, 7, 8]))  # starts mid-page
    with pytest.raises(ValueError, match="whole pages"):
        checked.free(torch.tensor([4, 6]))  # not consecutive within its page
    assert checked.num_free_pages() == 6


def test_alloc_rejects_unaligned_size():
    alloc = TokenAllocator(num_pages=8, page_size=4, device="cpu")
    with pytest.raises(ValueError):
        alloc.alloc(3)


def test_alloc_extend_fills_partial_page_first():
    alloc = TokenAllocator(num_pages=16, page_size=4, device="cpu")
    a = alloc.alloc_extend([0], [6], [-1])  # pages 1, 2 (page 2 half full)
    assert a.tolist() == [4, 5, 6, 7, 8, 9]
    b = alloc.alloc_extend([0], [3], [-1])  # page 3
    assert b.tolist() == [12, 13, 14]
    free_before = alloc.num_free_pages()
    # request a continues: 2 slots left in page 2, then a fresh page; request b: 1 slot in page 3
    c = alloc.alloc_extend([6, 3], [5, 1], [9, 14])
    assert c.tolist() == [10, 11, 16, 17, 18, 15]
    assert alloc.num_free_pages() == free_before - 1


def test_alloc_extend_takes_last_locs_as_a_tensor():
    """The scheduler's path: last slots read on the device (a tensor, not checked); same slots and
    pages as with host values."""
    host, dev = TokenAllocator(num_pages=16, page_size=4, device="cpu"), TokenAllocator(16, 4, "cpu")
    for a in (host, dev):
        a.alloc_extend([0, 0], [6, 3], [-1, -1])
    want = host.alloc_extend([6, 3, 0], [5, 1, 2], [9, 14, -1])
    got = dev.alloc_extend([6, 3, 0], [5, 1, 2], torch.tensor([9, 14, -1], dtype=torch.int32))
    assert torch.equal(got, want) and got.tolist() == [10, 11, 16, 17, 18, 15, 20, 21]
    assert dev.num_free_pages() == host.num_free_pages()
    assert dev.alloc_extend([2], [2], torch.tensor([21])).tolist() == [22, 23]  # the third request goes on


def test_alloc_decode_matches_alloc_extend_by_one_token():
    """The sync-free decode path: new pages only for requests whose next token starts a page, in
    request order, the other requests continue after their last slot; same result as alloc_extend."""
    ps = 4
    slow, fast = TokenAllocator(num_pages=32, page_size=ps, device="cpu"), TokenAllocator(32, ps, "cpu")
    kv = [0, 3, 4, 5, 8, 9]
    firsts = [a.alloc_extend([0] * 6, kv, [-1] * 6) for a in (slow, fast)]
    assert torch.equal(*firsts)
    ends = torch.cumsum(torch.tensor(kv), 0)
    last = [int(firsts[0][e - 1]) if n else -1 for n, e in zip(kv, ends.tolist())]
    want = slow.alloc_extend(kv, [1] * 6, last)
    got = fast.alloc_decode([n + 1 for n in kv], torch.tensor(last))
    assert torch.equal(got, want) and fast.num_free_pages() == slow.num_free_pages()
    assert torch.equal(fast.alloc_decode([2, 3], torch.tensor([int(got[1]), int(got[2])])), got[1:3] + 1)
    tight = TokenAllocator(num_pages=2, page_size=ps, device="cpu")
    tight.alloc(8)
    assert tight.alloc_decode([1], torch.tensor([-1])) is None and tight.num_free_pages() == 0


def test_alloc_extend_page_size_one_and_empty_extends():
    alloc = TokenAllocator(num_pages=10, page_size=1, device="cpu")
    assert alloc.alloc_extend([0, 5], [3, 2], [-1, 7]).tolist() == [1, 2, 3, 4, 5]
    paged = TokenAllocator(num_pages=4, page_size=4, device="cpu")
    assert paged.alloc_extend([0, 0], [0, 0], [-1, -1]).numel() == 0
    assert paged.num_free_pages() == 4


def test_alloc_extend_failure_allocates_nothing():
    alloc = TokenAllocator(num_pages=4, page_size=4, device="cpu")
    first = alloc.alloc_extend([0], [5], [-1])
    assert alloc.num_free_pages() == 2
    assert alloc.alloc_extend([5, 0], [3, 9], [int(first[-1]), -1]) is None
    assert alloc.num_free_pages() == 2
    alloc.debug_check()
    assert alloc.alloc_extend([5, 0], [3, 8], [int(first[-1]), -1]) is not None
    assert alloc.num_free_pages() == 0


def test_alloc_extend_checks_last_loc():
    alloc = TokenAllocator(num_pages=4, page_size=4, device="cpu")
    alloc.alloc_extend([0], [2], [-1])
    with pytest.raises(ValueError):
        alloc.alloc_extend([2], [1], [4])  # last token of a 2-token prefix sits at offset 1, not 0


def test_alloc_decode_new_page_only_at_page_boundary():
    alloc = TokenAllocator(num_pages=8, page_size=4, device="cpu")
    slots = alloc.alloc_extend([0, 0], [3, 4], [-1, -1])  # req0: page 1 (3 used), req1: page 2 (full)
    free = alloc.num_free_pages()
    out = alloc.alloc_decode([4, 5], [int(slots[2]), int(slots[6])])
    assert out.tolist() == [7, 12]
    assert alloc.num_free_pages() == free - 1
    out = alloc.alloc_decode(torch.tensor([5, 6]), torch.tensor([7, 12]))
    assert out.tolist() == [16, 13]


@pytest.mark.parametrize("page_size", [1, 4])
def test_double_free_raises(page_size):
    alloc = TokenAllocator(num_pages=8, page_size=page_size, device="cpu")
    slots = alloc.alloc(2 * page_size)
    alloc.free(slots)
    with pytest.raises(RuntimeError):
        alloc.free(slots[:1])
    with pytest.raises(ValueError):
        alloc.free(torch.tensor([0]))
    alloc.debug_check()
    assert alloc.available_size() == alloc.capacity


@pytest.mark.parametrize("page_size", [1, 4])
def test_unchecked_double_free_is_counted_and_repaired_by_audit(page_size):
    """With checks off (CUDA) a double free is counted on the device, not raised; audit() reports
    it and dedupes the free list, so no page is handed out twice afterwards."""
    alloc = TokenAllocator(num_pages=8, page_size=page_size, device="cpu", checks=False)
    slots = alloc.alloc(3 * page_size)
    alloc.free(slots)
    assert alloc.audit() == 0
    alloc.free(slots[page_size:])  # its pages 2 and 3 again
    assert alloc.audit() == 2 and alloc.audit() == 0
    alloc.debug_check()
    assert alloc.available_size() == alloc.capacity
    everything = alloc.alloc(alloc.capacity)
    assert torch.unique(everything).numel() == alloc.capacity


def test_clear_restores_everything():
    alloc = TokenAllocator(num_pages=8, page_size=2, device="cpu")
    alloc.alloc(10)
    alloc.clear()
    assert alloc.available_size() == 16 and alloc.num_free_pages() == 8


def test_req_to_token_pool():
    pool = ReqToTokenPool(size=3, max_context_len=16, device="cpu")
    assert pool.req_to_token.shape == (4, 16) and pool.req_to_token.dtype == torch.int32
    rows = [pool.alloc() for _ in range(3)]
    assert rows == [1, 2, 3] and pool.alloc() is None and pool.available_size() == 0
    pool.free(2)
    assert pool.available_size() == 1
    with pytest.raises(RuntimeError):
        pool.free(2)
    with pytest.raises(ValueError):
        pool.free(0)
    assert pool.alloc() == 2
