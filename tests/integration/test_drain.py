"""Graceful drain on SIGTERM/SIGINT: readiness first, then the listener, in-flight requests last."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest

from tests.support.processes import port_open, wait_until


def slow_request_in_background(url: str) -> dict[str, object]:
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["response"] = httpx.get(url, timeout=20)
        except httpx.HTTPError as exc:
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    result["thread"] = thread
    return result


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_drains_in_order(start_proxy, upstream, workers: str) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, "--workers", workers, env={"GUARDPROXY_SERVER__DRAIN_DELAY": "2"}, wait_ready=True)
    in_flight = slow_request_in_background(f"{gp.url}/slow?delay=2.5")
    time.sleep(0.3)
    signalled = time.monotonic()
    gp.process.send_signal(signal.SIGTERM)

    # Readiness flips at once...
    wait_until(lambda: httpx.get(f"{gp.admin_url}/readyz").status_code == 503, timeout=1)
    report = httpx.get(f"{gp.admin_url}/readyz").json()
    assert report["draining"] is True
    # ...while the listener still serves, telling clients to go elsewhere next time.
    response = httpx.get(f"{gp.url}/echo")
    assert response.status_code == 200
    assert response.headers["connection"] == "close"
    # After the delay it stops accepting.
    wait_until(lambda: not port_open(gp.port), timeout=5)
    assert time.monotonic() - signalled >= 1.8
    # The request that was in flight all along still completes, and the process exits cleanly.
    in_flight["thread"].join(10)  # type: ignore[attr-defined]
    assert in_flight["response"].status_code == 200  # type: ignore[attr-defined]
    assert gp.process.wait(15) == 0
    assert "Traceback" not in gp.log_text()


def test_second_signal_skips_the_drain_delay(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, env={"GUARDPROXY_SERVER__DRAIN_DELAY": "30"})
    gp.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert port_open(gp.port)
    started = time.monotonic()
    gp.process.send_signal(signal.SIGTERM)
    assert gp.process.wait(10) == 0
    assert time.monotonic() - started < 5


def test_requests_past_the_shutdown_timeout_are_cut(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, env={"GUARDPROXY_SERVER__SHUTDOWN_TIMEOUT": "1"})
    in_flight = slow_request_in_background(f"{gp.url}/slow?delay=10")
    time.sleep(0.3)
    started = time.monotonic()
    gp.process.send_signal(signal.SIGTERM)
    assert gp.process.wait(10) == 0
    assert time.monotonic() - started < 5
    in_flight["thread"].join(10)  # type: ignore[attr-defined]
    assert "error" in in_flight, "a cut request must not look like a complete response"
