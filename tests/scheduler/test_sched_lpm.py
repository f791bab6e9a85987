"""Schedule policies through the Scheduler: with lpm a request sharing a cached prefix is admitted
before an earlier, unrelated one; with fcfs arrival order wins."""
from __future__ import annotations

import random

import pytest

from sched_harness import Driver, check_pool_clean, make_scheduler

rng = random.Random(5)
PREFIX = [rng.randrange(2, 256) for _ in range(120)]


def finish_order(model: str, policy: str) -> list[str]:
    d = Driver(make_scheduler(model, schedule_policy=policy, max_running_requests=1))
    d.submit("warm", PREFIX + [3, 4, 5], 2)
    d.run()
    d.submit("blocker", [rng.randrange(2, 256) for _ in range(20)], 3)  # holds the only slot
    d.step()
    d.submit("unrelated", [rng.randrange(2, 256) for _ in range(60)], 3)
    d.submit("sharing", PREFIX + [9, 9, 9, 9], 3)
    order = []
    while d.sched.has_work():
        for o in d.step():
            if o.finished is not None:
                order.append(o.rid)
    assert d.records["sharing"].cached_tokens >= 120
    check_pool_clean(d.sched)
    d.sched.close()
    return order


@pytest.mark.parametrize("policy,expected", [
    ("lpm", ["blocker", "sharing", "unrelated"]),
    ("fcfs", ["blocker", "unrelated", "sharing"]),
])
def test_policy_order_through_scheduler(tiny_llama, policy, expected):
    assert finish_order(tiny_llama, policy) == expected
