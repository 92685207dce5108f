"""The fail-soft store (ratelimit/failsoft.py) with a fake clock and a scripted shared store:
every way the shared store fails is decided by the fallback, the circuit opens after the set
number of failures, probes once per cool-down, and closes again on a success."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from guardproxy.ratelimit.failsoft import FailSoftStore
from guardproxy.ratelimit.gcra import Rate, parse_rate
from guardproxy.ratelimit.memory import MemoryStore

RATE = [parse_rate("2/second")]


class ScriptedStore:
    """A shared store that answers from a script: a list of backlogs, or an exception to raise."""

    def __init__(self) -> None:
        self.outcomes: list[list[int] | BaseException] = []
        self.calls = 0

    async def check(self, keys: Sequence[str], rates: Sequence[Rate], enforce: Sequence[bool]) -> list[int]:
        self.calls += 1
        outcome = self.outcomes.pop(0) if self.outcomes else [0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def warm_up(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def store(fallback: str = "local") -> tuple[FailSoftStore, ScriptedStore, Clock, list[str], list[bool]]:
    shared, clock = ScriptedStore(), Clock()
    errors: list[str] = []
    degraded: list[bool] = []
    failsoft = FailSoftStore(
        shared,  # type: ignore[arg-type]
        MemoryStore(max_keys=100),
        fallback=fallback,  # type: ignore[arg-type]
        breaker_failures=3,
        breaker_cooldown=5.0,
        on_error=errors.append,
        on_degraded=degraded.append,
        clock=clock,
    )
    return failsoft, shared, clock, errors, degraded


async def check(failsoft: FailSoftStore) -> str:
    return (await failsoft.check(["k"], RATE, [True])).source


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (TimeoutError(), "timeout"),
        (RedisConnectionError("refused"), "connection"),
        (OSError("reset"), "connection"),
        (ResponseError("NOSCRIPT"), "script"),
        (RuntimeError("redis-py did something odd"), "other"),
    ],
)
async def test_every_failure_is_decided_by_the_fallback_and_counted_by_kind(error: Exception, kind: str) -> None:
    failsoft, shared, _, errors, degraded = store()
    shared.outcomes = [error]
    assert await check(failsoft) == "local"
    assert errors == [kind]
    assert degraded == [True]
    assert failsoft.report()["state"] == "degraded"
    assert await check(failsoft) == "shared"  # the next check reaches Redis again and succeeds
    assert degraded == [True, False]


@pytest.mark.parametrize("fallback", ["allow", "deny"])
async def test_allow_and_deny_decide_without_backlogs(fallback: str) -> None:
    failsoft, shared, _, _, _ = store(fallback)
    shared.outcomes = [TimeoutError()]
    decision = await failsoft.check(["k"], RATE, [True])
    assert (decision.source, decision.backlogs) == (fallback, None)


async def test_the_circuit_opens_after_three_failures_probes_after_the_cooldown_and_closes() -> None:
    failsoft, shared, clock, _, _ = store()
    shared.outcomes = [TimeoutError()] * 3
    for _ in range(3):
        assert await check(failsoft) == "local"
    assert failsoft.circuit_open
    assert shared.calls == 3
    for _ in range(10):  # open: Redis is not asked at all
        assert await check(failsoft) == "local"
    assert shared.calls == 3
    clock.now += 5.0
    shared.outcomes = [TimeoutError()]
    assert await check(failsoft) == "local"  # the probe failed: open for another cool-down
    assert shared.calls == 4
    assert failsoft.circuit_open
    clock.now += 4.9
    assert await check(failsoft) == "local"
    assert shared.calls == 4
    clock.now += 0.1
    assert await check(failsoft) == "shared"  # the probe succeeded
    assert not failsoft.circuit_open
    assert failsoft.report()["circuit"] == "closed"


async def test_only_one_request_probes_while_others_wait_on_the_fallback() -> None:
    failsoft, shared, clock, _, _ = store()
    shared.outcomes = [TimeoutError()] * 3
    for _ in range(3):
        await check(failsoft)
    clock.now += 5.0
    gate = asyncio.Event()
    original = shared.check

    async def slow_check(*args: object) -> list[int]:
        await gate.wait()
        return await original(*args)  # type: ignore[arg-type]

    shared.check = slow_check  # type: ignore[method-assign,assignment]
    probe = asyncio.create_task(check(failsoft))
    await asyncio.sleep(0)
    assert await check(failsoft) == "local"  # a second request during the probe does not wait
    gate.set()
    assert await probe == "shared"
    assert shared.calls == 4
