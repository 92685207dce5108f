"""Metrics scraped before and after known traffic, compared."""

from __future__ import annotations

import threading
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import Guardproxy, free_port


def scrape(gp: Guardproxy) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"{gp.admin_url}/metrics").text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_latency_bytes_and_counts_follow_the_traffic(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url)
    before = scrape(gp)
    for _ in range(5):
        httpx.post(f"{gp.url}/echo", content=b"x" * 1000, headers={"Accept-Encoding": "identity"})
    after = scrape(gp)
    route = {"route": "default"}
    assert (
        value(after, "guardproxy_request_duration_seconds_count", **route)
        - value(before, "guardproxy_request_duration_seconds_count", **route)
        == 5
    )
    assert (
        value(after, "guardproxy_upstream_duration_seconds_count", **route)
        - value(before, "guardproxy_upstream_duration_seconds_count", **route)
        == 5
    )
    assert (
        value(after, "guardproxy_request_body_bytes_total", **route)
        - value(before, "guardproxy_request_body_bytes_total", **route)
        == 5000
    )
    assert value(after, "guardproxy_response_body_bytes_total", **route) > value(
        before, "guardproxy_response_body_bytes_total", **route
    )
    ok = {"route": "default", "method": "POST", "status_class": "2xx", "outcome": "ok"}
    assert value(after, "guardproxy_requests_total", **ok) - value(before, "guardproxy_requests_total", **ok) == 5


def test_upstream_failures_are_counted_by_kind(start_proxy) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(f"http://127.0.0.1:{free_port()}")
    for _ in range(3):
        assert httpx.get(f"{gp.url}/x").status_code == 502
    samples = scrape(gp)
    assert value(samples, "guardproxy_upstream_errors_total", route="default", kind="unavailable") == 3
    refused = {"route": "default", "method": "GET", "status_class": "5xx", "outcome": "upstream_error"}
    assert value(samples, "guardproxy_requests_total", **refused) == 3


def test_in_flight_gauge_counts_requests_being_answered(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url)
    threads = [threading.Thread(target=httpx.get, args=(f"{gp.url}/slow?delay=1",)) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.4)
    assert value(scrape(gp), "guardproxy_requests_in_flight") == 3
    for thread in threads:
        thread.join()
    assert value(scrape(gp), "guardproxy_requests_in_flight") == 0
    assert value(scrape(gp), "guardproxy_log_lines_dropped") == 0
