"""The retry decision (proxy/retry.py): the safety rule as properties over every combination,
full-jitter back-off, the retry budget with a fake clock, and the replay buffer of a body."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardproxy.proxy.retry import ReplayBody, RetryBudget, backoff_delay, may_retry

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
methods = st.sampled_from([b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"POST", b"PATCH", b"PROPFIND"])


@settings(deadline=None)  # no timing in unit tests
@given(method=methods, written=st.booleans(), replayable=st.booleans())
def test_never_after_a_response_byte(method: bytes, written: bool, replayable: bool) -> None:
    assert not may_retry(
        method=method, idempotent=IDEMPOTENT, written=written, response_started=True, body_replayable=replayable
    )


@settings(deadline=None)  # no timing in unit tests
@given(method=methods, replayable=st.booleans())
def test_any_method_when_nothing_was_written(method: bytes, replayable: bool) -> None:
    assert may_retry(
        method=method, idempotent=IDEMPOTENT, written=False, response_started=False, body_replayable=replayable
    )


@settings(deadline=None)  # no timing in unit tests
@given(method=st.sampled_from([b"POST", b"PATCH", b"PROPFIND", b"CONNECT"]), replayable=st.booleans())
def test_never_a_non_idempotent_method_once_bytes_were_sent(method: bytes, replayable: bool) -> None:
    assert not may_retry(
        method=method, idempotent=IDEMPOTENT, written=True, response_started=False, body_replayable=replayable
    )


@settings(deadline=None)  # no timing in unit tests
@given(method=methods)
def test_never_a_body_that_was_not_kept_once_bytes_were_sent(method: bytes) -> None:
    assert not may_retry(
        method=method, idempotent=IDEMPOTENT, written=True, response_started=False, body_replayable=False
    )


@settings(deadline=None)  # no timing in unit tests
@given(method=methods, written=st.booleans(), started=st.booleans(), replayable=st.booleans(), extra=st.booleans())
def test_the_decision_is_exactly_the_rule(
    method: bytes, written: bool, started: bool, replayable: bool, extra: bool
) -> None:
    idempotent = IDEMPOTENT | ({b"POST"} if extra else set())
    expected = not started and (not written or (method in idempotent and replayable))
    assert (
        may_retry(
            method=method, idempotent=idempotent, written=written, response_started=started, body_replayable=replayable
        )
        is expected
    )


@settings(deadline=None)  # no timing in unit tests
@given(
    retry=st.integers(min_value=0, max_value=100),
    base=st.floats(min_value=0, max_value=10),
    cap=st.floats(min_value=0, max_value=10),
    draw=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_backoff_is_full_jitter_under_the_cap(retry: int, base: float, cap: float, draw: float) -> None:
    delay = backoff_delay(retry, base=base, cap=cap, rand=lambda: draw)
    assert 0 <= delay <= min(cap, base * 2**retry)


def test_backoff_ceiling_doubles_per_retry() -> None:
    assert [backoff_delay(n, base=0.1, cap=1.0, rand=lambda: 1.0) for n in range(5)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0]
    )


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def test_the_budget_allows_its_floor_and_its_share() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.2, min_per_second=0.5, window=10.0, clock=clock)  # floor: 5 retries
    for _ in range(100):
        budget.record_request()
    spent = sum(budget.try_spend() for _ in range(100))
    assert spent == 25  # 5 + 20 % of 100


def test_an_exhausted_budget_refills_as_the_window_slides() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.0, min_per_second=0.3, window=10.0, clock=clock)  # 3 retries
    assert [budget.try_spend() for _ in range(5)] == [True, True, True, False, False]
    clock.now += 10.5
    assert budget.try_spend()


def test_a_zero_budget_never_retries() -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.0, window=10.0, clock=Clock())
    for _ in range(10):
        budget.record_request()
    assert not budget.try_spend()


async def _source(chunks: list[bytes], gate: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    for index, chunk in enumerate(chunks):
        if gate is not None and index == len(chunks) - 1:
            await gate.wait()
        yield chunk


async def _collect(body: AsyncIterator[bytes], limit: int | None = None) -> list[bytes]:
    out = []
    async for chunk in body:
        out.append(chunk)
        if limit is not None and len(out) == limit:
            break
    return out


async def test_a_replayed_body_is_the_same_bytes_even_after_a_partial_attempt() -> None:
    body = ReplayBody(_source([b"ab", b"cd", b"ef"]), limit=100)
    assert await _collect(body.chunks(), limit=2) == [b"ab", b"cd"]  # the attempt broke here
    assert body.replayable
    assert await _collect(body.chunks()) == [b"ab", b"cd", b"ef"]
    assert await _collect(body.chunks()) == [b"ab", b"cd", b"ef"]


async def test_a_body_past_the_buffer_is_not_replayable() -> None:
    body = ReplayBody(_source([b"x" * 60, b"y" * 60]), limit=100)
    assert await _collect(body.chunks()) == [b"x" * 60, b"y" * 60]  # the first attempt gets all
    assert not body.replayable
    with pytest.raises(RuntimeError):
        await _collect(body.chunks())


async def test_an_attempt_cancelled_while_reading_the_client_makes_it_unreplayable() -> None:
    gate = asyncio.Event()
    body = ReplayBody(_source([b"a", b"b"], gate), limit=100)
    reading = asyncio.ensure_future(_collect(body.chunks()))
    for _ in range(3):  # let it reach the read that waits on the client
        await asyncio.sleep(0)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    assert not body.replayable


def test_requests_of_a_quiet_hour_do_not_count_as_the_last_window() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.2, min_per_second=0.0, window=10.0, clock=clock)
    assert not budget.try_spend()  # no request yet: no room (and the counts are read once)
    clock.now += 3600.0
    for _ in range(3600):
        budget.record_request()  # one a second over the hour
    # About 10 of them fall within the last 10 s: room for 2 retries, not for 720.
    assert sum(budget.try_spend() for _ in range(100)) == 2
