"""Metrics scraped before and after known traffic, compared."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import Guardproxy, free_port, wait_until
from tests.support.raw import parse_responses, raw_exchange


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
    # Without a breaker: its open circuit would answer the third request itself (circuit_open).
    gp = start_proxy(f"http://127.0.0.1:{free_port()}", env={"GUARDPROXY_UPSTREAM__CIRCUIT_BREAKER__ENABLED": "false"})
    for _ in range(3):
        assert httpx.get(f"{gp.url}/x").status_code == 502
    samples = scrape(gp)
    assert value(samples, "guardproxy_upstream_errors_total", route="default", kind="unavailable") == 3
    assert samples[("guardproxy_upstream_up", frozenset())] == 0
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
    samples = scrape(gp)
    assert value(samples, "guardproxy_requests_in_flight") == 0
    assert samples[("guardproxy_upstream_up", frozenset())] == 1
    assert samples[("guardproxy_log_lines_dropped_total", frozenset())] == 0


# --- refusals the server protocol answers itself -------------------------------------------------


def refusals(samples: dict) -> dict[str, float]:  # type: ignore[type-arg]
    return {
        dict(labels)["reason"]: count
        for (name, labels), count in samples.items()
        if name == "guardproxy_protocol_refusals_total"
    }


def requests_total(samples: dict) -> float:  # type: ignore[type-arg]
    return sum(count for (name, _), count in samples.items() if name == "guardproxy_requests_total")


def requests_by_outcome(samples: dict) -> dict[str, float]:  # type: ignore[type-arg]
    counts: dict[str, float] = {}
    for (name, labels), count in samples.items():
        if name == "guardproxy_requests_total" and count:
            outcome = dict(labels)["outcome"]
            counts[outcome] = counts.get(outcome, 0) + count
    return counts


def test_protocol_refusals_are_counted_by_reason_and_as_requests(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, env={"GUARDPROXY_SERVER__REQUEST_HEAD_TIMEOUT": "0.5"})
    before = scrape(gp)
    assert refusals(before) == dict.fromkeys(
        ["malformed", "head_timeout", "uri_too_long", "head_too_large", "unsupported_coding", "bad_host"], 0
    )
    oversized = b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    assert parse_responses(raw_exchange(gp.port, oversized))[0].status == 431
    assert parse_responses(raw_exchange(gp.port, oversized))[0].status == 431
    smuggling = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert parse_responses(raw_exchange(gp.port, smuggling))[0].status == 400
    assert parse_responses(raw_exchange(gp.port, b"GET /echo HTTP/1.1\r\nHo st: x\r\n\r\n"))[0].status == 400
    long_uri = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert parse_responses(raw_exchange(gp.port, long_uri))[0].status == 414
    gzip_coding = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
    assert parse_responses(raw_exchange(gp.port, gzip_coding))[0].status == 501
    assert parse_responses(raw_exchange(gp.port, b"GET /echo HTTP/1.1\r\nHo"))[0].status == 408
    two_hosts = b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
    assert parse_responses(raw_exchange(gp.port, two_hosts))[0].status == 400
    assert httpx.get(f"{gp.url}/echo").status_code == 200  # an ordinary request, for contrast
    after = scrape(gp)
    assert refusals(after) == {
        "malformed": 2,
        "head_timeout": 1,
        "uri_too_long": 1,
        "head_too_large": 2,
        "unsupported_coding": 1,
        "bad_host": 1,
    }
    # Each refusal is also one request with its real status and outcome (one error path).
    assert requests_total(after) - requests_total(before) == 9
    assert requests_by_outcome(after) == {
        "ok": 1,
        "malformed": 2,
        "head_timeout": 1,
        "uri_too_long": 1,
        "head_too_large": 2,
        "unsupported_coding": 1,
        "bad_host": 1,
    }


def test_a_client_that_connects_and_leaves_is_no_refusal(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, env={"GUARDPROXY_SERVER__REQUEST_HEAD_TIMEOUT": "0.3"})
    for _ in range(3):
        socket.create_connection(("127.0.0.1", gp.port)).close()
    time.sleep(0.6)
    assert set(refusals(scrape(gp)).values()) == {0}


# --- families every dashboard and alert may rely on ----------------------------------------------


RATELIMIT_FAMILIES = (
    "guardproxy_ratelimit_decisions_total",
    "guardproxy_ratelimit_store_errors_total",
    "guardproxy_ratelimit_fallback_active",
)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_rate_limit_families_are_exposed_before_any_decision(start_proxy, upstream, workers: str) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, "--workers", workers)
    text = httpx.get(f"{gp.admin_url}/metrics").text
    for family in RATELIMIT_FAMILIES:
        assert f"# HELP {family} " in text, family
    samples = scrape(gp)
    assert value(samples, "guardproxy_ratelimit_store_errors_total", kind="timeout") == 0
    assert ("guardproxy_ratelimit_store_errors_total", frozenset({("kind", "timeout")})) in samples
    assert samples[("guardproxy_ratelimit_fallback_active", frozenset())] == 0


# --- several workers: every scrape shows the totals of all of them --------------------------------


OK_GET = {"route": "default", "method": "GET", "status_class": "2xx", "outcome": "ok"}


def workers_of(gp: Guardproxy) -> list[psutil.Process]:
    # (multiprocessing's spawn context also starts a resource tracker child)
    parent = psutil.Process(gp.process.pid)
    return [c for c in parent.children() if "spawn_main" in " ".join(c.cmdline()) and c.is_running()]


def requests_by_worker(directory: Path) -> dict[int, float]:
    """What each worker's own file holds (prometheus-client names them counter_<pid>.db)."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        merged = MultiProcessCollector.merge([str(path)])
        counts[int(path.stem.split("_")[1])] = sum(
            sample.value for metric in merged if metric.name == "guardproxy_requests" for sample in metric.samples
        )
    return counts


def send_concurrently(url: str, count: int, concurrency: int = 16) -> None:
    # New connections each time, so that both workers accept some.
    with ThreadPoolExecutor(concurrency) as pool:
        statuses = list(pool.map(lambda _: httpx.get(url).status_code, range(count)))
    assert statuses == [200] * count


def start_with_workers(start_proxy, upstream, directory: Path) -> Guardproxy:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, "--workers", "2", env={"GUARDPROXY_METRICS__MULTIPROCESS_DIR": str(directory)})
    wait_until(lambda: len(workers_of(gp)) == 2, timeout=15)
    wait_until(lambda: value(scrape(gp), "guardproxy_workers") == 2, timeout=15)
    return gp


def test_every_scrape_shows_the_total_of_every_worker(start_proxy, upstream, tmp_path) -> None:  # type: ignore[no-untyped-def]
    gp = start_with_workers(start_proxy, upstream, tmp_path)
    sent = 0
    # Until both workers have answered some of the traffic (the kernel decides who accepts).
    while sent < 600 and (len(requests_by_worker(tmp_path)) < 2 or 0 in requests_by_worker(tmp_path).values()):
        send_concurrently(f"{gp.url}/echo", 60)
        sent += 60
        time.sleep(1.2)  # one flush interval: every worker's file is up to date
    per_worker = requests_by_worker(tmp_path)
    assert len(per_worker) == 2
    assert all(count > 0 for count in per_worker.values()), per_worker
    wait_until(lambda: value(scrape(gp), "guardproxy_requests_total", **OK_GET) == sent, timeout=5)
    for _ in range(10):  # fresh connections: answered by either worker
        samples = scrape(gp)
        assert value(samples, "guardproxy_requests_total", **OK_GET) == sent
        assert value(samples, "guardproxy_request_duration_seconds_count", route="default") == sent
        assert value(samples, "guardproxy_workers") == 2
        assert value(samples, "process_cpu_seconds_total") > 0
    assert sum(requests_by_worker(tmp_path).values()) == sent


def test_in_flight_is_summed_over_workers_and_a_killed_worker_stops_counting(  # type: ignore[no-untyped-def]
    start_proxy, upstream, tmp_path
) -> None:
    gp = start_with_workers(start_proxy, upstream, tmp_path)
    send_concurrently(f"{gp.url}/echo", 40)
    wait_until(lambda: value(scrape(gp), "guardproxy_requests_total", **OK_GET) == 40, timeout=5)
    cpu_before = value(scrape(gp), "process_cpu_seconds_total")

    def slow_request() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the victim's requests are cut
            httpx.get(f"{gp.url}/slow?delay=4", timeout=10)

    slow = [threading.Thread(target=slow_request) for _ in range(8)]
    for thread in slow:
        thread.start()
    wait_until(lambda: value(scrape(gp), "guardproxy_requests_in_flight") == 8, timeout=5)
    # The victim is a worker holding some of those requests, and it has already published them.
    wait_until(lambda: len(requests_by_worker(tmp_path)) == 2, timeout=5)
    victim = workers_of(gp)[0]
    victim.kill()
    victim.wait(5)
    wait_until(lambda: len(workers_of(gp)) == 2 and victim not in workers_of(gp), timeout=15)
    for thread in slow:
        thread.join()
    # The dead worker's live gauges are gone: nothing stays "in flight" forever, and the
    # restarted worker does not make three.
    wait_until(lambda: value(scrape(gp), "guardproxy_requests_in_flight") == 0, timeout=5)
    for _ in range(5):
        samples = scrape(gp)
        assert value(samples, "guardproxy_workers") == 2
        assert value(samples, "guardproxy_requests_in_flight") == 0
        # What the dead worker counted stays counted, once: not lost, not doubled.
        assert value(samples, "guardproxy_requests_total", **OK_GET) >= 40
        assert value(samples, "guardproxy_requests_total", **OK_GET) <= 40 + 8
        assert value(samples, "process_cpu_seconds_total") >= cpu_before


def test_the_previous_runs_files_are_cleared_at_start(start_proxy, upstream, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "README").write_text("an operator's file stays")
    first = start_with_workers(start_proxy, upstream, tmp_path)
    send_concurrently(f"{first.url}/echo", 30)
    wait_until(lambda: value(scrape(first), "guardproxy_requests_total", **OK_GET) == 30, timeout=5)
    old_pids = {process.pid for process in workers_of(first)}
    # A crash, not a clean stop: every process dies at once and leaves its files behind.
    for process in [*workers_of(first), psutil.Process(first.process.pid)]:
        process.kill()
    first.process.wait(10)
    assert {int(path.stem.rsplit("_", 1)[1]) for path in tmp_path.glob("*.db")} >= old_pids
    second = start_with_workers(start_proxy, upstream, tmp_path)
    assert value(scrape(second), "guardproxy_requests_total", **OK_GET) == 0
    httpx.get(f"{second.url}/echo")
    wait_until(lambda: value(scrape(second), "guardproxy_requests_total", **OK_GET) == 1, timeout=5)
    assert not any(int(path.stem.rsplit("_", 1)[1]) in old_pids for path in tmp_path.glob("*.db"))
    assert (tmp_path / "README").read_text() == "an operator's file stays"


def test_a_private_directory_is_made_and_removed_when_none_is_configured(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, "--workers", "2")
    wait_until(lambda: len(workers_of(gp)) == 2, timeout=15)
    environments = {worker.environ().get("PROMETHEUS_MULTIPROC_DIR") for worker in workers_of(gp)}
    assert len(environments) == 1
    (directory,) = environments
    assert directory is not None
    assert Path(directory).is_dir()
    assert gp.stop() == 0
    assert not Path(directory).exists()


def test_an_unusable_directory_stops_the_start_with_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "guardproxy", "run", "--upstream", "http://127.0.0.1:1", "--workers", "2"),
            *("--listen", f"127.0.0.1:{free_port()}", "--admin-listen", f"127.0.0.1:{free_port()}"),
        ],
        env={**os.environ, "GUARDPROXY_METRICS__MULTIPROCESS_DIR": str(blocker / "metrics")},
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"guardproxy: metrics.multiprocess_dir: cannot use {blocker / 'metrics'}: Not a directory"
    ]
