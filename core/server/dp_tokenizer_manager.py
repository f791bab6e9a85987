"""DPTokenizerManager: the tokenizer manager of a data-parallel server (`dp_size` > 1).

Each replica is a whole engine with its own channels (`PortArgs`): its scheduler process(es) read
their own input socket and its detokenizer pushes to its own return socket. This manager holds one
(send, receive) pair per replica and:

* routes each generate or embedding request to the replica the CacheAwareRouter picks, and
  remembers it, so that an abort (a client that went away) reaches the replica holding the request;
* counts each request in flight on its replica until its final output or its abort (the router's
  load measure), and then records its prompt and output in that replica's tree (the replica's radix
  cache keeps both, and a chat's next turn starts with them);
* sends every control request to every replica and answers with the combined reply (dp_replies);
  a stats reply also updates the per-replica gauges of /metrics, a cache flush the router's trees.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
from dataclasses import dataclass, field

from jackfield.io_struct import (AbortReq, BatchOutput, FlushCacheOut, StatsOut, TokenizedEmbeddingReq,
                                 TokenizedGenerateReq)
from jackfield.router.cache_aware import CacheAwareRouter, route_key
from jackfield.server.dp_metrics import RouterMetrics
from jackfield.server.dp_replies import ReplyGather, combine
from jackfield.server.ipc import PortArgs, pull_socket, push_socket
from jackfield.server.metrics import ServerMetrics
from jackfield.server.tokenizer_manager import TokenizerManager, reply_key


@dataclass
class Routed:
    """A request in flight on `replica`: its route key and the tokens it has generated so far."""

    replica: int
    key: tuple
    output_ids: list[int] = field(default_factory=list)

    def cached_key(self) -> tuple:
        """What the replica's radix cache holds once the request leaves: the prompt and every output
        token but the last (whose KV was never computed)."""
        return self.key + tuple(self.output_ids[:-1])


class DPTokenizerManager(TokenizerManager):
    def __init__(self, ports: list[PortArgs], tokenizer, info, metrics: ServerMetrics, router: CacheAwareRouter,
                 max_queued_requests: int | None = None, default_timeout: float | None = None):
        super().__init__(ports[0], tokenizer, info, metrics, max_queued_requests, default_timeout)
        if max_queued_requests is not None:  # every replica runs its own batch
            self.max_in_flight = len(ports) * info.max_running_requests + max_queued_requests
        self.router = router
        self.router_metrics = RouterMetrics(metrics.registry, len(ports))
        self._links = [(self._send_sock, self._recv_sock)] + [
            (push_socket(self._sync_ctx, p.scheduler_input), pull_socket(self._async_ctx, p.tokenizer))
            for p in ports[1:]]
        self._routed: dict[str, Routed] = {}
        self._gather = ReplyGather(len(ports), reply_key)
        self.replica_stats: list[StatsOut] = []  # each replica's last StatsOut
        self._pin: int | None = None

    @property
    def num_replicas(self) -> int:
        return len(self._links)

    @contextlib.contextmanager
    def pinned(self, replica: int):
        """Requests submitted inside go to `replica`, not where the router would send them (the
        warm-up of each replica)."""
        self._pin = replica
        try:
            yield
        finally:
            self._pin = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for i, (_, recv) in enumerate(self._links):
            handle = functools.partial(self._from_replica, i)
            self._tasks.append(loop.create_task(self._handle_loop(recv, handle), name=f"tokenizer-manager-{i}"))

    def close(self) -> None:
        for task in self._tasks:  # before their sockets close under them
            task.cancel()
        for send, recv in self._links[1:]:
            send.close(linger=0)
            recv.close(linger=0)
        super().close()

    def fail_all(self, message: str) -> None:
        super().fail_all(message)
        for routed in self._routed.values():
            self.router.release(routed.replica)
        self._routed.clear()
        self._gather.clear()

    # ---- to the replicas ----------------------------------------------------------------------
    def _send(self, msg) -> None:
        if isinstance(msg, (TokenizedGenerateReq, TokenizedEmbeddingReq)):
            key = route_key(msg.input_ids, getattr(msg, "lora", None))
            route = self.router.route(key, self._pin)
            self.router_metrics.observe_route(route)
            self._routed[msg.rid] = Routed(route.replica, key)
            self._links[route.replica][0].send_pyobj(msg)
        elif isinstance(msg, AbortReq):
            routed = self._routed.get(msg.rid)
            if routed is not None:
                self._left(msg.rid)
                self._links[routed.replica][0].send_pyobj(msg)
        else:  # a control request: every replica answers it
            for send, _ in self._links:
                send.send_pyobj(msg)

    # ---- from the replicas --------------------------------------------------------------------
    def _from_replica(self, replica: int, msg) -> None:
        if isinstance(msg, BatchOutput):
            for out in msg.outputs:
                routed = self._routed.get(out.rid)
                if routed is not None:
                    routed.output_ids += out.new_token_ids
                    if out.finished is not None:
                        self._left(out.rid)
            self._dispatch(msg)
            return
        replies = self._gather.add(replica, msg)
        if replies is None:
            return
        if all(isinstance(r, StatsOut) for r in replies):
            self.replica_stats = replies
            self.router_metrics.update_replicas(replies)
        for i, reply in enumerate(replies):
            if isinstance(reply, FlushCacheOut) and reply.ok:
                self.router.forget(i)
        self.router_metrics.update_router(self.router)
        self._dispatch(combine(replies))

    def _left(self, rid: str) -> None:
        """A request finished or was aborted: no longer in flight, its tokens in its replica's cache."""
        routed = self._routed.pop(rid)
        self.router.release(routed.replica)
        self.router.remember(routed.replica, routed.cached_key())
