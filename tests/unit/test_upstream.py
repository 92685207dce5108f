"""upstream.py: which transport a configuration gets (the plain pool when nothing needs more)
and each route's retry policy, merged once."""

from __future__ import annotations

from guardproxy.config import Settings
from guardproxy.proxy.pool import ConnectionPool
from guardproxy.proxy.resilient import ResilientTransport
from guardproxy.upstream import build_transport, retry_policies, upstream_pools

PLAIN = {"retries": {"attempts": 0}, "circuit_breaker": {"enabled": False}}


def settings(upstream: dict[str, object], routes: list[dict[str, object]] | None = None) -> Settings:
    return Settings(upstream={"url": "http://127.0.0.1:9", **upstream}, routes=routes or [])  # type: ignore[arg-type]


def test_one_url_without_retries_or_breaker_is_the_plain_pool() -> None:
    transport = build_transport(settings(PLAIN))
    assert isinstance(transport, ConnectionPool)
    assert upstream_pools(transport) == [transport]


def test_the_defaults_retry_and_break_over_one_endpoint() -> None:
    transport = build_transport(settings({}))
    assert isinstance(transport, ResilientTransport)
    assert [endpoint.name for endpoint in transport.endpoints] == ["127.0.0.1:9"]
    assert transport.endpoints[0].breaker is not None


def test_several_endpoints_need_the_resilient_transport_even_without_retries() -> None:
    transport = build_transport(
        Settings(upstream={"endpoints": ["http://127.0.0.1:9", {"url": "http://127.0.0.1:10", "name": "b"}], **PLAIN})  # type: ignore[arg-type]
    )
    assert isinstance(transport, ResilientTransport)
    assert [endpoint.name for endpoint in transport.endpoints] == ["127.0.0.1:9", "b"]
    assert [pool.origin.port for pool in upstream_pools(transport)] == [9, 10]
    assert all(endpoint.breaker is None for endpoint in transport.endpoints)


def test_a_route_overrides_only_what_it_sets() -> None:
    routes: list[dict[str, object]] = [
        {"name": "reports", "path": "/reports/**", "upstream": {"total_timeout": 30, "retries": {"attempts": 0}}},
        {"name": "put", "path": "/p", "upstream": {"retries": {"idempotent_methods": ["GET"], "backoff_cap": 1}}},
    ]
    policies = retry_policies(settings({"retries": {"attempts": 3, "backoff_base": 0.1}}, routes))
    assert (policies["reports"].attempts, policies["reports"].total_timeout) == (0, 30)
    assert policies["reports"].backoff_base == 0.1
    assert policies["put"].idempotent == frozenset({b"GET"})
    assert (policies["put"].attempts, policies["put"].backoff_cap) == (3, 1)
    assert policies["default"].idempotent == frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
