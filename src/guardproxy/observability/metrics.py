"""Prometheus metrics. Labels come from route names and small fixed sets only: a label taken from
client data (raw path, arbitrary method) would let any client create unbounded series."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import REGISTRY

from guardproxy.asgi import Scope
from guardproxy.context import RequestContext
from guardproxy.guards.chain import Guard

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
STATUS_CLASSES = ("1xx", "1xx", "2xx", "3xx", "4xx", "5xx")
# From a cached response (1 ms) to a slow report (60 s): API latencies, not page loads.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_UPSTREAM_FAILURES = {"upstream_error": "unavailable", "upstream_timeout": "timeout", "upstream_busy": "pool_exhausted"}


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.requests = Counter(
            "guardproxy_requests_total",
            "Requests answered by the proxy listener.",
            ["route", "method", "status_class", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "guardproxy_request_duration_seconds",
            "Time from a request's head to the end of its response.",
            ["route"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.upstream_duration = Histogram(
            "guardproxy_upstream_duration_seconds",
            "Time the upstream took to answer with its response head.",
            ["route"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.request_bytes = Counter(
            "guardproxy_request_body_bytes_total", "Request body bytes received.", ["route"], registry=registry
        )
        self.response_bytes = Counter(
            "guardproxy_response_body_bytes_total",
            "Response body bytes sent (before compression).",
            ["route"],
            registry=registry,
        )
        self.upstream_errors = Counter(
            "guardproxy_upstream_errors_total",
            "Requests the upstream failed: unavailable, timeout or pool_exhausted.",
            ["route", "kind"],
            registry=registry,
        )
        self.in_flight = Gauge("guardproxy_requests_in_flight", "Requests being answered.", registry=registry)
        self.log_lines_dropped = Gauge(
            "guardproxy_log_lines_dropped", "Log lines dropped because the log consumer fell behind.", registry=registry
        )

    def watch(self, in_flight: Callable[[], float], log_lines_dropped: Callable[[], float]) -> None:
        """Gauges read at scrape time, from the objects that already keep the count."""
        self.in_flight.set_function(in_flight)
        self.log_lines_dropped.set_function(log_lines_dropped)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def status_class(status: int) -> str:
    return STATUS_CLASSES[status // 100] if 100 <= status < 600 else "5xx"


class _RouteSeries:
    """One route's label children, looked up once: labels() takes a lock and validates."""

    __slots__ = ("duration", "request_bytes", "response_bytes", "upstream_duration")

    def __init__(self, metrics: ProxyMetrics, route: str) -> None:
        self.duration = metrics.duration.labels(route)
        self.upstream_duration = metrics.upstream_duration.labels(route)
        self.request_bytes = metrics.request_bytes.labels(route)
        self.response_bytes = metrics.response_bytes.labels(route)


class MetricsGuard(Guard):
    """Records every request once it has been answered, whoever answered it."""

    def __init__(self, *, metrics: ProxyMetrics) -> None:
        self.metrics = metrics
        self._requests: dict[tuple[str, str, str, str], Any] = {}
        self._routes: dict[str, _RouteSeries] = {}

    def on_complete(self, scope: Scope, context: RequestContext) -> None:
        route = context.route.name
        method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
        key = (route, method, status_class(context.status or 500), context.outcome)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = self.metrics.requests.labels(*key)
        counter.inc()
        series = self._routes.get(route)
        if series is None:
            series = self._routes[route] = _RouteSeries(self.metrics, route)
        series.duration.observe(time.perf_counter() - context.started_at)
        if context.upstream_seconds:
            series.upstream_duration.observe(context.upstream_seconds)
        if context.request_bytes:
            series.request_bytes.inc(context.request_bytes)
        if context.response_bytes:
            series.response_bytes.inc(context.response_bytes)
        failure = _UPSTREAM_FAILURES.get(context.outcome)
        if failure is not None:
            self.metrics.upstream_errors.labels(route, failure).inc()
