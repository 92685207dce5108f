"""A store held to a time budget, behind a circuit breaker: a slow or dead Redis costs a request
at most `timeout`, and after a few failures in a row none at all until it is probed again.

What a failure means is the guard's decision (fail_mode); here it is only counted, logged once
per outage, and raised as StoreUnavailableError.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from guardproxy.idempotency.store import IdempotencyStore
from guardproxy.ratelimit.failsoft import error_kind

log = structlog.get_logger(component="guardproxy.idempotency")

# Failures in a row that open the circuit, and seconds until a request probes the store again.
BREAKER_FAILURES = 3
BREAKER_COOLDOWN = 2.0


class StoreUnavailableError(Exception):
    """The store did not answer in time, failed, or its circuit is open."""


class Ledger:
    def __init__(
        self,
        store: IdempotencyStore,
        *,
        timeout: float,
        on_error: Callable[[str], None] = lambda kind: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.timeout = timeout
        self._on_error = on_error
        self._clock = clock
        self._failures = 0
        self._open_until: float | None = None
        self._probing = False
        self.last_error = ""

    @property
    def degraded(self) -> bool:
        return self._failures > 0 or self._open_until is not None

    async def acquire(self, key: str, lock: bytes, lock_ttl_ms: int) -> tuple[bytes, int] | None:
        if self._open_until is not None:
            if self._probing or self._clock() < self._open_until:
                raise StoreUnavailableError("circuit open")
            self._probing = True  # this request probes; the others still skip the store
        try:
            async with asyncio.timeout(self.timeout):
                result = await self.store.acquire(key, lock, lock_ttl_ms)
        except Exception as exc:
            self._failed(exc)
            raise StoreUnavailableError(self.last_error) from None
        finally:
            self._probing = False
        self._succeeded()
        return result

    async def complete(self, key: str, lock: bytes, record: bytes, ttl_ms: int) -> bool | None:
        """True if stored, False if our lock was gone, None if the store failed."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self.store.complete(key, lock, record, ttl_ms)
        except Exception as exc:
            self._failed(exc)
            return None

    async def release(self, key: str, lock: bytes) -> None:
        """Best effort: a lock that cannot be deleted expires after lock_ttl."""
        try:
            async with asyncio.timeout(self.timeout):
                await self.store.release(key, lock)
        except Exception as exc:
            self._failed(exc)

    def count_error(self, kind: str) -> None:
        """A failure found by the caller (a value under the prefix this code did not write)."""
        self._on_error(kind)
        self.last_error = kind

    def _failed(self, exc: BaseException) -> None:
        kind = error_kind(exc)
        self._on_error(kind)
        self.last_error = f"{kind}: {exc.__class__.__name__}"
        self._failures += 1
        if self._failures >= BREAKER_FAILURES or self._open_until is not None:
            if self._open_until is None:
                log.warning("idempotency store unavailable: circuit open", error=self.last_error)
            self._open_until = self._clock() + BREAKER_COOLDOWN

    def _succeeded(self) -> None:
        if self._open_until is not None:
            log.info("idempotency store reachable again: circuit closed")
        self._failures = 0
        self._open_until = None

    def report(self) -> dict[str, object]:
        """For /readyz: informational (fail_mode decides what requests get meanwhile)."""
        return {
            "ok": not self.degraded,
            "backend": self.store.backend,
            "state": "degraded" if self.degraded else "ok",
            "circuit": "open" if self._open_until is not None else "closed",
            "detail": self.last_error if self.degraded else "store answering",
        }
