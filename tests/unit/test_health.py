"""Readiness over several endpoints (health.py): thresholds decide when an endpoint leaves and
rejoins the balancing, readiness holds while any endpoint is healthy, and /readyz lists them."""

from __future__ import annotations

import socket

from guardproxy.config import HealthCheckSettings, UpstreamSettings
from guardproxy.health import EndpointHealth, Readiness
from guardproxy.proxy.breaker import CircuitBreaker
from guardproxy.proxy.endpoints import Endpoint, EndpointTarget
from guardproxy.server.limits import Lifecycle
from tests.support.mock_transport import MockTransport
from tests.support.processes import free_port


def health(unhealthy_after: int = 2, healthy_after: int = 3) -> tuple[EndpointHealth, Endpoint]:
    endpoint = Endpoint(EndpointTarget("a", "http://127.0.0.1:1"), MockTransport(), None)
    settings = HealthCheckSettings(unhealthy_after=unhealthy_after, healthy_after=healthy_after)
    return EndpointHealth(endpoint_target(endpoint), settings, endpoint), endpoint


def endpoint_target(endpoint: Endpoint) -> EndpointTarget:
    return EndpointTarget(endpoint.name, endpoint.url)


def test_the_first_probe_decides_at_once() -> None:
    checked, endpoint = health()
    checked.record(False, "refused")
    assert checked.healthy is False
    assert endpoint.healthy is False


def test_one_failed_probe_is_not_enough_to_take_an_endpoint_out() -> None:
    checked, endpoint = health(unhealthy_after=2)
    checked.record(True, "ok")
    checked.record(False, "timed out")
    assert endpoint.healthy
    checked.record(True, "ok")  # the streak is broken
    checked.record(False, "timed out")
    assert endpoint.healthy
    checked.record(False, "timed out")
    assert not endpoint.healthy


def test_it_takes_healthy_after_passes_in_a_row_to_come_back() -> None:
    checked, endpoint = health(healthy_after=3)
    checked.record(False, "refused")
    for _ in range(2):
        checked.record(True, "ok")
    assert not endpoint.healthy
    checked.record(False, "refused")
    for _ in range(2):
        checked.record(True, "ok")
    assert not endpoint.healthy
    checked.record(True, "ok")
    assert endpoint.healthy
    assert checked.as_json() == {"name": "a", "ok": True, "state": "healthy", "detail": "ok"}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def with_open_circuit(healthy_after: int = 1) -> tuple[EndpointHealth, Endpoint, Clock, list[tuple[str, str]]]:
    """An endpoint whose breaker (open_for 30 s, fake clock) the requests have just opened."""
    clock = Clock()
    moves: list[tuple[str, str]] = []
    breaker = CircuitBreaker(
        consecutive_failures=1,
        open_for=30.0,
        half_open_probes=1,
        clock=clock,
        on_transition=lambda before, after: moves.append((str(before), str(after))),
    )
    checked, endpoint = health(unhealthy_after=1, healthy_after=healthy_after)
    endpoint.breaker = breaker
    checked.record(False, "refused")
    endpoint.failed()
    return checked, endpoint, clock, moves


def test_a_passing_check_lets_an_open_circuit_probe_at_once() -> None:
    checked, endpoint, clock, moves = with_open_circuit()
    clock.now += 2.0
    checked.record(True, "connection accepted")
    assert endpoint.state(clock.now) == "half_open"
    assert endpoint.take()  # the next request is the probe ...
    endpoint.succeeded()
    assert endpoint.state(clock.now) == "healthy"  # ... and its success closes the circuit
    assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_a_failing_check_neither_shortens_nor_extends_an_open_circuit() -> None:
    checked, endpoint, clock, moves = with_open_circuit()
    clock.now += 2.0
    for _ in range(3):
        checked.record(False, "refused")
    assert endpoint.state(clock.now) == "open"
    assert endpoint.breaker is not None
    assert endpoint.breaker.retry_in() == 28.0
    assert not endpoint.take()
    clock.now += 28.0
    assert endpoint.take()  # open_for counted from the failed request, as before
    assert moves == [("closed", "open"), ("open", "half_open")]


def test_a_pass_short_of_healthy_after_leaves_the_circuit_open() -> None:
    checked, endpoint, clock, moves = with_open_circuit(healthy_after=2)
    checked.record(True, "connection accepted")
    assert endpoint.state(clock.now) == "open"
    assert not endpoint.take()
    checked.record(True, "connection accepted")  # healthy again: now it probes
    assert endpoint.state(clock.now) == "half_open"
    assert moves == [("closed", "open"), ("open", "half_open")]


def test_passing_checks_leave_a_closed_circuit_and_a_probing_one_alone() -> None:
    checked, endpoint, clock, moves = with_open_circuit()
    checked.record(True, "connection accepted")
    assert endpoint.take()  # the one probe is out
    checked.record(True, "connection accepted")
    assert not endpoint.take()  # no second probe handed out by the next check
    endpoint.succeeded()
    for _ in range(3):
        checked.record(True, "connection accepted")
    assert endpoint.state(clock.now) == "healthy"
    assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


async def test_ready_while_one_endpoint_of_two_answers() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    live = f"http://127.0.0.1:{listener.getsockname()[1]}"
    dead = f"http://127.0.0.1:{free_port()}"
    try:
        settings = UpstreamSettings(url=live, endpoints=[dead, {"url": live, "name": "live"}])  # type: ignore[list-item]
        readiness = Readiness(settings, Lifecycle())
        await readiness.check_once()
        assert readiness.ready
        report = readiness.report()["checks"]["upstream"]  # type: ignore[index]
        assert report["detail"] == "1 of 2 endpoints healthy"
        assert [(item["name"], item["ok"]) for item in report["endpoints"]] == [(dead[7:], False), ("live", True)]
    finally:
        listener.close()


async def test_not_ready_when_no_endpoint_answers() -> None:
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    readiness = Readiness(UpstreamSettings(url=dead[0], endpoints=dead), Lifecycle())  # type: ignore[arg-type]
    await readiness.check_once()
    assert not readiness.ready
    assert readiness.report()["status"] == "not_ready"
