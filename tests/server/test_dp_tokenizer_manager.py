"""DPTokenizerManager over real ipc:// sockets with two fake engines (test_tokenizer_manager.py's):
requests go where the router says, aborts reach the replica holding the request, control requests
reach every replica and their replies combine, and /metrics shows the routing per replica."""
from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import pytest

from jackfield.io_struct import AbortReq, FlushCacheOut, GetStatsReq, TokenizedGenerateReq
from jackfield.router.cache_aware import CacheAwareRouter, RouterConfig
from jackfield.sampling.params import SamplingParams
from jackfield.server.dp_tokenizer_manager import DPTokenizerManager
from jackfield.server.ipc import PortArgs
from jackfield.server.metrics import ServerMetrics
from test_tokenizer_manager import FakeEngine

FAMILY_A, FAMILY_B = list(range(10, 50)), list(range(60, 100))


@pytest.fixture
def dp():
    ports = [PortArgs.create(), PortArgs.create()]
    engines = [FakeEngine(p) for p in ports]
    for engine in engines:
        engine.start()
    info = SimpleNamespace(context_len=256, model_config=SimpleNamespace(vocab_size=128), lora_enabled=False,
                           lora_adapters=[], max_running_requests=4)
    router = CacheAwareRouter(RouterConfig(max_tree_tokens=(1000, 1000)))
    tm = DPTokenizerManager(ports, None, info, ServerMetrics(), router, max_queued_requests=1)
    yield tm, engines
    tm.close()
    for p in ports:
        p.cleanup()


def served_by(engines, rid: str) -> list[int]:
    return [i for i, e in enumerate(engines) if any(getattr(m, "rid", None) == rid for m in e.seen
                                                     if isinstance(m, TokenizedGenerateReq))]


def test_requests_follow_their_cached_prefix_and_aborts_follow_requests(dp):
    tm, engines = dp
    assert tm.max_in_flight == 2 * 4 + 1  # each replica runs its own batch

    async def finish(ids):
        queue: asyncio.Queue = asyncio.Queue()
        rid = tm.submit(ids, SamplingParams(), queue)
        while (await queue.get()).finished is None:
            pass
        return rid

    async def main():
        tm.start()
        rids = {"a1": await finish(FAMILY_A + [1]), "b1": await finish(FAMILY_B + [1]),
                "a2": await finish(FAMILY_A + [2]), "b2": await finish(FAMILY_B + [2])}
        held: asyncio.Queue = asyncio.Queue()
        rids["held"] = tm.submit([0, 7, 7], SamplingParams(), held)  # never finishes (first id 0)
        await held.get()
        rids["new"] = await finish([5, 5, 5])
        loads = list(tm.router.loads)
        tm.abort(rids["held"])
        stats = await tm.get_stats()
        return rids, loads, stats

    rids, loads, stats = asyncio.run(main())
    expected = {"a1": 0, "b1": 1, "a2": 0, "b2": 1, "held": 0, "new": 1}
    assert {k: served_by(engines, rid) for k, rid in rids.items()} == {k: [v] for k, v in expected.items()}
    assert loads == [1, 0]  # the held request only; finished ones are released
    assert tm.router.loads == [0, 0] and tm.num_in_flight == 0
    # a finished request's output is remembered after its prompt (FakeEngine outputs 1 then 2; the
    # last token's KV is never computed)
    assert tm.router.trees[0].match(FAMILY_A + [1, 1, 2]) == 42 and tm.router.trees[1].match(FAMILY_A) == 0
    threading.Event().wait(0.2)
    aborts = [[m.rid for m in e.seen if isinstance(m, AbortReq)] for e in engines]
    assert aborts == [[rids["held"]], []]
    assert [sum(isinstance(m, GetStatsReq) for m in e.seen) for e in engines] == [1, 1]
    # FakeEngine reports num_running = messages seen; the combined reply sums the replicas'
    assert stats.num_running == sum(s.num_running for s in tm.replica_stats) and len(tm.replica_stats) == 2
    text = tm.metrics.render().decode()
    for line in ('jackfield_dp_routed_requests_total{reason="load_balance",replica="0"} 2.0',
                 'jackfield_dp_routed_requests_total{reason="cache_hit",replica="0"} 1.0',
                 'jackfield_dp_routed_requests_total{reason="load_balance",replica="1"} 2.0',
                 'jackfield_dp_routed_requests_total{reason="cache_hit",replica="1"} 1.0',
                 'jackfield_dp_routed_matched_tokens_total{replica="0"} 40.0',
                 'jackfield_dp_in_flight_reqs{replica="0"} 0.0',
                 f'jackfield_dp_num_running_reqs{{replica="1"}} {float(tm.replica_stats[1].num_running)}'):
        assert line in text, line


def test_a_flush_clears_the_trees_of_the_replicas_that_flushed(dp):
    tm, _ = dp
    tm.router.route((1, 2, 3))
    tm.router.route((4, 5, 6))
    tm._from_replica(1, FlushCacheOut(True))
    tm._from_replica(0, FlushCacheOut(False, "requests are running"))
    assert tm.router.trees[0].size == 3 and tm.router.trees[1].size == 0
