"""When a failed upstream attempt may be tried again, and what a retry costs.

The safety decision is one pure function, `may_retry` (Caddy keeps one retry decision too):

- nothing of the request was written (connect refused, reset or timed out, no free
  connection): any method, since the upstream cannot have acted on it;
- the request went out but the connection broke before any response byte: only an idempotent
  method (RFC 9110 §9.2.2: sending it twice has the effect of sending it once), and only if its
  body was empty or is still whole in the replay buffer;
- never once a response byte arrived (the upstream acted, and answered), never a POST or PATCH
  once a byte of it was sent.

Around it: back-off with full jitter (a random delay up to an exponentially growing cap, so
retries of many clients do not fall in step) and a retry budget (Envoy's and Finagle's: retries
at most a share of recent requests, plus a small floor), so that retries cannot multiply the
load on an upstream that is already failing.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from guardproxy.proxy.breaker import SlidingCounts


def may_retry(
    *,
    method: bytes,
    idempotent: frozenset[bytes],
    written: bool,
    response_started: bool,
    body_replayable: bool,
) -> bool:
    """Whether an attempt that failed this way can be sent again without risk of doing twice
    what the client asked for once."""
    if response_started:
        return False
    if not written:
        return True
    return method in idempotent and body_replayable


def backoff_delay(retry: int, *, base: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number `retry` (0 for the first): full jitter."""
    return rand() * min(cap, base * (1 << min(retry, 30)))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A route's retry settings, merged once at start."""

    attempts: int
    backoff_base: float
    backoff_cap: float
    idempotent: frozenset[bytes]
    replay_bytes: int
    # The route's total deadline: no retry is started that could not finish before it.
    total_timeout: float | None


class RetryBudget:
    """Retries allowed: `ratio` of the requests in the last `window` seconds, plus
    `min_per_second` * `window`. Counted per worker."""

    __slots__ = ("_clock", "_counts", "_floor", "_ratio", "requests")

    def __init__(self, *, ratio: float, min_per_second: float, window: float, clock: Callable[[], float]) -> None:
        self._ratio = ratio
        self._floor = min_per_second * window
        # total: requests and retries; marked: retries.
        self._counts = SlidingCounts(window)
        self._clock = clock
        # `requests.pending += 1` is `record_request`, inlined by the transport's hot path.
        self.requests = self._counts

    def record_request(self) -> None:
        self._counts.pending += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget, if there is one left."""
        now = self._clock()
        total, retries = self._counts.counts(now)
        requests = total - retries
        if retries >= self._floor + self._ratio * requests:
            return False
        self._counts.add(now, True)
        return True


class ReplayBody:
    """A request body that can be sent again while it fits `limit` bytes.

    Each attempt streams `chunks()`: what an earlier attempt already read from the client, then
    the rest as it arrives. Past `limit`, or when an attempt was stopped in the middle of
    reading from the client (the read cannot be resumed), the body is no longer replayable.
    """

    __slots__ = ("_buffered", "_chunks", "_limit", "_source", "replayable")

    def __init__(self, source: AsyncIterator[bytes], limit: int) -> None:
        self._source = source
        self._limit = limit
        self._chunks: list[bytes] = []
        self._buffered = 0
        self.replayable = True

    async def chunks(self) -> AsyncIterator[bytes]:
        if not self.replayable:
            raise RuntimeError("the body was not kept: it cannot be sent again")
        for chunk in tuple(self._chunks):
            yield chunk
        while True:
            try:
                chunk = await anext(self._source)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                self._drop()
                raise
            if self.replayable:
                self._buffered += len(chunk)
                if self._buffered > self._limit:
                    self._drop()
                else:
                    self._chunks.append(chunk)
            yield chunk

    def _drop(self) -> None:
        self.replayable = False
        self._chunks = []
