"""The generic circuit breaker (proxy/breaker.py) driven by a fake clock: it opens on failures in
a row or on a failure ratio, lets a bounded number of probes through half-open, and reports each
change of state exactly once."""

from __future__ import annotations

import pytest

from guardproxy.proxy.breaker import BreakerState, CircuitBreaker, SlidingCounts


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, **options: object) -> tuple[CircuitBreaker, list[tuple[str, str]]]:
    moves: list[tuple[str, str]] = []
    settings: dict[str, object] = {"consecutive_failures": 3, "open_for": 5.0, "half_open_probes": 2}
    settings.update(options)
    made = CircuitBreaker(
        clock=clock,
        on_transition=lambda before, after: moves.append((str(before), str(after))),
        **settings,  # type: ignore[arg-type]
    )
    return made, moves


def state_of(made: CircuitBreaker) -> BreakerState:
    # A call, not an attribute: mypy would keep the attribute narrowed across calls that change it.
    return made.state


def test_a_closed_breaker_lets_everything_through() -> None:
    made, moves = breaker(Clock())
    for _ in range(100):
        assert made.allow()
        made.record_success()
    assert state_of(made) is BreakerState.CLOSED
    assert made.retry_in() == 0.0
    assert moves == []


def test_failures_in_a_row_open_it_and_nothing_passes_until_open_for_is_over() -> None:
    clock = Clock()
    made, moves = breaker(clock)
    for _ in range(3):
        made.record_failure()
    assert state_of(made) is BreakerState.OPEN
    assert not made.allow()
    assert not made.would_allow()
    clock.now += 4.0
    assert made.retry_in() == 1.0
    assert not made.allow()
    assert moves == [("closed", "open")]


def test_a_success_between_failures_resets_the_run() -> None:
    made, _ = breaker(Clock())
    for _ in range(10):
        made.record_failure()
        made.record_failure()
        made.record_success()
    assert state_of(made) is BreakerState.CLOSED


def test_half_open_lets_only_the_configured_probes_through() -> None:
    clock = Clock()
    made, _ = breaker(clock)
    for _ in range(3):
        made.record_failure()
    clock.now += 5.0
    assert made.would_allow()
    assert made.allow()
    assert state_of(made) is BreakerState.HALF_OPEN
    assert made.allow()
    assert not made.allow()  # both probes are out
    assert not made.would_allow()


def test_every_probe_succeeding_closes_it() -> None:
    clock = Clock()
    made, moves = breaker(clock)
    for _ in range(3):
        made.record_failure()
    clock.now += 5.0
    assert made.allow()
    assert made.allow()
    made.record_success()
    assert state_of(made) is BreakerState.HALF_OPEN
    made.record_success()
    assert state_of(made) is BreakerState.CLOSED
    assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    # Closed again with a clean slate: it takes three new failures to open.
    made.record_failure()
    made.record_failure()
    assert state_of(made) is BreakerState.CLOSED


def test_one_failed_probe_opens_it_again_for_a_whole_period() -> None:
    clock = Clock()
    made, moves = breaker(clock)
    for _ in range(3):
        made.record_failure()
    clock.now += 5.0
    assert made.allow()
    made.record_success()
    assert made.allow()
    made.record_failure()
    assert state_of(made) is BreakerState.OPEN
    clock.now += 4.9
    assert not made.allow()
    assert moves[-1] == ("half_open", "open")


def test_a_probe_that_never_reports_frees_its_place_after_open_for() -> None:
    clock = Clock()
    made, _ = breaker(clock, half_open_probes=1)
    for _ in range(3):
        made.record_failure()
    clock.now += 5.0
    assert made.allow()  # this probe's caller is cancelled and never reports
    assert not made.allow()
    clock.now += 5.0
    assert made.allow()


def test_failures_while_open_change_nothing() -> None:
    clock = Clock()
    made, moves = breaker(clock)
    for _ in range(20):
        made.record_failure()
    assert moves == [("closed", "open")]
    clock.now += 5.0
    assert made.allow()


def test_half_open_ends_an_open_period_at_once_and_probes_still_decide() -> None:
    clock = Clock()
    made, moves = breaker(clock)
    for _ in range(3):
        made.record_failure()
    clock.now += 1.0
    made.half_open()
    assert state_of(made) is BreakerState.HALF_OPEN
    assert made.would_allow()
    assert made.allow()
    assert made.allow()
    assert not made.allow()  # still only half_open_probes of them
    made.record_success()
    made.record_success()
    assert state_of(made) is BreakerState.CLOSED
    assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_half_open_leaves_a_closed_breaker_and_its_failure_count_alone() -> None:
    made, moves = breaker(Clock())
    made.record_failure()
    made.record_failure()
    made.half_open()
    assert state_of(made) is BreakerState.CLOSED
    made.record_failure()  # the third in a row: the run was not reset
    assert state_of(made) is BreakerState.OPEN
    assert moves == [("closed", "open")]


def test_half_open_hands_out_no_extra_probes_while_half_open() -> None:
    clock = Clock()
    made, moves = breaker(clock)
    for _ in range(3):
        made.record_failure()
    made.half_open()
    assert made.allow()
    assert made.allow()
    made.half_open()
    assert not made.allow()
    assert moves == [("closed", "open"), ("open", "half_open")]


def test_a_probe_failing_after_an_early_half_open_opens_it_for_a_whole_period() -> None:
    clock = Clock()
    made, moves = breaker(clock)
    for _ in range(3):
        made.record_failure()
    clock.now += 1.0
    made.half_open()
    assert made.allow()
    made.record_failure()
    assert state_of(made) is BreakerState.OPEN
    clock.now += 4.9
    assert not made.allow()
    assert made.retry_in() == pytest.approx(0.1)  # counted from the failed probe
    assert moves[-1] == ("half_open", "open")


def test_a_failure_ratio_opens_it_once_there_were_enough_requests() -> None:
    clock = Clock()
    made, _ = breaker(clock, consecutive_failures=100, failure_ratio=0.5, min_requests=10, window=10.0)
    for _ in range(4):
        made.record_failure()
        made.record_success()
    assert state_of(made) is BreakerState.CLOSED  # 4 of 8: too few requests to judge
    made.record_failure()
    made.record_success()
    assert state_of(made) is BreakerState.CLOSED  # 5 of 10 but the last one succeeded
    made.record_failure()
    assert state_of(made) is BreakerState.OPEN  # 6 of 11


def test_old_failures_leave_the_window() -> None:
    clock = Clock()
    made, _ = breaker(clock, consecutive_failures=100, failure_ratio=0.5, min_requests=10, window=10.0)
    for _ in range(3):
        made.record_failure()
        made.record_failure()
        made.record_success()
    assert state_of(made) is BreakerState.CLOSED  # 6 of 9: too few to judge
    clock.now += 11.0
    made.record_failure()
    assert state_of(made) is BreakerState.CLOSED  # 1 of 1 in the window (7 of 10 without sliding)


def test_sliding_counts_after_a_long_pause_hold_nothing() -> None:
    counts = SlidingCounts(window=1.0, buckets=4)
    for step in range(8):
        counts.add(10.0 + step * 0.1, step % 2 == 0)
    assert counts.counts(10.7) == (8, 4)
    assert counts.counts(10_000.0) == (0, 0)
