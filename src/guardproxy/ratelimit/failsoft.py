"""Never an outage because Redis had one.

Every round trip to Redis gets a short time budget. A check that fails or runs over is decided by the
fallback instead: the in-process limiter (`local`, the default: limits become per instance),
admit everything (`allow`) or refuse everything with 429 (`deny`). After `breaker_failures`
failures in a row the circuit opens: checks stop waiting on a dead Redis and go straight to the
fallback; after `breaker_cooldown` one request's check probes Redis again, and a success closes
the circuit. No request ever gets a 5xx because of the limiter's store.
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
        self._failures = 0
        self._open_until: float | None = None  # None: the circuit is closed
        self._probing = False
        self.degraded = False
        self.last_error = ""

    async def check(self, keys: Sequence[str], rates: Sequence[Rate], enforce: Sequence[bool]) -> StoreDecision:
        if self._open_until is not None and (self._probing or self._clock() < self._open_until):
            return self._fall_back(keys, rates, enforce)
        probe = self._open_until is not None
        self._probing = probe
        try:
            # The shared store holds each round trip to its budget, and no check to a bound
            # however redis-py behaves: one timer per batch, not one per request.
            backlogs = await self.shared.check(keys, rates, enforce)
        except Exception as exc:  # whatever Redis (or redis-py) does, requests go on
            self._failed(exc, probe)
            return self._fall_back(keys, rates, enforce)
        finally:
            self._probing = False
        if self._failures or self.degraded or self._open_until is not None:
            self._succeeded()
        return StoreDecision("shared", backlogs)

    def _fall_back(self, keys: Sequence[str], rates: Sequence[Rate], enforce: Sequence[bool]) -> StoreDecision:
        if self.fallback == "local":
            return StoreDecision("local", self.local.check(keys, rates, enforce))
        return StoreDecision(self.fallback, None)

    def _failed(self, exc: BaseException, probe: bool) -> None:
        kind = error_kind(exc)
        self._on_error(kind)
        self.last_error = f"{kind}: {exc.__class__.__name__}"
        self._failures += 1
        if probe or self._failures >= self.breaker_failures:
            if self._open_until is None or probe:
                log.warning(
                    "rate limit store unavailable: circuit open, using the fallback",
                    error=self.last_error,
                    fallback=self.fallback,
                    retry_in=self.breaker_cooldown,
                )
            self._open_until = self._clock() + self.breaker_cooldown
        self._set_degraded(True)

    def _succeeded(self) -> None:
        self._failures = 0
        if self._open_until is not None:
            log.info("rate limit store reachable again: circuit closed")
            self._open_until = None
        self._set_degraded(False)

    def _set_degraded(self, degraded: bool) -> None:
        if degraded != self.degraded:
            self.degraded = degraded
            self._on_degraded(degraded)

    @property
    def circuit_open(self) -> bool:
        return self._open_until is not None

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
