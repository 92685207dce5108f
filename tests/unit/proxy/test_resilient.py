"""The resilient transport (proxy/resilient.py) over scripted endpoints: which failures are
retried and where, what is never sent twice, the attempt limit, the budget, the deadline, the
fail-fast answer when every endpoint is out, and the in-flight count the balancer reads."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable

import pytest

from guardproxy.proxy.balancer import Balancer
from guardproxy.proxy.breaker import CircuitBreaker
from guardproxy.proxy.endpoints import Endpoint, EndpointTarget
from guardproxy.proxy.errors import (
    NoEndpointError,
    PoolExhaustedError,
    UpstreamClosedError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeoutError,
)
from guardproxy.proxy.resilient import AttemptObserver, ResilientTransport
from guardproxy.proxy.retry import RetryBudget, RetryPolicy
from guardproxy.proxy.transport import UpstreamRequest
from tests.support.mock_transport import MockResponse

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"})


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def failure(error: UpstreamError, *, written: bool = False, received: bool = False) -> UpstreamError:
    error.written, error.received = written, received
    return error


class ScriptedPool:
    """An endpoint's pool: each send takes the next outcome (a status to answer, or an error
    to raise after reading `read_chunks` chunks of the body). Every body it read is kept."""

    def __init__(self, *outcomes: int | UpstreamError, read_chunks: int | None = None) -> None:
        self.outcomes = list(outcomes)
        self.read_chunks = read_chunks
        self.bodies: list[bytes] = []
        self.closed = False

    async def send(self, request: UpstreamRequest) -> MockResponse:
        outcome = self.outcomes.pop(0) if self.outcomes else 200
        if isinstance(outcome, UpstreamError) and not outcome.written:
            # As the real pool: a connection that never opened read nothing of the body.
            self.bodies.append(b"")
            raise outcome
        body = b""
        if request.body is not None:
            count = 0
            async for chunk in request.body:
                body += chunk
                count += 1
                if self.read_chunks is not None and count >= self.read_chunks:
                    break
        self.bodies.append(body)
        if isinstance(outcome, UpstreamError):
            raise outcome
        headers = [(b"retry-after", b"7")] if outcome == 503 else []
        return MockResponse(status=outcome, headers=headers)

    async def aclose(self) -> None:
        self.closed = True


class Observer(AttemptObserver):
    def __init__(self) -> None:
        self.attempts: list[tuple[str, str]] = []
        self.retries: list[str] = []
        self.exhausted = 0

    def attempt(self, endpoint: str, outcome: str) -> None:
        self.attempts.append((endpoint, outcome))

    def retry(self, reason: str) -> None:
        self.retries.append(reason)

    def budget_exhausted(self) -> None:
        self.exhausted += 1


def policy(**changes: object) -> RetryPolicy:
    values: dict[str, object] = {
        "attempts": 2,
        "backoff_base": 0.01,
        "backoff_cap": 0.1,
        "idempotent": IDEMPOTENT,
        "replay_bytes": 1024,
        "total_timeout": None,
    }
    values.update(changes)
    return RetryPolicy(**values)  # type: ignore[arg-type]


def transport(
    *pools: ScriptedPool,
    clock: Clock | None = None,
    default: RetryPolicy | None = None,
    routes: dict[str, RetryPolicy] | None = None,
    budget: RetryBudget | None = None,
    consecutive_failures: int = 5,
) -> tuple[ResilientTransport, Observer, list[float]]:
    clock = clock or Clock()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    endpoints = [
        Endpoint(
            EndpointTarget(f"e{index}", f"http://127.0.0.1:{9000 + index}"),
            pool,  # type: ignore[arg-type]
            CircuitBreaker(consecutive_failures=consecutive_failures, open_for=5.0, clock=clock),
        )
        for index, pool in enumerate(pools)
    ]
    observer = Observer()
    made = ResilientTransport(
        Balancer(endpoints, balance="round_robin", clock=clock, rand=random.Random(3)),
        policies=routes or {},
        default=default or policy(),
        budget=budget or RetryBudget(ratio=0.2, min_per_second=10.0, window=10.0, clock=clock),
        clock=clock,
        sleep=sleep,
        rand=lambda: 0.5,
        observer=observer,
    )
    return made, observer, slept


async def _chunks(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


def request(method: bytes = b"GET", *body: bytes, route: str = "default") -> UpstreamRequest:
    return UpstreamRequest(
        method=method,
        target=b"/",
        headers=[],
        body=_chunks(*body) if body else None,
        content_length=sum(map(len, body)) if body else None,
        connect_timeout=1.0,
        read_timeout=1.0,
        route=route,
    )


Refused: Callable[[], UpstreamError] = lambda: failure(UpstreamConnectError("refused"))  # noqa: E731
Cut: Callable[[], UpstreamError] = lambda: failure(UpstreamClosedError("cut"), written=True)  # noqa: E731


async def test_a_refused_connection_is_retried_on_the_other_endpoint() -> None:
    first, second = ScriptedPool(Refused()), ScriptedPool()
    made, observer, slept = transport(first, second)
    response = await made.send(request())
    assert response.status == 200
    assert observer.attempts == [("e0", "connect")]
    assert [endpoint.ok_attempts for endpoint in made.endpoints] == [0, 1]
    assert observer.retries == ["connect"]
    assert slept == [0.005]  # half of min(cap, base): the jitter drew 0.5


async def test_a_get_cut_after_it_was_sent_is_retried_with_its_whole_body() -> None:
    first, second = ScriptedPool(Cut(), read_chunks=1), ScriptedPool()
    made, _, _ = transport(first, second)
    response = await made.send(request(b"PUT", b"abc", b"def"))
    assert response.status == 200
    assert first.bodies == [b"abc"]
    assert second.bodies == [b"abcdef"]


async def test_a_post_is_never_sent_twice_once_bytes_went_out() -> None:
    first, second = ScriptedPool(Cut()), ScriptedPool()
    made, observer, _ = transport(first, second)
    with pytest.raises(UpstreamClosedError):
        await made.send(request(b"POST", b"payload"))
    assert second.bodies == []
    assert observer.retries == []


async def test_a_patch_without_a_body_is_not_retried_after_it_was_sent_either() -> None:
    first, second = ScriptedPool(Cut()), ScriptedPool()
    made, _, _ = transport(first, second)
    with pytest.raises(UpstreamClosedError):
        await made.send(request(b"PATCH"))
    assert second.bodies == []


async def test_a_post_that_never_left_is_retried() -> None:
    first, second = ScriptedPool(Refused()), ScriptedPool()
    made, _, _ = transport(first, second)
    assert (await made.send(request(b"POST", b"payload"))).status == 200
    assert second.bodies == [b"payload"]


async def test_nothing_is_retried_after_a_response_byte() -> None:
    first, second = ScriptedPool(failure(UpstreamClosedError("cut"), written=True, received=True)), ScriptedPool()
    made, _, _ = transport(first, second)
    with pytest.raises(UpstreamClosedError):
        await made.send(request())
    assert second.bodies == []


async def test_a_body_larger_than_the_replay_buffer_is_not_resent() -> None:
    first, second = ScriptedPool(Cut()), ScriptedPool()
    made, _, _ = transport(first, second, default=policy(replay_bytes=4))
    with pytest.raises(UpstreamClosedError):
        await made.send(request(b"PUT", b"abc", b"def"))
    assert second.bodies == []


async def test_attempts_stop_at_the_limit() -> None:
    pools = [ScriptedPool(Refused(), Refused()) for _ in range(2)]
    made, observer, slept = transport(*pools)
    with pytest.raises(UpstreamConnectError):
        await made.send(request())
    assert len(observer.attempts) == 3  # the first and two retries
    assert slept == [0.005, 0.01]  # the ceiling doubles


async def test_a_route_may_turn_retries_off() -> None:
    first, second = ScriptedPool(Refused()), ScriptedPool()
    made, _, _ = transport(first, second, routes={"reports": policy(attempts=0)})
    with pytest.raises(UpstreamConnectError):
        await made.send(request(route="reports"))
    assert second.bodies == []


async def test_no_retry_starts_that_could_not_end_before_the_deadline() -> None:
    clock = Clock()
    first = ScriptedPool(failure(UpstreamTimeoutError("slow")))

    async def slow_send(request: UpstreamRequest) -> MockResponse:
        clock.now += 0.95  # the first attempt used most of the route's second
        return await ScriptedPool.send(first, request)

    first.send = slow_send  # type: ignore[method-assign]
    second = ScriptedPool()
    made, _, _ = transport(first, second, clock=clock, default=policy(total_timeout=1.0))
    with pytest.raises(UpstreamTimeoutError):
        await made.send(request())
    assert second.bodies == []


async def test_an_empty_budget_stops_retries_and_says_so() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.0, min_per_second=0.1, window=10.0, clock=clock)  # one retry
    pools = [ScriptedPool(*[Refused() for _ in range(10)]) for _ in range(2)]
    made, observer, _ = transport(*pools, clock=clock, budget=budget, consecutive_failures=100)
    for _ in range(3):
        with pytest.raises(UpstreamConnectError):
            await made.send(request())
    assert len(observer.retries) == 1
    assert observer.exhausted == 3  # the first request's second retry, then each later one's first
    assert len(observer.attempts) == 4  # 3 requests, 1 retry


async def test_every_endpoint_open_fails_at_once_with_when_to_come_back() -> None:
    clock = Clock()
    pools = [ScriptedPool(Refused()), ScriptedPool(Refused())]
    made, _, _ = transport(*pools, clock=clock, consecutive_failures=1, default=policy(attempts=1))
    with pytest.raises(UpstreamConnectError):
        await made.send(request())
    clock.now += 1.0
    with pytest.raises(NoEndpointError) as raised:
        await made.send(request())
    assert raised.value.retry_after == pytest.approx(4.0, abs=0.01)
    assert [len(pool.bodies) for pool in pools] == [1, 1]  # the second request reached nobody


async def test_a_503_with_retry_after_holds_that_endpoint_back() -> None:
    clock = Clock()
    first, second = ScriptedPool(503), ScriptedPool(200, 200, 200)
    made, _, _ = transport(first, second, clock=clock, consecutive_failures=100)
    assert (await made.send(request())).status == 503  # relayed: the upstream answered
    for _ in range(3):
        assert (await made.send(request())).status == 200
    assert (len(first.bodies), len(second.bodies)) == (1, 3)
    clock.now += 7.0
    await made.send(request())
    await made.send(request())
    assert len(first.bodies) == 2


async def test_in_flight_counts_until_the_response_is_closed() -> None:
    first, second = ScriptedPool(), ScriptedPool()
    made, _, _ = transport(first, second)
    response = await made.send(request())
    assert [endpoint.in_flight for endpoint in made.endpoints] == [1, 0]
    response.close()
    response.close()
    assert made.endpoints[0].in_flight == 0
    first.outcomes = [Refused(), Refused()]
    second.outcomes = [Refused(), Refused()]
    with pytest.raises(UpstreamConnectError):
        await made.send(request())
    assert [endpoint.in_flight for endpoint in made.endpoints] == [0, 0]


async def test_one_endpoint_is_retried_itself() -> None:
    pool = ScriptedPool(Cut())
    made, _, _ = transport(pool)
    assert (await made.send(request())).status == 200
    assert len(pool.bodies) == 2


async def test_closing_closes_every_pool() -> None:
    pools = [ScriptedPool(), ScriptedPool()]
    made, _, _ = transport(*pools)
    await made.aclose()
    assert all(pool.closed for pool in pools)


async def test_a_retry_that_finds_every_endpoint_out_answers_with_the_real_failure() -> None:
    pool = ScriptedPool(Refused())
    made, _, _ = transport(pool, consecutive_failures=1)
    with pytest.raises(UpstreamConnectError):
        await made.send(request())  # the failure opened the only circuit before its retry
    assert len(pool.bodies) == 1
    with pytest.raises(NoEndpointError):
        await made.send(request())  # the next request fails fast
    assert len(pool.bodies) == 1


async def test_the_only_endpoint_is_never_taken_out_for_its_answers() -> None:
    pool = ScriptedPool(*[503] * 10, 200)
    made, _, _ = transport(pool, consecutive_failures=2)
    statuses = [(await made.send(request())).status for _ in range(11)]
    assert statuses == [503] * 10 + [200]  # every one relayed, none answered by guardproxy
    assert made.endpoints[0].state(0.0) == "healthy"


async def test_answers_open_the_circuit_of_one_of_several_endpoints() -> None:
    first, second = ScriptedPool(502, 502), ScriptedPool()
    made, _, _ = transport(first, second, consecutive_failures=2)
    for _ in range(6):
        await made.send(request())
    assert made.endpoints[0].breaker.state == "open"  # type: ignore[union-attr]
    assert (len(first.bodies), len(second.bodies)) == (2, 4)


async def test_a_full_pool_is_retried_only_on_another_endpoint_and_never_opens_a_circuit() -> None:
    busy = ScriptedPool(*[PoolExhaustedError("no free connection") for _ in range(3)])
    made, _, _ = transport(busy, consecutive_failures=1)
    with pytest.raises(PoolExhaustedError):
        await made.send(request())
    assert len(busy.bodies) == 1  # the only endpoint: not tried again
    assert made.endpoints[0].state(0.0) == "healthy"
    first, second = ScriptedPool(PoolExhaustedError("no free connection")), ScriptedPool()
    made, _, _ = transport(first, second, consecutive_failures=1)
    assert (await made.send(request())).status == 200
    assert made.endpoints[0].state(0.0) == "healthy"
