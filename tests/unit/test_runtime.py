"""The runtime's lifecycle (runtime.py): built from settings, started, swapped for a second one
while the first still serves, and closed without leaking connections, tasks, timers or counts.
The upstream is a real HTTP server on a loopback port, in this event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from guardproxy.config import Settings
from guardproxy.observability.metrics import ProxyMetrics
from guardproxy.runtime import CurrentRuntime, Runtime
from guardproxy.server.limits import Lifecycle
from tests.support.factories import call, make_scope
from tests.support.tls import write_certificate


def other_tasks() -> set[asyncio.Task[object]]:
    return {task for task in asyncio.all_tasks() if task is not asyncio.current_task() and not task.done()}


async def settle() -> None:
    """A few loop turns, for the test upstream to see its connections closed."""
    for _ in range(20):
        await asyncio.sleep(0.005)


def live_timers() -> int:
    scheduled: list[asyncio.TimerHandle] = asyncio.get_running_loop()._scheduled  # type: ignore[attr-defined]
    return sum(1 for handle in scheduled if not handle.cancelled())


def requests_counted(metrics: ProxyMetrics) -> float:
    metrics.flush()
    return sum(
        sample.value
        for family in metrics.requests.collect()
        for sample in family.samples
        if sample.name == "guardproxy_requests_total"
    )


async def test_a_second_runtime_takes_over_and_the_first_closes_without_leaks(upstream_url: str) -> None:
    metrics = ProxyMetrics(CollectorRegistry())
    lifecycle = Lifecycle()
    tasks_before, timers_before = other_tasks(), live_timers()

    first = Runtime(Settings(upstream={"url": upstream_url}), lifecycle=lifecycle, metrics=metrics)
    await first.start()
    current = CurrentRuntime(first)
    reply = await call(current.proxy_site().app, make_scope())
    assert reply.status == 200
    assert first.pool.open_connections == 1  # kept alive for the next request
    assert current.readiness().ready

    second = Runtime(
        Settings(upstream={"url": upstream_url}, security_headers={"enabled": False}),
        lifecycle=lifecycle,
        metrics=metrics,
    )
    await second.start()
    assert current.swap(second) is first
    reply = await call(current.proxy_site().app, make_scope())
    assert reply.status == 200
    assert reply.header(b"content-security-policy") is None

    await first.aclose()
    assert first.pool.open_connections == 0
    assert first.metric_sources is not None
    assert first.metric_sources not in metrics._sources
    assert requests_counted(metrics) == 2  # the closed runtime's count was handed over, not lost

    await second.aclose()
    await settle()
    assert other_tasks() == tasks_before
    assert live_timers() <= timers_before


async def test_a_hundred_swaps_leave_nothing_behind(upstream_url: str) -> None:
    metrics = ProxyMetrics(CollectorRegistry())
    lifecycle = Lifecycle()
    tasks_before = other_tasks()
    current = CurrentRuntime(Runtime(Settings(upstream={"url": upstream_url}), lifecycle=lifecycle, metrics=metrics))
    await current.runtime.start()
    for _ in range(100):
        fresh = Runtime(Settings(upstream={"url": upstream_url}), lifecycle=lifecycle, metrics=metrics)
        await fresh.start()
        assert (await call(current.proxy_site().app, make_scope())).status == 200
        await current.swap(fresh).aclose()
    await current.runtime.aclose()
    await settle()
    assert other_tasks() == tasks_before
    assert metrics._sources == []
    assert requests_counted(metrics) == 100


async def test_a_runtime_whose_upstream_is_down_still_starts_and_reports_not_ready() -> None:
    runtime = Runtime(Settings(upstream={"url": "http://127.0.0.1:9"}), lifecycle=Lifecycle(), metrics=None)
    await runtime.start()
    try:
        assert not runtime.readiness.ready
        reply = await call(runtime.proxy.app, make_scope())
        assert reply.status == 502
    finally:
        await runtime.aclose()


async def test_a_redirect_site_exists_only_with_a_redirect_listener(upstream_url: str, tmp_path: Path) -> None:
    plain = Runtime(Settings(upstream={"url": upstream_url}), lifecycle=Lifecycle(), metrics=None)
    assert plain.redirect is None
    with pytest.raises(AssertionError, match="redirect_listen"):
        CurrentRuntime(plain).redirect_site()
    _, cert, key = write_certificate(tmp_path, "api.example.com")
    settings = Settings(
        upstream={"url": upstream_url},
        server={"redirect_listen": "127.0.0.1:8081", "tls_cert": cert, "tls_key": key},
        hosts={"canonical": "api.example.com"},
    )
    redirecting = Runtime(settings, lifecycle=Lifecycle(), metrics=None)
    await redirecting.start()
    try:
        reply = await call(CurrentRuntime(redirecting).redirect_site().app, make_scope(path="/login", query=b"next=1"))
        assert reply.status == 308
        assert reply.header(b"location") == b"https://api.example.com/login?next=1"
    finally:
        await redirecting.aclose()


async def test_guards_readiness_checks_are_reported_on_readyz(upstream_url: str) -> None:
    settings = Settings(
        upstream={"url": upstream_url},
        routes=[{"name": "orders", "path": "/orders/**", "idempotency": {"enabled": True}}],
    )
    runtime = Runtime(settings, lifecycle=Lifecycle(), metrics=None)
    await runtime.start()
    try:
        checks = runtime.readiness.report()["checks"]
        assert isinstance(checks, dict)
        assert checks["idempotency_store"]["ok"] is True
        assert runtime.readiness.ready  # informational: it never makes the proxy unready
    finally:
        await runtime.aclose()
