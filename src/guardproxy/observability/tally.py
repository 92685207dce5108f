"""The per-request side of the metrics: plain counters that `ProxyMetrics.flush` moves into
prometheus-client. Everything here runs on the event loop thread, and so does the flush, so no
lock is needed."""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import TYPE_CHECKING

from guardproxy.asgi import Scope
from guardproxy.context import RequestContext
from guardproxy.guards.chain import Guard

if TYPE_CHECKING:
    from guardproxy.observability.metrics import ProxyMetrics

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
# From a cached response (1 ms) to a slow report (60 s): API latencies, not page loads.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# A response that never started (status 0) counts as a server error.
_STATUS_CLASSES = {status: f"{status // 100}xx" for status in range(100, 600)}


class RouteTally:
    """What one route's requests added up to since the last flush. Histograms are kept as
    counts per bucket (index len(DURATION_BUCKETS) is +Inf) plus the sum of the values."""

    __slots__ = (
        "duration",
        "duration_sum",
        "request_bytes",
        "requests",
        "response_bytes",
        "upstream",
        "upstream_sum",
    )

    def __init__(self) -> None:
        # (method, status class, outcome) -> requests
        self.requests: dict[tuple[str, str, str], int] = {}
        self.duration = [0] * (len(DURATION_BUCKETS) + 1)
        self.duration_sum = 0.0
        self.upstream = [0] * (len(DURATION_BUCKETS) + 1)
        self.upstream_sum = 0.0
        self.request_bytes = 0
        self.response_bytes = 0


class MetricsGuard(Guard):
    """Counts every request once it has been answered, whoever answered it."""

    def __init__(self, *, metrics: ProxyMetrics) -> None:
        self._routes: dict[str, RouteTally] = {}
        metrics.add_tally(self.take)

    def take(self) -> dict[str, RouteTally]:
        """Hand over the tallies counted so far and start new ones."""
        routes, self._routes = self._routes, {}
        return routes

    def on_complete(self, scope: Scope, context: RequestContext) -> None:
        route = context.route.name
        tally = self._routes.get(route)
        if tally is None:
            tally = self._routes[route] = RouteTally()
        method = scope["method"]
        key = (
            method if method in KNOWN_METHODS else "other",
            _STATUS_CLASSES.get(context.status, "5xx"),
            context.outcome,
        )
        requests = tally.requests
        requests[key] = requests.get(key, 0) + 1
        elapsed = time.perf_counter() - context.started_at
        # bisect_left finds the first bound >= the value: Prometheus' `le` buckets.
        tally.duration[bisect_left(DURATION_BUCKETS, elapsed)] += 1
        tally.duration_sum += elapsed
        upstream = context.upstream_seconds
        if upstream:
            tally.upstream[bisect_left(DURATION_BUCKETS, upstream)] += 1
            tally.upstream_sum += upstream
        tally.request_bytes += context.request_bytes
        tally.response_bytes += context.response_bytes
