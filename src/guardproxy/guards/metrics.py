"""Counts every request into the metrics' tallies once it has been answered (checklist items 4, 29)."""

from __future__ import annotations

import time

from guardproxy.asgi import Scope
from guardproxy.context import RequestContext
from guardproxy.guards.chain import Guard
from guardproxy.observability.metrics import MetricSources
from guardproxy.observability.tally import KNOWN_METHODS, STATUS_CLASSES, RouteTally, bucket


class MetricsGuard(Guard):
    """Counts every request once it has been answered, whoever answered it."""

    def __init__(self, *, sources: MetricSources) -> None:
        self._routes: dict[str, RouteTally] = {}
        sources.add_tally(self.take)

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
            STATUS_CLASSES.get(context.status, "5xx"),
            context.outcome,
        )
        requests = tally.requests
        requests[key] = requests.get(key, 0) + 1
        elapsed = time.perf_counter() - context.started_at
        tally.duration[bucket(elapsed)] += 1
        tally.duration_sum += elapsed
        upstream = context.upstream_seconds
        if upstream:
            tally.upstream[bucket(upstream)] += 1
            tally.upstream_sum += upstream
        tally.request_bytes += context.request_bytes
        tally.response_bytes += context.response_bytes
