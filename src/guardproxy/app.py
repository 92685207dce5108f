"""Builds the proxy's ASGI application from settings. The guard order lives here, and only here.

Read `build_guards` top to bottom as the way a request travels: each guard may rely on everything
the ones above it have established.
"""

from __future__ import annotations

from guardproxy.asgi import ASGIApp, Receive, Scope, Send
from guardproxy.config import (
    CorsSettings,
    RouteSettings,
    SecurityHeadersSettings,
    Settings,
    TimeoutOverrides,
)
from guardproxy.guards.auth.build import build_auth_guard, build_ip_list_guard
from guardproxy.guards.body_limit import BodyLimitGuard
from guardproxy.guards.chain import Guard, GuardChain
from guardproxy.guards.client_ip import ClientAddressGuard
from guardproxy.guards.compression import CompressionGuard
from guardproxy.guards.concurrency import ConcurrencyGuard
from guardproxy.guards.cors import CorsGuard, CorsPolicy
from guardproxy.guards.hosts import HostGuard
from guardproxy.guards.https_redirect import HttpsRedirectGuard, RedirectEverythingGuard
from guardproxy.guards.paths import PathGuard
from guardproxy.guards.rate_limit import RateLimitGuard
from guardproxy.guards.request_id import RequestIdGuard
from guardproxy.guards.security_headers import SecurityHeadersGuard, hsts_value
from guardproxy.observability.access_log import AccessLogGuard
from guardproxy.observability.logging import log_sink
from guardproxy.observability.metrics import MetricsGuard, ProxyMetrics
from guardproxy.proxy.forwarder import Forwarder
from guardproxy.proxy.transport import UpstreamTransport
from guardproxy.ratelimit.failsoft import FailSoftStore
from guardproxy.ratelimit.memory import MemoryStore
from guardproxy.ratelimit.redis_store import RedisStore, connect
from guardproxy.ratelimit.rules import compile_rules
from guardproxy.routes import DEFAULT_ROUTE_NAME, Route, RoutePolicy, RouteTable, compile_path_pattern
from guardproxy.upstream import upstream_origin


def build_route_table(settings: Settings) -> RouteTable:
    upstream = settings.upstream

    def policy(route: RouteSettings | None) -> RoutePolicy:
        """A route's settings merged with the global ones once, here; None is the default route."""
        timeouts = route.upstream if route is not None else TimeoutOverrides()
        body_limit = route.body_limit.max_bytes if route is not None else None
        return RoutePolicy(
            name=route.name if route is not None else DEFAULT_ROUTE_NAME,
            connect_timeout=timeouts.connect_timeout or upstream.connect_timeout,
            read_timeout=timeouts.read_timeout or upstream.read_timeout,
            total_timeout=timeouts.total_timeout or upstream.total_timeout,
            max_body_bytes=body_limit if body_limit is not None else settings.body_limit.max_bytes,
            cors=cors_policy(settings.effective_cors(route)),
        )

    routes = [
        Route(
            pattern=compile_path_pattern(route.path),
            methods=frozenset(route.methods) if route.methods else None,
            policy=policy(route),
        )
        for route in settings.routes
    ]
    return RouteTable(routes, default=policy(None))


def cors_policy(settings: CorsSettings) -> CorsPolicy | None:
    if not settings.origins:
        return None
    return CorsPolicy(
        origins=settings.origins,
        methods=settings.methods,
        allow_headers=settings.allow_headers,
        expose_headers=settings.expose_headers,
        allow_credentials=settings.allow_credentials,
        max_age=settings.max_age,
    )


def security_headers_guard(settings: SecurityHeadersSettings) -> SecurityHeadersGuard:
    hsts = settings.hsts
    return SecurityHeadersGuard(
        preset=settings.preset,
        set_headers=settings.set,
        drop=settings.drop,
        upstream_wins=settings.upstream_wins,
        remove=settings.remove,
        hsts=hsts_value(hsts.max_age, include_subdomains=hsts.include_subdomains, preload=hsts.preload)
        if hsts.enabled
        else None,
    )


def build_shared_rate_limit_store(settings: Settings, metrics: ProxyMetrics | None) -> FailSoftStore | None:
    """The Redis-backed store behind the rate limits, when one is configured; the caller owns
    it and closes it at shutdown."""
    limits = settings.rate_limit
    if limits.redis_url is None or not compile_rules(limits):
        return None
    return FailSoftStore(
        RedisStore(connect(limits.redis_url.get_secret_value()), budget=limits.timeout),
        MemoryStore(max_keys=limits.local_max_keys),
        fallback=limits.fallback,
        breaker_failures=limits.breaker_failures,
        breaker_cooldown=limits.breaker_cooldown,
        on_error=metrics.counted(metrics.ratelimit_store_errors).add if metrics is not None else _ignore,
        on_degraded=(lambda on: metrics.ratelimit_fallback_active.set(int(on))) if metrics is not None else _ignore,
    )


def rate_limit_guard(
    settings: Settings, metrics: ProxyMetrics | None, shared: FailSoftStore | None
) -> RateLimitGuard | None:
    rules = compile_rules(settings.rate_limit)
    if not rules:
        return None
    if metrics is not None:
        # Series that exist from the start: an alert on rate() sees the first 429s, not a new series.
        metrics.declare_ratelimit_rules(rule.name for rule in rules)
    return RateLimitGuard(
        rules=rules,
        route_names=[policy.name for policy in build_route_table(settings).policies],
        key_prefix=settings.rate_limit.key_prefix,
        local=shared.local if shared is not None else MemoryStore(max_keys=settings.rate_limit.local_max_keys),
        shared=shared,
        count_decision=metrics.counted(metrics.ratelimit_decisions).add if metrics is not None else _ignore,
    )


def auth_guards(settings: Settings, metrics: ProxyMetrics | None) -> list[Guard]:
    """IP lists, then authentication: after every cheap refusal (a shed or malformed request
    never costs a signature check), after CORS (preflights are answered without credentials),
    and before rate limiting, so a verified identity (claim:sub, api_key) can key a budget."""
    guards: list[Guard] = []
    ip_lists = build_ip_list_guard(settings)
    if ip_lists is not None:
        guards.append(ip_lists)
    count = metrics.counted(metrics.auth_decisions).add if metrics is not None else _ignore
    count_fetch = metrics.counted(metrics.auth_jwks_fetches).add if metrics is not None else _ignore
    auth = build_auth_guard(settings, count, count_fetch)
    if auth is not None:
        guards.append(auth)
        if metrics is not None:
            metrics.declare_auth_providers(
                [verifier.name for verifier in auth.verifiers],
                [verifier.name for verifier in auth.verifiers if verifier.remote is not None],
            )
    return guards


def _ignore(*_: object) -> None:
    return None


def redacted_query_params(settings: Settings) -> list[str]:
    """The logging setting's list, plus the query parameter a JWT may come in."""
    query = settings.auth.jwt.token.query
    return [*settings.logging.redact_query_params, *([query] if query else [])]


def build_guards(
    settings: Settings, metrics: ProxyMetrics | None, rate_limit_store: FailSoftStore | None = None
) -> list[Guard]:
    """The guard order. Requests meet the guards top to bottom; response heads meet them bottom
    to top, so a guard listed earlier has the last word on the headers a client receives."""
    guards: list[Guard] = []
    if settings.logging.access_log:
        # First, so that it sees every outcome and logs every request exactly once.
        guards.append(AccessLogGuard(sink=log_sink(), redact_query_params=redacted_query_params(settings)))
    if metrics is not None:
        guards.append(MetricsGuard(metrics=metrics))
    if settings.security_headers.enabled:
        # Early in the list, so its response hook runs last: the final word on response headers.
        guards.append(security_headers_guard(settings.security_headers))
    # Who is asking, and over which scheme and host: every later decision depends on it.
    guards.append(ClientAddressGuard(trusted=settings.trusted_proxies.cidrs))
    guards.append(RequestIdGuard(trust_incoming=settings.request_id.trust_incoming))
    if settings.hosts.allowed:
        guards.append(HostGuard(allowed=settings.hosts.allowed))
    if settings.cors.origins or any(route.cors.origins for route in settings.routes):
        guards.append(CorsGuard())
    if settings.https_redirect.enabled:
        guards.append(
            HttpsRedirectGuard(
                status=settings.https_redirect.status,
                exempt_paths=settings.https_redirect.exempt_paths,
                canonical_host=settings.hosts.canonical,
                hosts_vetted=bool(settings.hosts.allowed),
            )
        )
    # Cheap refusals come before anything that costs: shedding, then malformed paths, then bodies.
    concurrency = ConcurrencyGuard(max_in_flight=settings.concurrency.max_in_flight)
    guards.append(concurrency)
    if metrics is not None:
        sink = log_sink()
        metrics.watch(in_flight=lambda: concurrency.in_flight, log_lines_dropped=lambda: sink.dropped)
    if settings.paths.refuse_traversal:
        guards.append(PathGuard())
    guards.append(BodyLimitGuard())
    guards.extend(auth_guards(settings, metrics))
    rate_limit = rate_limit_guard(settings, metrics, rate_limit_store)
    if rate_limit is not None:
        # Its decision waits on a store, so the chain runs it after every cheaper check above.
        guards.append(rate_limit)
    if settings.compression.enabled:
        # Last: it sees response heads after every other guard has set its headers.
        compression = settings.compression
        guards.append(
            CompressionGuard(
                algorithms=compression.algorithms,
                min_size=compression.min_size,
                media_types=compression.media_types,
                gzip_level=compression.gzip_level,
                brotli_quality=compression.brotli_quality,
                zstd_level=compression.zstd_level,
            )
        )
    return guards


def build_redirect_app(settings: Settings) -> ASGIApp:
    """The plain-HTTP redirect listener: security headers, request IDs, host check, redirect."""
    guards: list[Guard] = []
    if settings.logging.access_log:
        guards.append(AccessLogGuard(sink=log_sink(), redact_query_params=settings.logging.redact_query_params))
    if settings.security_headers.enabled:
        guards.append(security_headers_guard(settings.security_headers))
    guards.append(ClientAddressGuard(trusted=[]))
    guards.append(RequestIdGuard(trust_incoming=settings.request_id.trust_incoming))
    if settings.hosts.allowed:
        guards.append(HostGuard(allowed=settings.hosts.allowed))
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
    metrics: ProxyMetrics | None,
    rate_limit_store: FailSoftStore | None = None,
) -> GuardChain:
    forwarder = Forwarder(
        transport,
        upstream_authority=upstream_origin(settings.upstream).authority,
        preserve_host=settings.upstream.preserve_host,
    )
    return GuardChain(
        forwarder, guards=build_guards(settings, metrics, rate_limit_store), routes=build_route_table(settings)
    )
