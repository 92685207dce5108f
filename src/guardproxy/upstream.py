"""Turns upstream settings into the objects that talk to it: origins, TLS context, pools, and
the transport the forwarder sends through."""

from __future__ import annotations

import ssl
import time
from urllib.parse import urlsplit

from guardproxy.config import Settings, UpstreamSettings
from guardproxy.observability.metrics import MetricSources
from guardproxy.observability.upstream import UpstreamMetrics
from guardproxy.proxy.balancer import Balancer
from guardproxy.proxy.breaker import CircuitBreaker
from guardproxy.proxy.dns import DnsEndpoints, Resolver, address_url, system_resolver
from guardproxy.proxy.endpoints import Endpoint, EndpointTarget, endpoint_name, log_transitions
from guardproxy.proxy.pool import ConnectionPool, Origin
from guardproxy.proxy.resilient import AttemptObserver, ResilientTransport
from guardproxy.proxy.retry import RetryBudget, RetryPolicy
from guardproxy.proxy.transport import UpstreamTransport
from guardproxy.routes import DEFAULT_ROUTE_NAME


def upstream_origin(settings: UpstreamSettings) -> Origin:
    return origin_of(settings.url)


def origin_of(url: str) -> Origin:
    parts = urlsplit(url)
    assert parts.hostname is not None  # guaranteed by UpstreamSettings' validation
    default_port = 443 if parts.scheme == "https" else 80
    return Origin(scheme=parts.scheme, host=parts.hostname, port=parts.port or default_port)


def upstream_ssl_context(settings: UpstreamSettings) -> ssl.SSLContext | None:
    if urlsplit(settings.url).scheme != "https":
        return None
    context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    if not settings.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    # The pool speaks HTTP/1.1 only; say so, so an ALPN-aware upstream does not pick h2.
    context.set_alpn_protocols(["http/1.1"])
    return context


def build_pool(
    settings: UpstreamSettings, url: str | None = None, tls_server_name: str | None = None
) -> ConnectionPool:
    return ConnectionPool(
        origin_of(url or settings.url),
        max_connections=settings.max_connections,
        max_idle_connections=settings.max_idle_connections,
        idle_timeout=settings.idle_timeout,
        ssl_context=upstream_ssl_context(settings),
        max_head_bytes=settings.max_response_head_bytes,
        max_header_fields=settings.max_response_header_fields,
        tls_server_name=tls_server_name,
    )


def endpoint_targets(settings: UpstreamSettings) -> list[EndpointTarget]:
    """Each configured endpoint, or `url` alone."""
    if not settings.endpoints:
        return [EndpointTarget(endpoint_name(settings.url, None), settings.url)]
    return [EndpointTarget(endpoint_name(item.url, item.name), item.url) for item in settings.endpoints]


def needs_resilience(settings: UpstreamSettings) -> bool:
    """Whether the plain pool is not enough: several endpoints, retries, a breaker or DNS."""
    return (
        len(endpoint_targets(settings)) > 1
        or settings.retries.attempts > 0
        or settings.circuit_breaker.enabled
        or settings.dns_ttl is not None
    )


def retry_policies(settings: Settings) -> dict[str, RetryPolicy]:
    """Each route's retry policy by route name, `default` included, merged once here."""
    retries = settings.upstream.retries
    policies = {}
    for route in [*settings.routes, None]:
        override = route.upstream.retries if route is not None else None
        total = (route.upstream.total_timeout if route is not None else None) or settings.upstream.total_timeout

        def pick(name: str, override: object = override) -> object:
            value = getattr(override, name) if override is not None else None
            return value if value is not None else getattr(retries, name)

        methods: list[str] = pick("idempotent_methods")  # type: ignore[assignment]
        policies[route.name if route is not None else DEFAULT_ROUTE_NAME] = RetryPolicy(
            attempts=pick("attempts"),  # type: ignore[arg-type]
            backoff_base=pick("backoff_base"),  # type: ignore[arg-type]
            backoff_cap=pick("backoff_cap"),  # type: ignore[arg-type]
            idempotent=frozenset(method.encode("ascii") for method in methods),
            replay_bytes=retries.replay_buffer_bytes,
            total_timeout=total,
        )
    return policies


def build_transport(
    settings: Settings, observer: AttemptObserver | None = None, resolver: Resolver = system_resolver
) -> ConnectionPool | ResilientTransport:
    """The plain pool for one endpoint without retries or breaker (the thinnest path), else a
    `ResilientTransport` over one pool per endpoint (per address of url's name with dns_ttl)."""
    upstream = settings.upstream
    if not needs_resilience(upstream):
        return build_pool(upstream)
    clock = time.monotonic
    targets = [] if upstream.dns_ttl is not None else endpoint_targets(upstream)
    endpoints = [
        Endpoint(target, build_pool(upstream, target.url), endpoint_breaker(upstream, target)) for target in targets
    ]
    policies = retry_policies(settings)
    retries = upstream.retries
    origin = upstream_origin(upstream)
    transport = ResilientTransport(
        Balancer(endpoints, balance=upstream.balance, clock=clock),
        policies=policies,
        default=policies[DEFAULT_ROUTE_NAME],
        budget=RetryBudget(
            ratio=retries.budget_ratio,
            min_per_second=retries.budget_min_per_second,
            window=retries.budget_window,
            clock=clock,
        ),
        clock=clock,
        observer=observer,
        scheme=origin.scheme,
    )
    if upstream.dns_ttl is not None:

        def address_endpoint(address: str) -> Endpoint:
            url = address_url(origin.scheme, address, origin.port)
            target = EndpointTarget(endpoint_name(url, None), url)
            pool = build_pool(upstream, url, tls_server_name=origin.host)
            return Endpoint(target, pool, endpoint_breaker(upstream, target))

        transport.refresher = DnsEndpoints(
            transport,
            host=origin.host,
            port=origin.port,
            ttl=upstream.dns_ttl,
            make_endpoint=address_endpoint,
            resolver=resolver,
        )
    return transport


def endpoint_breaker(upstream: UpstreamSettings, target: EndpointTarget) -> CircuitBreaker | None:
    breaker = upstream.circuit_breaker
    if not breaker.enabled:
        return None
    return CircuitBreaker(
        consecutive_failures=breaker.consecutive_failures,
        failure_ratio=breaker.failure_ratio,
        min_requests=breaker.min_requests,
        window=breaker.window,
        open_for=breaker.open_for,
        half_open_probes=breaker.half_open_probes,
        clock=time.monotonic,
        on_transition=log_transitions(target.name),
    )


async def start_transport(transport: UpstreamTransport) -> None:
    """What a transport must do before it serves (resolve its name, with dns_ttl)."""
    if isinstance(transport, ResilientTransport):
        await transport.start()


def build_observed_transport(settings: Settings, metrics: MetricSources | None) -> ConnectionPool | ResilientTransport:
    """`build_transport` with its attempts, retries, breakers and health counted in `metrics`."""
    if metrics is None:
        return build_transport(settings)
    observer = UpstreamMetrics(metrics)
    transport = build_transport(settings, observer)
    observer.watch(lambda: upstream_endpoints(transport))
    return transport


def upstream_pools(transport: UpstreamTransport) -> list[ConnectionPool]:
    """The keep-alive pools behind a transport (for tools that look inside, like the bench)."""
    if isinstance(transport, ConnectionPool):
        return [transport]
    if isinstance(transport, ResilientTransport):
        return [endpoint.pool for endpoint in transport.endpoints if isinstance(endpoint.pool, ConnectionPool)]
    return []


def upstream_endpoints(transport: UpstreamTransport) -> list[Endpoint]:
    """The endpoints a transport balances over (none for the plain pool)."""
    return list(transport.endpoints) if isinstance(transport, ResilientTransport) else []
