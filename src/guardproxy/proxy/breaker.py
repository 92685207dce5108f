"""One circuit breaker for everything guardproxy calls that can fail: upstream endpoints and the
rate-limit store (ratelimit/failsoft.py).

Closed, it lets everything through and counts: it opens after `consecutive_failures` in a row,
or (when `failure_ratio` is set) once at least that share of the last `window` seconds' calls
failed and there were `min_requests` of them. Open, it lets nothing through for `open_for`
seconds; then half-open, it lets `half_open_probes` calls through: all succeed and it closes,
one fails and it opens again. A probe that never reports back (its caller was cancelled) frees
its place after another `open_for`, so a breaker cannot stay half-open for ever. `half_open`
ends an open period early when something other than a call (an active health check) sees the
endpoint answer again.

No timers and no I/O: time comes from `clock`, so tests drive it with a fake one. A closed
breaker's bookkeeping per call is a counter or two, cheap enough for the request path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum
from typing import Final


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


_CLOSED: Final = BreakerState.CLOSED
_OPEN: Final = BreakerState.OPEN
_HALF_OPEN: Final = BreakerState.HALF_OPEN


class SlidingCounts:
    """Two counts (total, marked) over the last `window` seconds, in `buckets` slices.

    Unmarked events are cheap on the request path: `pending += 1`, no clock reading. They are
    folded in when the counts are next read or a marked event is added, as if spread evenly
    since the previous fold: only the share of them that falls within the window counts, so a
    quiet hour followed by a burst of failures does not look like an hour's traffic in the
    last ten seconds.
    """

    __slots__ = ("_current", "_folded_at", "_marked", "_slice", "_totals", "_window", "pending")

    def __init__(self, window: float, buckets: int = 10) -> None:
        self._window = window
        self._slice = window / buckets
        self._totals = [0] * buckets
        self._marked = [0] * buckets
        self._current = 0
        self._folded_at: float | None = None
        self.pending = 0

    def add(self, now: float, marked: bool) -> None:
        index = self._advance(now)
        self._totals[index] += 1
        if marked:
            self._marked[index] += 1

    def counts(self, now: float) -> tuple[int, int]:
        self._advance(now)
        return sum(self._totals), sum(self._marked)

    def clear(self) -> None:
        size = len(self._totals)
        self._totals = [0] * size
        self._marked = [0] * size
        self.pending = 0

    def _advance(self, now: float) -> int:
        tick = int(now / self._slice)
        size = len(self._totals)
        if tick != self._current:
            # Slices that went by since the last call are emptied (all of them after a long pause).
            for step in range(min(tick - self._current, size)):
                index = (self._current + 1 + step) % size
                self._totals[index] = 0
                self._marked[index] = 0
            self._current = tick
        index = tick % size
        pending = self.pending
        if pending:
            self.pending = 0
            elapsed = now - self._folded_at if self._folded_at is not None else 0.0
            if elapsed > self._window:
                pending = int(pending * self._window / elapsed)
            self._totals[index] += pending
        self._folded_at = now
        return index


class CircuitBreaker:
    def __init__(
        self,
        *,
        consecutive_failures: int,
        open_for: float,
        failure_ratio: float | None = None,
        min_requests: int = 20,
        window: float = 10.0,
        half_open_probes: int = 1,
        clock: Callable[[], float] = time.monotonic,
        on_transition: Callable[[BreakerState, BreakerState], None] | None = None,
    ) -> None:
        self.state = _CLOSED
        self._consecutive_limit = consecutive_failures
        self._open_for = open_for
        self._ratio = failure_ratio
        self._min_requests = min_requests
        self._window = SlidingCounts(window) if failure_ratio is not None else None
        self._probes = half_open_probes
        self._clock = clock
        self._on_transition = on_transition
        self._consecutive = 0
        self._changed_at = 0.0
        self._probes_out = 0
        self._probes_passed = 0

    @property
    def open_for(self) -> float:
        return self._open_for

    def would_allow(self) -> bool:
        """Whether `allow` would let a call through now, without taking a probe's place."""
        state = self.state
        if state is _CLOSED:
            return True
        now = self._clock()
        if state is _OPEN:
            return now - self._changed_at >= self._open_for
        return self._probes_out < self._probes or now - self._changed_at >= self._open_for

    def allow(self) -> bool:
        """Whether a call may go ahead; in half-open state it takes one probe's place."""
        state = self.state
        if state is _CLOSED:
            return True
        now = self._clock()
        if state is _OPEN:
            if now - self._changed_at < self._open_for:
                return False
            self._move(_HALF_OPEN, now)
        elif self._probes_out >= self._probes:
            if now - self._changed_at < self._open_for:
                return False
            # Probes that never reported back: their places are free again.
            self._move(_HALF_OPEN, now)
        self._probes_out += 1
        return True

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when it would now)."""
        if self.state is _CLOSED:
            return 0.0
        return max(0.0, self._open_for - (self._clock() - self._changed_at))

    def half_open(self) -> None:
        """An open breaker lets its probes through now instead of after `open_for`: the caller
        saw the endpoint answer again. Calls still decide whether it closes."""
        if self.state is _OPEN:
            self._move(_HALF_OPEN, self._clock())

    def record_success(self) -> None:
        state = self.state
        if state is _CLOSED:
            self._consecutive = 0
            if self._window is not None:
                self._window.pending += 1
        elif state is _HALF_OPEN:
            self._probes_passed += 1
            if self._probes_passed >= self._probes:
                self._move(_CLOSED, self._clock())

    def record_failure(self) -> None:
        state = self.state
        if state is _HALF_OPEN:
            self._move(_OPEN, self._clock())
            return
        if state is _OPEN:
            return
        self._consecutive += 1
        if self._consecutive >= self._consecutive_limit:
            self._move(_OPEN, self._clock())
            return
        if self._window is not None:
            now = self._clock()
            self._window.add(now, True)
            total, failed = self._window.counts(now)
            assert self._ratio is not None
            if total >= self._min_requests and failed >= self._ratio * total:
                self._move(_OPEN, now)

    def _move(self, state: BreakerState, now: float) -> None:
        previous, self.state = self.state, state
        self._changed_at = now
        self._probes_out = 0
        self._probes_passed = 0
        if state is _CLOSED:
            self._consecutive = 0
            if self._window is not None:
                self._window.clear()
        if previous is not state and self._on_transition is not None:
            self._on_transition(previous, state)
