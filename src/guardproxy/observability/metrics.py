"""Prometheus metrics. Labels come from route names and small fixed sets only: a label taken from
client data (raw path, arbitrary method) would let any client create unbounded series."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import REGISTRY

from guardproxy.asgi import ASGIApp, Message, Receive, Scope, Send
from guardproxy.context import CONTEXT_KEY, RequestContext

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


class MetricsObserver:
    """Counts every request once it has been answered, whoever answered it."""

    def __init__(self, app: ASGIApp, *, metrics: ProxyMetrics) -> None:
        self.app = app
        self.requests = metrics.requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context: RequestContext = scope[CONTEXT_KEY]

        async def observing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                context.status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observing_send)
        finally:
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
            self.requests.labels(
                context.route.name, method, status_class(context.status or 500), context.outcome
            ).inc()
