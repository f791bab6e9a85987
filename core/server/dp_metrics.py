"""The router's metrics (`dp_size` > 1), in the server's registry, one series per replica.

Routing counts update as requests are routed; the per-replica scheduler gauges come from the
replicas' StatsOut, fetched (with the server-wide ones) each time /metrics is scraped.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from jackfield.io_struct import StatsOut
from jackfield.router.cache_aware import REASONS, CacheAwareRouter, Route


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry, num_replicas: int):
        self.routed = Counter("jackfield_dp_routed_requests", "Requests the router sent to each replica, by reason: "
                              "cache_hit (its cached prefix) or load_balance (the least loaded)",
                              ["replica", "reason"], registry=registry)
        self.matched_tokens = Counter("jackfield_dp_routed_matched_tokens", "Prompt tokens the router expected the "
                                      "chosen replica to hold in its prefix cache", ["replica"], registry=registry)
        self.in_flight = Gauge("jackfield_dp_in_flight_reqs", "Requests in flight on each replica, as the router "
                               "counts them (its load measure)", ["replica"], registry=registry)
        self.tree_tokens = Gauge("jackfield_dp_router_tree_tokens", "Tokens of the router's approximate prefix tree "
                                 "of each replica", ["replica"], registry=registry)
        self.running = Gauge("jackfield_dp_num_running_reqs", "Requests in each replica's running batch", ["replica"],
                             registry=registry)
        self.queued = Gauge("jackfield_dp_num_queued_reqs", "Requests waiting in each replica's scheduler",
                            ["replica"], registry=registry)
        self.kv_used_tokens = Gauge("jackfield_dp_kv_used_tokens", "KV slots held by requests on each replica",
                                    ["replica"], registry=registry)
        self.cache_hit_rate = Gauge("jackfield_dp_cache_hit_rate", "Prompt tokens each replica served from its "
                                    "prefix cache / all its prompt tokens", ["replica"], registry=registry)
        for i in range(num_replicas):  # every series exists from the start, at 0
            for reason in REASONS:
                self.routed.labels(replica=str(i), reason=reason)
            self.matched_tokens.labels(replica=str(i))

    def observe_route(self, route: Route) -> None:
        self.routed.labels(replica=str(route.replica), reason=route.reason).inc()
        self.matched_tokens.labels(replica=str(route.replica)).inc(route.matched)

    def update_router(self, router: CacheAwareRouter) -> None:
        for i, (load, tree) in enumerate(zip(router.loads, router.trees)):
            self.in_flight.labels(replica=str(i)).set(load)
            self.tree_tokens.labels(replica=str(i)).set(tree.size)

    def update_replicas(self, stats: list[StatsOut]) -> None:
        for i, s in enumerate(stats):
            replica = str(i)
            self.running.labels(replica=replica).set(s.num_running)
            self.queued.labels(replica=replica).set(s.num_waiting)
            self.kv_used_tokens.labels(replica=replica).set(s.kv_used_tokens)
            self.cache_hit_rate.labels(replica=replica).set(s.cache_hit_rate)
