"""Metrics in one process (observability/metrics.py, tally.py, guards/metrics.py): what the hot
path counts reaches prometheus-client exactly once, histograms included, and a runtime's sources
leave nothing behind when it is closed."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from guardproxy.context import RequestContext
from guardproxy.guards.metrics import MetricsGuard
from guardproxy.observability.metrics import ProxyMetrics
from guardproxy.observability.tally import DURATION_BUCKETS, bucket
from guardproxy.outcomes import PROTOCOL_OUTCOMES, Outcome
from guardproxy.routes import RoutePolicy

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def route(name: str = "default") -> RoutePolicy:
    return RoutePolicy(name=name, connect_timeout=5, read_timeout=60, total_timeout=None, max_body_bytes=1024)


def complete(
    guard: MetricsGuard,
    *,
    method: str = "GET",
    status: int = 200,
    outcome: Outcome = Outcome.OK,
    route_name: str = "default",
    seconds: float = 0.003,
    upstream: float = 0.002,
    request_bytes: int = 0,
    response_bytes: int = 10,
) -> None:
    context = RequestContext(route=route(route_name), client_host="127.0.0.1")
    context.started_at = time.perf_counter() - seconds
    context.status = status
    context.outcome = outcome
    context.upstream_seconds = upstream
    context.request_bytes = request_bytes
    context.response_bytes = response_bytes
    guard.on_complete({"method": method}, context)


def samples(metrics: ProxyMetrics) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
    }


def families(metrics: ProxyMetrics) -> dict[str, str]:
    return {family.name: family.type for family in text_string_to_metric_families(metrics.render().decode())}


@pytest.fixture
def metrics() -> ProxyMetrics:
    return ProxyMetrics(CollectorRegistry())


def test_requests_are_counted_by_route_method_class_and_outcome(metrics: ProxyMetrics) -> None:
    guard = MetricsGuard(sources=metrics.sources())
    for _ in range(3):
        complete(guard)
    complete(guard, method="PROPFIND")  # outside the fixed method set
    complete(guard, status=0, outcome=Outcome.CLIENT_CLOSED)  # no response ever started
    complete(guard, method="POST", status=429, outcome=Outcome.RATE_LIMITED, route_name="login")
    found = samples(metrics)
    labels = {"route": "default", "method": "GET", "status_class": "2xx", "outcome": "ok"}
    assert found[("guardproxy_requests_total", frozenset(labels.items()))] == 3
    other = {**labels, "method": "other"}
    assert found[("guardproxy_requests_total", frozenset(other.items()))] == 1
    gone = {**labels, "status_class": "5xx", "outcome": "client_closed"}
    assert found[("guardproxy_requests_total", frozenset(gone.items()))] == 1
    limited = {"route": "login", "method": "POST", "status_class": "4xx", "outcome": "rate_limited"}
    assert found[("guardproxy_requests_total", frozenset(limited.items()))] == 1
    assert sum(value for (name, _), value in found.items() if name == "guardproxy_requests_total") == 6


def test_each_request_reaches_prometheus_exactly_once(metrics: ProxyMetrics) -> None:
    guard = MetricsGuard(sources=metrics.sources())
    complete(guard, request_bytes=100, response_bytes=7)
    first = samples(metrics)
    metrics.flush()
    metrics.flush()
    again = samples(metrics)
    route_label = frozenset({("route", "default")})
    for name in (
        "guardproxy_request_duration_seconds_count",
        "guardproxy_upstream_duration_seconds_count",
    ):
        assert first[(name, route_label)] == again[(name, route_label)] == 1
    assert again[("guardproxy_request_body_bytes_total", route_label)] == 100
    assert again[("guardproxy_response_body_bytes_total", route_label)] == 7
    complete(guard)
    assert samples(metrics)[("guardproxy_request_duration_seconds_count", route_label)] == 2


@pytest.mark.parametrize(
    "values",
    [
        [0.0005, 0.001, 0.0011, 0.003, 0.003, 0.2, 59.9, 60.0, 61.0, 3600.0],
        [bound for bound in DURATION_BUCKETS],  # exactly on every bound: `le` includes it
    ],
)
def test_flushed_histograms_equal_observed_ones(values: list[float]) -> None:
    """The bulk path (counts per bucket, then flush) against prometheus-client's own observe()."""
    metrics = ProxyMetrics(CollectorRegistry())
    guard = MetricsGuard(sources=metrics.sources())
    reference_registry = CollectorRegistry()
    reference = Histogram(
        "guardproxy_upstream_duration_seconds",
        "reference",
        ["route"],
        buckets=DURATION_BUCKETS,
        registry=reference_registry,
    )
    for value in values:
        complete(guard, upstream=value)
        reference.labels("default").observe(value)
    ours = {k: v for k, v in samples(metrics).items() if k[0].startswith("guardproxy_upstream_duration_seconds_")}
    expected = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in reference_registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }
    ours = {k: v for k, v in ours.items() if not k[0].endswith("_created")}
    sums = [k for k in expected if k[0].endswith("_sum")]
    for key in sums:
        assert ours.pop(key) == pytest.approx(expected.pop(key))
    assert ours == expected


def test_a_value_goes_to_the_first_bucket_whose_bound_it_does_not_exceed() -> None:
    # Prometheus' `le`: a value on a bound belongs to it; past the last bound is +Inf.
    for index, bound in enumerate(DURATION_BUCKETS):
        assert bucket(bound) == index
        assert bucket(bound * 1.0001) == index + 1
    assert bucket(0.0) == 0
    assert bucket(float("inf")) == len(DURATION_BUCKETS)


def test_requests_without_an_upstream_answer_add_no_upstream_observation(metrics: ProxyMetrics) -> None:
    guard = MetricsGuard(sources=metrics.sources())
    complete(guard, status=403, outcome=Outcome.CORS_REFUSED, upstream=0.0)
    found = samples(metrics)
    route_label = frozenset({("route", "default")})
    assert found[("guardproxy_request_duration_seconds_count", route_label)] == 1
    assert ("guardproxy_upstream_duration_seconds_count", route_label) not in found


def test_upstream_failures_are_counted_by_kind(metrics: ProxyMetrics) -> None:
    guard = MetricsGuard(sources=metrics.sources())
    complete(guard, status=502, outcome=Outcome.UPSTREAM_ERROR, upstream=0.0)
    complete(guard, status=504, outcome=Outcome.UPSTREAM_TIMEOUT, upstream=0.0)
    complete(guard, status=504, outcome=Outcome.UPSTREAM_TIMEOUT, upstream=0.0)
    complete(guard, status=503, outcome=Outcome.UPSTREAM_BUSY, upstream=0.0)
    complete(guard, status=503, outcome=Outcome.SHED, upstream=0.0)  # guardproxy's own overload: not upstream's
    found = samples(metrics)
    errors = {
        dict(labels)["kind"]: value
        for (name, labels), value in found.items()
        if name == "guardproxy_upstream_errors_total"
    }
    assert errors == {"unavailable": 1, "timeout": 2, "pool_exhausted": 1}


def test_gauges_and_dropped_lines_are_read_at_every_scrape(metrics: ProxyMetrics) -> None:
    state = {"in_flight": 3, "dropped": 0}
    metrics.sources().watch_in_flight(lambda: state["in_flight"])
    metrics.watch_log_lines_dropped(lambda: state["dropped"])
    found = samples(metrics)
    assert found[("guardproxy_requests_in_flight", frozenset())] == 3
    assert found[("guardproxy_log_lines_dropped_total", frozenset())] == 0
    state.update(in_flight=0, dropped=5)
    samples(metrics)
    state["dropped"] = 7
    found = samples(metrics)
    assert found[("guardproxy_requests_in_flight", frozenset())] == 0
    assert found[("guardproxy_log_lines_dropped_total", frozenset())] == 7  # not 5 + 7


def test_upstream_up_follows_the_readiness_probe(metrics: ProxyMetrics) -> None:
    probe = {"ok": False}
    metrics.sources().watch_upstream(lambda: probe["ok"])
    assert samples(metrics)[("guardproxy_upstream_up", frozenset())] == 0
    probe["ok"] = True
    assert samples(metrics)[("guardproxy_upstream_up", frozenset())] == 1


def test_protocol_refusals_by_reason_start_at_zero_and_are_counted_as_requests_too(metrics: ProxyMetrics) -> None:
    def refusals() -> dict[str, float]:
        return {
            dict(labels)["reason"]: value
            for (name, labels), value in samples(metrics).items()
            if name == "guardproxy_protocol_refusals_total"
        }

    assert refusals() == dict.fromkeys(PROTOCOL_OUTCOMES, 0)
    guard = MetricsGuard(sources=metrics.sources())
    complete(guard, status=431, outcome=Outcome.HEAD_TOO_LARGE, upstream=0.0)
    complete(guard, status=431, outcome=Outcome.HEAD_TOO_LARGE, upstream=0.0)
    complete(guard, method="-", status=400, outcome=Outcome.MALFORMED, upstream=0.0)
    complete(guard, status=413, outcome=Outcome.TOO_LARGE, upstream=0.0)  # a guard's refusal, not the server's
    found = refusals()
    expected: dict[str, float] = {**dict.fromkeys(PROTOCOL_OUTCOMES, 0), "head_too_large": 2, "malformed": 1}
    assert found == expected
    requests = {
        dict(labels)["outcome"]: value
        for (name, labels), value in samples(metrics).items()
        if name == "guardproxy_requests_total"
    }
    assert requests == {"head_too_large": 2, "malformed": 1, "too_large": 1}


def test_closed_sources_hand_over_their_last_counts_and_are_then_forgotten(metrics: ProxyMetrics) -> None:
    old = metrics.sources()
    old.watch_in_flight(lambda: 4)
    old.watch_upstream(lambda: False)
    guard = MetricsGuard(sources=old)
    complete(guard)
    complete(guard)
    new = metrics.sources()
    new.watch_in_flight(lambda: 1)
    new.watch_upstream(lambda: True)
    found = samples(metrics)
    assert found[("guardproxy_requests_in_flight", frozenset())] == 5  # both runtimes serve during a swap
    assert found[("guardproxy_upstream_up", frozenset())] == 1  # the newest runtime's probe
    complete(guard)  # a request that finished on the old runtime after the last scrape
    old.close()
    labels = frozenset({"route": "default", "method": "GET", "status_class": "2xx", "outcome": "ok"}.items())
    found = samples(metrics)
    assert found[("guardproxy_requests_total", labels)] == 3
    assert found[("guardproxy_requests_in_flight", frozenset())] == 1
    complete(guard)  # counted into a tally nobody takes any more: the old runtime is gone
    assert samples(metrics)[("guardproxy_requests_total", labels)] == 3


def test_a_second_close_of_the_same_sources_is_refused(metrics: ProxyMetrics) -> None:
    sources = metrics.sources()
    sources.close()
    with pytest.raises(ValueError, match=r"not in list"):
        sources.close()


def test_rate_limit_families_are_exposed_before_any_decision(metrics: ProxyMetrics) -> None:
    found = families(metrics)
    assert found["guardproxy_ratelimit_decisions"] == "counter"
    assert found["guardproxy_ratelimit_store_errors"] == "counter"
    assert found["guardproxy_ratelimit_fallback_active"] == "gauge"
    text = metrics.render().decode()
    assert "# HELP guardproxy_ratelimit_decisions_total " in text
    for kind in ("timeout", "connection", "script", "other"):
        assert f'guardproxy_ratelimit_store_errors_total{{kind="{kind}"}} 0.0' in text
    assert "guardproxy_ratelimit_fallback_active 0.0" in text


def test_rate_limit_interface_as_the_limiter_uses_it(metrics: ProxyMetrics) -> None:
    metrics.declare_ratelimit_rules(["login"])
    text = metrics.render().decode()
    for decision in ("allowed", "limited", "dry_run_limited"):
        assert f'guardproxy_ratelimit_decisions_total{{decision="{decision}",rule="login"}} 0.0' in text
    metrics.ratelimit_decisions.labels("login", "limited").inc()
    metrics.ratelimit_store_errors.labels("timeout").inc()
    metrics.ratelimit_fallback_active.set(1)
    found = samples(metrics)
    assert found[("guardproxy_ratelimit_decisions_total", frozenset({("rule", "login"), ("decision", "limited")}))] == 1
    assert found[("guardproxy_ratelimit_store_errors_total", frozenset({("kind", "timeout")}))] == 1
    assert found[("guardproxy_ratelimit_fallback_active", frozenset())] == 1


def test_many_routes_and_methods_stay_within_fixed_label_sets(metrics: ProxyMetrics) -> None:
    guard = MetricsGuard(sources=metrics.sources())
    for index in range(200):
        complete(guard, method=f"X{index}")
    series = [key for key in samples(metrics) if key[0] == "guardproxy_requests_total"]
    assert len(series) == 1
