"""Builds the proxy's ASGI application from settings. The guard order lives here, and only here.

Read `build_guards` top to bottom as the way a request travels: each guard may rely on everything
the ones above it have established.
"""

from __future__ import annotations

from guardproxy.asgi import ASGIApp
from guardproxy.config import Settings
from guardproxy.guards.chain import Guard, GuardChain
from guardproxy.guards.request_id import RequestIdGuard
from guardproxy.observability.metrics import MetricsGuard, ProxyMetrics
from guardproxy.proxy.forwarder import Forwarder
from guardproxy.proxy.transport import UpstreamTransport
from guardproxy.routes import DEFAULT_ROUTE_NAME, Route, RoutePolicy, RouteTable, compile_path_pattern
from guardproxy.upstream import upstream_origin


def build_route_table(settings: Settings) -> RouteTable:
    upstream = settings.upstream

    def policy(name: str, connect: float | None = None, read: float | None = None) -> RoutePolicy:
        return RoutePolicy(
            name=name,
            connect_timeout=connect or upstream.connect_timeout,
            read_timeout=read or upstream.read_timeout,
        )

    routes = [
        Route(
            pattern=compile_path_pattern(route.path),
            methods=frozenset(route.methods) if route.methods else None,
            policy=policy(route.name, route.upstream.connect_timeout, route.upstream.read_timeout),
        )
        for route in settings.routes
    ]
    return RouteTable(routes, default=policy(DEFAULT_ROUTE_NAME))


def build_guards(settings: Settings, metrics: ProxyMetrics | None) -> list[Guard]:
    """The guard order. Requests meet the guards top to bottom; response heads meet them bottom
    to top, so a guard listed earlier has the last word on the headers a client receives."""
    guards: list[Guard] = []
    if metrics is not None:
        guards.append(MetricsGuard(metrics=metrics))
    guards.append(RequestIdGuard(trust_incoming=settings.request_id.trust_incoming))
    return guards


def build_proxy_app(settings: Settings, transport: UpstreamTransport, metrics: ProxyMetrics | None) -> ASGIApp:
    forwarder = Forwarder(
        transport,
        upstream_authority=upstream_origin(settings.upstream).authority,
        preserve_host=settings.upstream.preserve_host,
    )
    return GuardChain(forwarder, guards=build_guards(settings, metrics), routes=build_route_table(settings))
