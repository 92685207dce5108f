"""Prometheus metrics. Labels come from route names and small fixed sets only: a label taken from
client data (raw path, arbitrary method) would let any client create unbounded series."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import REGISTRY

from guardproxy.asgi import Scope
from guardproxy.context import RequestContext
from guardproxy.guards.chain import Guard

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
STATUS_CLASSES = ("1xx", "1xx", "2xx", "3xx", "4xx", "5xx")


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.requests = Counter(
            "guardproxy_requests_total",
            "Requests answered by the proxy listener.",
            ["route", "method", "status_class", "outcome"],
            registry=registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def status_class(status: int) -> str:
    return STATUS_CLASSES[status // 100] if 100 <= status < 600 else "5xx"


class MetricsGuard(Guard):
    """Counts every request once it has been answered, whoever answered it."""

    def __init__(self, *, metrics: ProxyMetrics) -> None:
        self.requests = metrics.requests
        # labels() takes a lock and validates on every call; the label sets are few and fixed.
        self._children: dict[tuple[str, str, str, str], Any] = {}

    def on_complete(self, scope: Scope, context: RequestContext) -> None:
        method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
        key = (context.route.name, method, status_class(context.status or 500), context.outcome)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(*key)
        child.inc()
