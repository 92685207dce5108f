"""The balancer (proxy/balancer.py): power of two choices on requests in flight, round robin,
and what it skips: open circuits, held-back and unhealthy endpoints, endpoints already tried."""

from __future__ import annotations

import random

from guardproxy.proxy.balancer import Balancer
from guardproxy.proxy.breaker import CircuitBreaker
from guardproxy.proxy.endpoints import Endpoint, EndpointTarget
from tests.support.mock_transport import MockTransport


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def endpoints(count: int, clock: Clock, probes: int = 1) -> list[Endpoint]:
    return [
        Endpoint(
            EndpointTarget(f"e{index}", f"http://127.0.0.1:{8000 + index}"),
            MockTransport(),
            CircuitBreaker(consecutive_failures=1, open_for=5.0, half_open_probes=probes, clock=clock),
        )
        for index in range(count)
    ]


def test_two_choices_send_to_the_less_loaded_endpoint() -> None:
    clock = Clock()
    pool = endpoints(2, clock)
    pool[0].in_flight = 10
    balancer = Balancer(pool, balance="least_in_flight", clock=clock, rand=random.Random(1))
    assert {balancer.pick().name for _ in range(20)} == {"e1"}  # type: ignore[union-attr]


def test_two_choices_spread_equal_load() -> None:
    clock = Clock()
    balancer = Balancer(endpoints(3, clock), balance="least_in_flight", clock=clock, rand=random.Random(7))
    picked = [balancer.pick().name for _ in range(300)]  # type: ignore[union-attr]
    assert all(picked.count(name) > 50 for name in ("e0", "e1", "e2"))


def test_round_robin_takes_them_in_turn() -> None:
    clock = Clock()
    balancer = Balancer(endpoints(3, clock), balance="round_robin", clock=clock)
    assert [balancer.pick().name for _ in range(6)] == ["e0", "e1", "e2", "e0", "e1", "e2"]  # type: ignore[union-attr]


def test_an_open_circuit_gets_no_traffic_until_its_probe() -> None:
    clock = Clock()
    pool = endpoints(2, clock)
    pool[0].failed()  # opens (one failure is enough here)
    balancer = Balancer(pool, balance="round_robin", clock=clock)
    assert {balancer.pick().name for _ in range(10)} == {"e1"}  # type: ignore[union-attr]
    clock.now += 5.0
    assert "e0" in {balancer.pick().name for _ in range(2)}  # type: ignore[union-attr]


def test_every_circuit_open_means_no_endpoint_and_says_when_to_come_back() -> None:
    clock = Clock()
    pool = endpoints(2, clock)
    for endpoint in pool:
        endpoint.failed()
    clock.now += 2.0
    balancer = Balancer(pool, balance="least_in_flight", clock=clock)
    assert balancer.pick() is None
    assert balancer.retry_in() == 3.0


def test_a_held_back_endpoint_is_skipped_until_its_retry_after() -> None:
    clock = Clock()
    pool = endpoints(2, clock)
    pool[1].answered(503, [(b"retry-after", b"3")], clock, shared=True)
    balancer = Balancer(pool, balance="round_robin", clock=clock)
    assert {balancer.pick().name for _ in range(4)} == {"e0"}  # type: ignore[union-attr]
    assert pool[1].state(clock.now) == "open"  # one 503 is also a failure to this breaker
    clock.now += 5.0
    assert pool[1].available(clock.now)


def test_a_malformed_or_past_date_retry_after_holds_nothing() -> None:
    clock = Clock()
    endpoint = endpoints(1, clock)[0]
    endpoint.breaker = None
    for value in (b"soon", b"-5", b"Wed, 21 Oct 2015 07:28:00 GMT", b"1e9", b""):
        endpoint.answered(503, [(b"retry-after", value)], clock, shared=True)
        assert endpoint.available(clock.now), value


def test_a_huge_retry_after_is_capped() -> None:
    clock = Clock()
    endpoint = endpoints(1, clock)[0]
    endpoint.breaker = None
    endpoint.answered(503, [(b"retry-after", b"999999999")], clock, shared=True)
    clock.now += 60.0
    assert endpoint.available(clock.now)


def test_unhealthy_endpoints_are_used_only_when_no_healthy_one_is_left() -> None:
    clock = Clock()
    pool = endpoints(2, clock)
    pool[0].healthy = False
    balancer = Balancer(pool, balance="round_robin", clock=clock)
    assert {balancer.pick().name for _ in range(4)} == {"e1"}  # type: ignore[union-attr]
    pool[1].healthy = False
    assert {balancer.pick().name for _ in range(4)} == {"e0", "e1"}  # type: ignore[union-attr]


def test_a_retry_goes_to_an_endpoint_not_tried_yet_and_else_to_the_same() -> None:
    clock = Clock()
    pool = endpoints(2, clock)
    balancer = Balancer(pool, balance="least_in_flight", clock=clock)
    for _ in range(10):
        assert balancer.pick([pool[0]]) is pool[1]
    assert balancer.pick(pool) in pool


def test_half_open_probes_are_not_handed_out_twice() -> None:
    clock = Clock()
    pool = endpoints(1, clock, probes=1)
    pool[0].failed()
    clock.now += 5.0
    balancer = Balancer(pool, balance="least_in_flight", clock=clock)
    assert balancer.pick() is pool[0]
    assert balancer.pick() is None
