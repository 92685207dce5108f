"""Upstream resilience metrics (observability/upstream.py): attempts, retries and budget
exhaustion reach prometheus-client at a flush, and each endpoint's state gauge is one-hot."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from guardproxy.observability.metrics import ProxyMetrics
from guardproxy.observability.upstream import UpstreamMetrics
from guardproxy.proxy.breaker import CircuitBreaker
from guardproxy.proxy.endpoints import Endpoint, EndpointTarget
from tests.support.mock_transport import MockTransport


def samples(metrics: ProxyMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = metrics.render().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def setup() -> tuple[ProxyMetrics, UpstreamMetrics, list[Endpoint]]:
    metrics = ProxyMetrics(CollectorRegistry())
    observer = UpstreamMetrics(metrics.sources())
    endpoints = [
        Endpoint(
            EndpointTarget(name, "http://127.0.0.1:1"),
            MockTransport(),
            CircuitBreaker(consecutive_failures=1, open_for=60.0),
        )
        for name in ("a", "b")
    ]
    observer.watch(lambda: endpoints)
    return metrics, observer, endpoints


def test_attempts_retries_and_exhaustion_are_counted_once_per_flush() -> None:
    metrics, observer, _ = setup()
    observer.attempt("a", "connect")
    observer.retry("connect")
    observer.attempt("b", "ok")
    observer.budget_exhausted()
    first = samples(metrics)
    assert first[("guardproxy_upstream_attempts_total", frozenset({("endpoint", "a"), ("outcome", "connect")}))] == 1
    assert first[("guardproxy_upstream_attempts_total", frozenset({("endpoint", "b"), ("outcome", "ok")}))] == 1
    assert first[("guardproxy_upstream_retries_total", frozenset({("reason", "connect")}))] == 1
    assert first[("guardproxy_upstream_retry_budget_exhausted_total", frozenset())] == 1
    assert samples(metrics) == first  # a second scrape adds nothing


def test_series_exist_before_the_first_event() -> None:
    metrics, _, _ = setup()
    found = samples(metrics)
    assert found[("guardproxy_upstream_retries_total", frozenset({("reason", "timeout")}))] == 0
    assert found[("guardproxy_upstream_attempts_total", frozenset({("endpoint", "a"), ("outcome", "ok")}))] == 0


def test_the_state_gauge_is_one_hot_and_follows_the_breaker_and_health() -> None:
    metrics, _, endpoints = setup()
    endpoints[0].failed()  # opens
    endpoints[1].healthy = False

    def states(name: str) -> dict[str, float]:
        return {
            dict(labels)["state"]: value
            for (metric, labels), value in samples(metrics).items()
            if metric == "guardproxy_upstream_endpoint_state" and dict(labels)["endpoint"] == name
        }

    assert states("a") == {"healthy": 0, "unhealthy": 0, "held": 0, "open": 1, "half_open": 0}
    assert states("b") == {"healthy": 0, "unhealthy": 1, "held": 0, "open": 0, "half_open": 0}
    endpoints[1].healthy = True
    assert states("b")["healthy"] == 1
    assert sum(states("b").values()) == 1
