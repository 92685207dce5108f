"""The generic cell rate algorithm (GCRA), in integer microseconds.

A rate of N per PERIOD with a burst of B admits B requests at once, then one every PERIOD/N (the
emission interval). The only state per key is the theoretical arrival time (TAT): when the key's
budget would be fully restored. What a decision needs is the *backlog*, TAT minus now (never
negative): a request is admitted when its own interval still fits under the tolerance, B
intervals. No windows, so no double burst at a window boundary, and O(1) state per key.

The same decision is made by the Lua script in redis_store.py. tests/unit/ratelimit/test_gcra.py checks the
memory store against a reference model, and tests/unit/ratelimit/test_redis_store.py checks the script
against the memory store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MICROS = 1_000_000
# Redis' Lua computes in doubles: keeping TATs far below 2**53 µs keeps them exact.
MAX_TOLERANCE_US = 366 * 86400 * MICROS
_PERIODS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "s": 1, "m": 60, "h": 3600, "d": 86400}
_RATE = re.compile(r"\s*([0-9]+)\s*/\s*([0-9]*)\s*(seconds?|minutes?|hours?|days?|[smhd])\s*", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Rate:
    count: int
    period_seconds: int
    burst: int
    # Derived once: every decision reads them.
    # The interval is rounded down to whole µs: at most 1 µs per request generous, never stricter.
    interval_us: int = field(init=False)
    tolerance_us: int = field(init=False)

    def __post_init__(self) -> None:
        interval = max(1, self.period_seconds * MICROS // self.count)
        object.__setattr__(self, "interval_us", interval)
        object.__setattr__(self, "tolerance_us", interval * self.burst)


def parse_rate(text: str, burst: int | None = None) -> Rate:
    """`100/minute`, `10/second`, `1000/hour`, `5/30s`, `50/day` -> Rate (burst defaults to N)."""
    match = _RATE.fullmatch(text)
    if match is None:
        raise ValueError(f"expected N/PERIOD (second, minute, hour, day) such as 100/minute or 5/30s, got {text!r}")
    count, multiple, unit = int(match[1]), int(match[2] or 1), match[3].lower()
    if len(unit) > 1:
        unit = unit.removesuffix("s")
    if count < 1 or multiple < 1:
        raise ValueError(f"a rate needs at least 1 request per at least 1 second, got {text!r}")
    period = multiple * _PERIODS[unit]
    if period * MICROS // count < 1:
        raise ValueError(f"rate {text!r} is finer than one request per microsecond")
    if burst is not None and burst < 1:
        raise ValueError(f"burst must be at least 1, got {burst}")
    rate = Rate(count=count, period_seconds=period, burst=burst if burst is not None else count)
    if rate.tolerance_us >= MAX_TOLERANCE_US:
        raise ValueError(f"rate {text!r} with burst {rate.burst} spans more than a year")
    return rate


@dataclass(frozen=True, slots=True)
class Verdict:
    admitted: bool
    # Requests still admissible right after this one (0 when refused).
    remaining: int
    # Seconds until the whole burst is available again.
    reset_seconds: int
    # Seconds until a refused request would be admitted (0 when admitted).
    retry_after_seconds: int


def fits(backlog_us: int, rate: Rate) -> bool:
    """Whether one more request fits: the single comparison every store makes."""
    return backlog_us + rate.interval_us <= rate.tolerance_us


def verdict(backlog_us: int, rate: Rate) -> Verdict:
    """What `backlog_us` (TAT minus now, before this request, at least 0) means for this request."""
    interval, tolerance = rate.interval_us, rate.tolerance_us
    if fits(backlog_us, rate):
        after = backlog_us + interval
        return Verdict(True, (tolerance - after) // interval, _ceil_seconds(after), 0)
    wait = backlog_us + interval - tolerance
    return Verdict(False, 0, _ceil_seconds(backlog_us), max(1, _ceil_seconds(wait)))


def _ceil_seconds(micros: int) -> int:
    return -(-micros // MICROS)
