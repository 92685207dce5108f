"""GCRA against a reference model: a token bucket computed with exact fractions.

GCRA with interval T and burst B is a token bucket holding at most B tokens, refilled one token
per T; a request takes one token or is refused. The model is written the obvious way, so a
difference means the store, not the model, is wrong.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardproxy.ratelimit.gcra import MICROS, Rate, parse_rate, verdict
from guardproxy.ratelimit.memory import MemoryStore


class TokenBucket:
    def __init__(self, rate: Rate) -> None:
        self.capacity = Fraction(rate.burst)
        self.per_us = Fraction(1, rate.interval_us)
        self.tokens = self.capacity
        self.last = 0

    def peek(self, now: int) -> Fraction:
        return min(self.capacity, self.tokens + (now - self.last) * self.per_us)

    def take(self, now: int) -> None:
        self.tokens, self.last = self.peek(now) - 1, now


class Clock:
    def __init__(self) -> None:
        self.now = 10**12

    def __call__(self) -> int:
        return self.now


rates = st.builds(
    Rate,
    st.integers(1, 50),
    st.sampled_from([1, 2, 60, 3600]),
    st.integers(1, 20),
)
# Gaps between requests, in µs: many at the same instant, some across whole refills.
gaps = st.lists(st.one_of(st.just(0), st.integers(0, 2 * MICROS), st.integers(0, 4000 * MICROS)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(rate=rates, gaps=gaps)
def test_one_limit_admits_exactly_what_a_token_bucket_admits(rate: Rate, gaps: list[int]) -> None:
    clock, model = Clock(), TokenBucket(rate)
    store = MemoryStore(max_keys=10, clock=clock)
    model.last = clock.now
    for gap in gaps:
        clock.now += gap
        (backlog,) = store.check(["k"], [rate], [True])
        decision = verdict(backlog, rate)
        tokens = model.peek(clock.now)
        assert decision.admitted == (tokens >= 1)
        if decision.admitted:
            model.take(clock.now)
            # RateLimit's r: what the bucket still holds, whole requests only.
            assert decision.remaining == int(model.peek(clock.now))
            # RateLimit's t: when the bucket is full again, rounded up to a second.
            full_in = (model.capacity - model.peek(clock.now)) / model.per_us
            assert decision.reset_seconds == -(-full_in // MICROS)
        else:
            # Retry-After: when one token will be there, rounded up, never below 1 s.
            ready_in = (1 - tokens) / model.per_us
            assert decision.retry_after_seconds == max(1, -(-ready_in // MICROS))
            assert decision.remaining == 0


@settings(max_examples=200, deadline=None)
@given(first=rates, second=rates, gaps=gaps, second_enforces=st.booleans())
def test_several_limits_spend_nothing_when_an_enforcing_one_refuses(
    first: Rate, second: Rate, gaps: list[int], second_enforces: bool
) -> None:
    clock = Clock()
    store = MemoryStore(max_keys=10, clock=clock)
    models = [TokenBucket(first), TokenBucket(second)]
    for model in models:
        model.last = clock.now
    for gap in gaps:
        clock.now += gap
        backlogs = store.check(["a", "b"], [first, second], [True, second_enforces])
        fits = [model.peek(clock.now) >= 1 for model in models]
        assert [verdict(b, r).admitted for b, r in zip(backlogs, [first, second], strict=True)] == fits
        request_admitted = fits[0] and (fits[1] or not second_enforces)
        if request_admitted:
            for model, fit in zip(models, fits, strict=True):
                if fit:
                    model.take(clock.now)


def test_a_burst_is_admitted_at_once_then_one_per_interval() -> None:
    clock = Clock()
    store = MemoryStore(max_keys=10, clock=clock)
    rate = parse_rate("10/minute")
    admitted = [verdict(store.check(["k"], [rate], [True])[0], rate).admitted for _ in range(15)]
    assert admitted == [True] * 10 + [False] * 5
    clock.now += 6 * MICROS - 1  # just short of one interval: still nothing
    assert not verdict(store.check(["k"], [rate], [True])[0], rate).admitted
    clock.now += 1
    assert verdict(store.check(["k"], [rate], [True])[0], rate).admitted
    assert not verdict(store.check(["k"], [rate], [True])[0], rate).admitted


def test_refused_requests_do_not_push_the_budget_further_away() -> None:
    # A client hammering a refused limit must not extend its own lock-out.
    clock = Clock()
    store = MemoryStore(max_keys=10, clock=clock)
    rate = parse_rate("1/second")
    store.check(["k"], [rate], [True])
    for _ in range(1000):
        store.check(["k"], [rate], [True])
    clock.now += MICROS
    assert verdict(store.check(["k"], [rate], [True])[0], rate).admitted


def test_dry_run_limits_that_refuse_do_not_block_the_request_or_spend_budget() -> None:
    clock = Clock()
    store = MemoryStore(max_keys=10, clock=clock)
    strict, loose = parse_rate("1/hour"), parse_rate("100/hour")
    for expected_strict in (True, False, False):
        strict_backlog, loose_backlog = store.check(["dry", "real"], [strict, loose], [False, True])
        assert verdict(strict_backlog, strict).admitted is expected_strict
        assert verdict(loose_backlog, loose).admitted
    # The loose limit spent one per request: 3 of 100.
    (loose_backlog,) = store.check(["real"], [loose], [True])
    assert verdict(loose_backlog, loose).remaining == 100 - 4


def test_expired_keys_are_forgotten_so_memory_follows_active_clients() -> None:
    clock = Clock()
    store = MemoryStore(max_keys=1_000_000, clock=clock)
    rate = parse_rate("10/second")
    for client in range(500):
        store.check([f"client-{client}"], [rate], [True])
    assert len(store) == 500
    clock.now += 2 * MICROS  # every budget is full again
    for _ in range(100):
        store.check(["steady"], [rate], [True])
        clock.now += rate.interval_us
    assert len(store) <= 1


def test_the_key_cap_holds_against_address_spraying() -> None:
    clock = Clock()
    store = MemoryStore(max_keys=100, clock=clock)
    rate = parse_rate("1/hour")
    for client in range(10_003):
        store.check([f"sprayed-{client}"], [rate], [True])
        # Swept every 16 checks: never more than that many keys over the cap.
        assert len(store) <= 100 + 16


@pytest.mark.parametrize(
    ("text", "count", "period"),
    [
        ("100/minute", 100, 60),
        ("10/second", 10, 1),
        ("1000/hour", 1000, 3600),
        ("50/day", 50, 86400),
        ("5/30s", 5, 30),
        ("3 / 2 minutes", 3, 120),
        ("7/H", 7, 3600),
    ],
)
def test_rates_are_read_as_written(text: str, count: int, period: int) -> None:
    rate = parse_rate(text)
    assert (rate.count, rate.period_seconds, rate.burst) == (count, period, count)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "100",
        "/minute",
        "100/",
        "100/fortnight",
        "0/second",
        "-1/second",
        "1/0s",
        "1/ms",
        "10/minute/x",
        "1.5/second",
        "100/second extra",
        "2000000/second",
        "1/400d",
    ],
)
def test_malformed_or_impossible_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"rate|expected|period|year|microsecond"):
        parse_rate(text)


@pytest.mark.parametrize("burst", [0, -5])
def test_a_burst_below_one_is_refused(burst: int) -> None:
    with pytest.raises(ValueError, match="burst"):
        parse_rate("10/second", burst)
