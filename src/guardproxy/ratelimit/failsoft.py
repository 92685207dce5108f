"""Never an outage because Redis had one.

Every round trip to Redis gets a short time budget. A check that fails or runs over is decided by the
fallback instead: the in-process limiter (`local`, the default: limits become per instance),
admit everything (`allow`) or refuse everything with 429 (`deny`). After `breaker_failures`
failures in a row the circuit (the generic breaker of proxy/breaker.py) opens: checks stop
waiting on a dead Redis and go straight to the fallback; after `breaker_cooldown` one request's
check probes Redis again, and a success closes the circuit. No request ever gets a 5xx because of the limiter's store.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from guardproxy.proxy.breaker import BreakerState, CircuitBreaker
from guardproxy.ratelimit.gcra import Rate
from guardproxy.ratelimit.memory import MemoryStore

log = structlog.get_logger(component="guardproxy.rate_limit")

Fallback = Literal["local", "allow", "deny"]
# Where a decision came from: the shared store, or the fallback in use.
Source = Literal["shared", "local", "allow", "deny"]


@dataclass(frozen=True, slots=True)
class StoreDecision:
    source: Source
    # Each limit's backlog before the request; None for `allow` and `deny`, which decide alone.
    backlogs: list[int] | None


def error_kind(exc: BaseException) -> str:
    """The store-error label for metrics: a small fixed set."""
    if isinstance(exc, TimeoutError | RedisTimeoutError):
        return "timeout"
    if isinstance(exc, RedisConnectionError | OSError):
        return "connection"
    if isinstance(exc, ResponseError):
        return "script"
    return "other"


class SharedStore(Protocol):
    """What the fail-soft store needs of the shared one (ratelimit/redis_store.py's RedisStore)."""

    def check(self, keys: Sequence[str], rates: Sequence[Rate], enforce: Sequence[bool]) -> Awaitable[list[int]]:
        """Each limit's backlog before this request, decided atomically by the store."""

    async def warm_up(self) -> None: ...

    async def aclose(self) -> None: ...


class FailSoftStore:
    def __init__(
        self,
        shared: SharedStore,
        local: MemoryStore,
        *,
        fallback: Fallback,
        breaker_failures: int,
        breaker_cooldown: float,
        on_error: Callable[[str], None] = lambda kind: None,
        on_degraded: Callable[[bool], None] = lambda degraded: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.shared = shared
        self._clock = clock
        self.local = local
        self.fallback: Fallback = fallback
        self.breaker_failures = breaker_failures
        self.breaker_cooldown = breaker_cooldown
        self._on_error = on_error
        self._on_degraded = on_degraded
        # The generic breaker (proxy/breaker.py), one probe at a time when half-open.
        self._breaker = CircuitBreaker(
            consecutive_failures=breaker_failures,
            open_for=breaker_cooldown,
            half_open_probes=1,
            clock=clock,
            on_transition=self._circuit_moved,
        )
        self.degraded = False
        self.last_error = ""

    async def check(self, keys: Sequence[str], rates: Sequence[Rate], enforce: Sequence[bool]) -> StoreDecision:
        breaker = self._breaker
        if not breaker.allow():
            return self._fall_back(keys, rates, enforce)
        try:
            # The shared store holds each round trip to its budget, and no check to a bound
            # however redis-py behaves: one timer per batch, not one per request.
            backlogs = await self.shared.check(keys, rates, enforce)
        except Exception as exc:  # whatever Redis (or redis-py) does, requests go on
            self._failed(exc)
            return self._fall_back(keys, rates, enforce)
        breaker.record_success()
        if self.degraded:
            self._set_degraded(False)
        return StoreDecision("shared", backlogs)

    def _fall_back(self, keys: Sequence[str], rates: Sequence[Rate], enforce: Sequence[bool]) -> StoreDecision:
        if self.fallback == "local":
            return StoreDecision("local", self.local.check(keys, rates, enforce))
        return StoreDecision(self.fallback, None)

    def _failed(self, exc: BaseException) -> None:
        kind = error_kind(exc)
        self._on_error(kind)
        self.last_error = f"{kind}: {exc.__class__.__name__}"
        self._breaker.record_failure()
        self._set_degraded(True)

    def _circuit_moved(self, previous: BreakerState, state: BreakerState) -> None:
        # One line per change: opening (or a failed probe opening it again), and closing.
        if state is BreakerState.OPEN:
            log.warning(
                "rate limit store unavailable: circuit open, using the fallback",
                error=self.last_error,
                fallback=self.fallback,
                retry_in=self.breaker_cooldown,
            )
        elif state is BreakerState.CLOSED:
            log.info("rate limit store reachable again: circuit closed")

    def _set_degraded(self, degraded: bool) -> None:
        if degraded != self.degraded:
            self.degraded = degraded
            self._on_degraded(degraded)

    @property
    def circuit_open(self) -> bool:
        return self._breaker.state is not BreakerState.CLOSED

    def report(self) -> dict[str, object]:
        """For /readyz: informational, never a reason to be unready (the fallback works)."""
        return {
            "ok": not self.degraded,
            "backend": "redis",
            "state": "degraded" if self.degraded else "ok",
            "circuit": "open" if self.circuit_open else "closed",
            "fallback": self.fallback,
            "detail": self.last_error if self.degraded else "shared store answering",
        }
