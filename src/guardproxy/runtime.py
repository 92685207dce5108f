"""The runtime: everything one running proxy has, built from one `Settings`, and the only place
where settings become objects. The guard order lives here, and only here: read `build_guards`
top to bottom as the way a request travels; each guard may rely on everything the ones above it
have established.

A `Runtime` owns the upstream pool, the rate-limit store, the readiness probe, the guard chains
and its metric sources, and opens and closes them in `start()` / `aclose()`. What belongs to
the process stays outside it, in `server/process.py`: the listening sockets, the drain switch,
the metric families (a counter must not restart at a reload) and the log sink. A reload builds
a second runtime beside the serving one, starts it, makes it `CurrentRuntime.runtime` (new
connections and requests are served by it) and closes the old one once its requests are done.
"""

from __future__ import annotations

from datetime import UTC, datetime

from guardproxy.asgi import ASGIApp, Receive, Scope, Send
from guardproxy.config import (
    Settings,
)
from guardproxy.config.source import config_hash
from guardproxy.guards.access_log import AccessLogGuard
from guardproxy.guards.auth.build import auth_guards, redacted_query_params
from guardproxy.guards.body_limit import BodyLimitGuard
from guardproxy.guards.chain import Guard, GuardChain
from guardproxy.guards.client_ip import ClientAddressGuard
from guardproxy.guards.compression import CompressionGuard
from guardproxy.guards.concurrency import ConcurrencyGuard
from guardproxy.guards.cors import CorsGuard
from guardproxy.guards.deprecation import build_deprecation_guard
from guardproxy.guards.hosts import HostGuard
from guardproxy.guards.https_redirect import HttpsRedirectGuard, RedirectEverythingGuard
from guardproxy.guards.idempotency import IdempotencyGuard, build_idempotency_guard
from guardproxy.guards.methods import MethodGuard
from guardproxy.guards.metrics import MetricsGuard
from guardproxy.guards.paths import PathGuard
from guardproxy.guards.rate_limit import RateLimitGuard
from guardproxy.guards.request_id import RequestIdGuard
from guardproxy.guards.security_headers import SecurityHeadersGuard
from guardproxy.guards.upstream_redirects import UpstreamRedirectGuard
from guardproxy.guards.websocket import WebSocketGuard, build_websocket_guard
from guardproxy.health import Readiness
from guardproxy.observability.logging import log_sink
from guardproxy.observability.metrics import MetricSources, ProxyMetrics
from guardproxy.policies import build_route_table, connection_limits, cors_policies
from guardproxy.proxy.forwarder import Forwarder
from guardproxy.proxy.transport import UpstreamTransport
from guardproxy.proxy.upgrade import UpgradeForwarder
from guardproxy.ratelimit.failsoft import FailSoftStore
from guardproxy.ratelimit.memory import MemoryStore
from guardproxy.ratelimit.redis_store import RedisStore, connect
from guardproxy.ratelimit.rules import compile_rules
from guardproxy.server.limits import Lifecycle, Site
from guardproxy.upstream import build_observed_transport, start_transport, upstream_endpoints, upstream_origin


class Runtime:
    """One running proxy's objects, built from `settings`; see the module's docstring."""

    def __init__(
        self,
        settings: Settings,
        *,
        lifecycle: Lifecycle,
        metrics: ProxyMetrics | None,
        rate_limit_memory: MemoryStore | None = None,
    ) -> None:
        self.settings = settings
        self.metric_sources = metrics.sources() if metrics is not None else None
        self.pool = build_observed_transport(settings, self.metric_sources)
        self.readiness = Readiness(settings.upstream, lifecycle, upstream_endpoints(self.pool))
        self.readiness.config = {"hash": config_hash(settings), "loaded_at": datetime.now(UTC).isoformat()}
        # In-process budgets: a reload hands the previous runtime's store over (server/reload.py).
        self.rate_limit_memory = (
            rate_limit_memory
            if rate_limit_memory is not None
            else MemoryStore(max_keys=settings.rate_limit.local_max_keys)
        )
        self.rate_limit_store = build_shared_rate_limit_store(settings, self.metric_sources, self.rate_limit_memory)
        limits = connection_limits(settings.server)
        proxy_app, upgrades = build_proxy_apps(
            settings, self.pool, self.metric_sources, self.rate_limit_store, self.rate_limit_memory, lifecycle=lifecycle
        )
        self.chains = [proxy_app]
        if settings.server.redirect_listen is not None:
            self.chains.append(build_redirect_app(settings))
        self.proxy = Site(self.chains[0], limits, upgrades)
        self.redirect = Site(self.chains[1], limits) if len(self.chains) > 1 else None

    async def start(self) -> None:
        """Open what the runtime needs before it serves: the store's connections, the first
        readiness probe, and whatever the guards own."""
        if self.rate_limit_store is not None:
            self.readiness.inform("rate_limit_store", self.rate_limit_store.report)
            await self.rate_limit_store.shared.warm_up()
        if self.metric_sources is not None:
            self.metric_sources.watch_upstream(lambda: self.readiness.upstream.ok)
        for chain in self.chains:
            for guard in chain.guards:
                for name, report in guard.readiness_checks().items():
                    self.readiness.inform(name, report)
        await start_transport(self.pool)
        await self.readiness.start()
        for chain in self.chains:
            await chain.start()

    async def aclose(self) -> None:
        """Close everything `start` opened, newest first; the last counts go to the metrics."""
        for chain in reversed(self.chains):
            await chain.aclose()
        await self.readiness.stop()
        await self.pool.aclose()
        if self.rate_limit_store is not None:
            await self.rate_limit_store.shared.aclose()
        if self.metric_sources is not None:
            self.metric_sources.close()


class CurrentRuntime:
    """The runtime that new connections and requests are served by; a reload replaces it."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def proxy_site(self) -> Site:
        return self.runtime.proxy

    def redirect_site(self) -> Site:
        site = self.runtime.redirect
        assert site is not None, "a redirect listener is only opened when server.redirect_listen is set"
        return site

    def readiness(self) -> Readiness:
        return self.runtime.readiness

    def swap(self, runtime: Runtime) -> Runtime:
        """Serve new requests from `runtime`; returns the one it replaces, for the caller to close."""
        previous, self.runtime = self.runtime, runtime
        return previous


def build_shared_rate_limit_store(
    settings: Settings, metrics: MetricSources | None, local: MemoryStore | None = None
) -> FailSoftStore | None:
    """The Redis-backed store behind the rate limits, when one is configured; the caller owns
    it and closes it at shutdown."""
    limits = settings.rate_limit
    if limits.redis_url is None or not compile_rules(limits):
        return None
    return FailSoftStore(
        RedisStore(connect(limits.redis_url.get_secret_value()), budget=limits.timeout),
        local if local is not None else MemoryStore(max_keys=limits.local_max_keys),
        fallback=limits.fallback,
        breaker_failures=limits.breaker_failures,
        breaker_cooldown=limits.breaker_cooldown,
        on_error=metrics.counted(metrics.families.ratelimit_store_errors).add if metrics is not None else _ignore,
        on_degraded=metrics.ratelimit_fallback if metrics is not None else _ignore,
    )


def rate_limit_guard(
    settings: Settings, metrics: MetricSources | None, shared: FailSoftStore | None, local: MemoryStore | None = None
) -> RateLimitGuard | None:
    rules = compile_rules(settings.rate_limit)
    if not rules:
        return None
    max_keys = settings.rate_limit.local_max_keys
    if metrics is not None:
        # Series that exist from the start: an alert on rate() sees the first 429s, not a new series.
        metrics.families.declare_ratelimit_rules(rule.name for rule in rules)
    return RateLimitGuard(
        rules=rules,
        route_names=[policy.name for policy in build_route_table(settings).policies],
        key_prefix=settings.rate_limit.key_prefix,
        local=shared.local if shared is not None else local if local is not None else MemoryStore(max_keys=max_keys),
        shared=shared,
        count_decision=metrics.counted(metrics.families.ratelimit_decisions).add if metrics is not None else _ignore,
    )


def method_guard(settings: Settings) -> MethodGuard:
    return MethodGuard(
        refused=settings.methods.refused,
        refuse_unknown=settings.methods.unknown == "refuse",
        extensions=settings.methods.extensions,
        route_methods={route.name: route.allowed_methods for route in settings.routes if route.allowed_methods},
    )


def _ignore(*_: object) -> None:
    return None


def build_guards(
    settings: Settings,
    metrics: MetricSources | None,
    rate_limit_store: FailSoftStore | None = None,
    rate_limit_memory: MemoryStore | None = None,
    lifecycle: Lifecycle | None = None,
) -> list[Guard]:
    """The guard order. Requests meet the guards top to bottom; response heads meet them bottom
    to top, so a guard listed earlier has the last word on the headers a client receives. A
    guard that is not configured is None here, and costs nothing."""
    upstream = settings.upstream
    concurrency = ConcurrencyGuard(max_in_flight=settings.concurrency.max_in_flight)
    if metrics is not None:
        metrics.watch_in_flight(lambda: concurrency.in_flight)
    guards: list[Guard | None] = [
        # First, so that it sees every outcome and logs every request exactly once.
        AccessLogGuard(sink=log_sink(), redact_query_params=redacted_query_params(settings))
        if settings.logging.access_log
        else None,
        MetricsGuard(sources=metrics) if metrics is not None else None,
        # Early in the list, so its response hook runs last: the final word on response headers.
        security_headers_guard(settings),
        # Who is asking, and over which scheme and host: every later decision depends on it.
        ClientAddressGuard(trusted=settings.trusted_proxies.cidrs),
        RequestIdGuard(trust_incoming=settings.request_id.trust_incoming),
        HostGuard(allowed=settings.hosts.allowed) if settings.hosts.allowed else None,
        cors_guard(settings),
        # After the host check (a host this service does not answer to learns nothing of its
        # methods) and CORS (a preflight is about the next request's method, judged here).
        method_guard(settings),
        https_redirect_guard(settings),
        # Upstream Locations pointed back at the scheme and host established above.
        UpstreamRedirectGuard(
            internal_origins=[upstream.url, *upstream.internal_origins],
            rewrite_cookie_domains=upstream.rewrite_cookie_domains,
        )
        if upstream.rewrite_redirects
        else None,
        build_deprecation_guard(settings, metrics),
        # Cheap refusals come before anything that costs: shedding, then malformed paths, then bodies.
        concurrency,
        PathGuard() if settings.paths.refuse_traversal else None,
        BodyLimitGuard(),
        # Upgrade handshakes only (it is left out of the plain chain, see build_proxy_apps):
        # malformed, foreign-origin and over-budget handshakes go before anything that costs.
        build_websocket_guard(settings, metrics, lifecycle or Lifecycle()),
        # IP lists, then authentication: after every cheap refusal (a shed or malformed request
        # never costs a signature check), after CORS (preflights are answered without
        # credentials), and before rate limiting, so a verified identity can key a budget.
        *auth_guards(settings, metrics),
        # Its decision waits on a store, so the chain runs it after every cheaper check above.
        rate_limit_guard(settings, metrics, rate_limit_store, rate_limit_memory),
        # Listed for its start/aclose (the store's connection). Its work happens between the
        # chain and the forwarder (build_proxy_app): after every request hook, so a request the
        # rate limit refused never takes a lock; inside the response hooks, so it stores the
        # upstream's own head and uncompressed body, and its replays get fresh security
        # headers, request ID and compression like any answer.
        build_idempotency_guard(settings, metrics),
        # Last: it sees response heads after every other guard has set its headers.
        CompressionGuard.from_settings(settings.compression) if settings.compression.enabled else None,
    ]
    return [guard for guard in guards if guard is not None]


def security_headers_guard(settings: Settings) -> SecurityHeadersGuard | None:
    if not settings.security_headers.enabled:
        return None
    cache_control = {route.name: route.cache_control for route in settings.routes if route.cache_control is not None}
    return SecurityHeadersGuard.from_settings(settings.security_headers, cache_control)


def cors_guard(settings: Settings) -> CorsGuard | None:
    policies = cors_policies(settings)
    return CorsGuard(policies=policies) if policies else None


def https_redirect_guard(settings: Settings) -> HttpsRedirectGuard | None:
    if not settings.https_redirect.enabled:
        return None
    return HttpsRedirectGuard(
        status=settings.https_redirect.status,
        exempt_paths=settings.https_redirect.exempt_paths,
        canonical_host=settings.hosts.canonical,
        hosts_vetted=bool(settings.hosts.allowed),
    )


def build_redirect_app(settings: Settings) -> GuardChain:
    """The plain-HTTP redirect listener: security headers, request IDs, host check, redirect."""
    guards: list[Guard] = []
    if settings.logging.access_log:
        guards.append(AccessLogGuard(sink=log_sink(), redact_query_params=redacted_query_params(settings)))
    if settings.security_headers.enabled:
        guards.append(SecurityHeadersGuard.from_settings(settings.security_headers))
    guards.append(ClientAddressGuard(trusted=[]))
    guards.append(RequestIdGuard(trust_incoming=settings.request_id.trust_incoming))
    if settings.hosts.allowed:
        guards.append(HostGuard(allowed=settings.hosts.allowed))
    guards.append(method_guard(settings))
    guards.append(
        RedirectEverythingGuard(
            status=settings.https_redirect.status,
            canonical_host=settings.hosts.canonical,
            https_port=settings.server.https_port,
        )
    )
    return GuardChain(_never_reached, guards=guards, routes=build_route_table(settings))


async def _never_reached(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("the redirect listener answers every request from its guards")


def build_proxy_app(
    settings: Settings,
    transport: UpstreamTransport,
    metrics: MetricSources | None,
    rate_limit_store: FailSoftStore | None = None,
    rate_limit_memory: MemoryStore | None = None,
) -> GuardChain:
    return build_proxy_apps(settings, transport, metrics, rate_limit_store, rate_limit_memory)[0]


def build_proxy_apps(
    settings: Settings,
    transport: UpstreamTransport,
    metrics: MetricSources | None,
    rate_limit_store: FailSoftStore | None = None,
    rate_limit_memory: MemoryStore | None = None,
    *,
    lifecycle: Lifecycle | None = None,
) -> tuple[GuardChain, GuardChain | None]:
    """The chain for plain requests, and the one for upgrade requests (None when no route
    tunnels them). Both hold the same guards, so a handshake meets every check a request does;
    only the upgrade chain has the WebSocket guard (plain requests never pay for it), and it
    leaves out compression, which has nothing to do on a 101."""
    forwarder = Forwarder(
        transport,
        upstream_authority=upstream_origin(settings.upstream).authority,
        preserve_host=settings.upstream.preserve_host,
        untrusted_strip=settings.trusted_proxies.untrusted_strip,
        forward_trailers=settings.upstream.forward_trailers,
    )
    guards = build_guards(settings, metrics, rate_limit_store, rate_limit_memory, lifecycle)
    app: ASGIApp = forwarder
    for guard in guards:
        if isinstance(guard, IdempotencyGuard):
            app = guard.wrap_app(forwarder)
    routes = build_route_table(settings)
    plain = GuardChain(app, guards=[guard for guard in guards if not isinstance(guard, WebSocketGuard)], routes=routes)
    websocket = next((guard for guard in guards if isinstance(guard, WebSocketGuard)), None)
    if websocket is None:
        return plain, None
    upgrades = GuardChain(
        UpgradeForwarder(forwarder, transport, websocket.tunnels),
        guards=[guard for guard in guards if not isinstance(guard, CompressionGuard)],
        routes=routes,
    )
    return plain, upgrades
