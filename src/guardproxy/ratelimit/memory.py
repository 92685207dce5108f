"""The in-process store: right for a single instance, and the fallback when Redis fails.

Each key's TAT lives in a dict ordered by last update. A key whose TAT has passed is equivalent
to an absent one, so expired keys are dropped from the front as requests come in: memory follows
the number of keys active within one burst's time, not the number of clients ever seen. A hard
cap bounds it against address-spraying; past it the stalest keys are forgotten (they get a fresh
budget, which costs an attacker a new address per burst).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from guardproxy.ratelimit.gcra import Rate, fits

# Expired keys are looked for every few checks, and at most this many per check on average, so
# one request never pays for a big sweep.
_SWEEP_EVERY = 16
_SWEEP_PER_CHECK = 8


class MemoryStore:
    def __init__(self, *, max_keys: int, clock: Callable[[], int] | None = None) -> None:
        self.max_keys = max_keys
        self._clock = clock or _monotonic_us
        self._tats: dict[str, int] = {}
        self._checks_since_sweep = 0

    def __len__(self) -> int:
        return len(self._tats)

    def check(self, keys: Sequence[str], rates: Sequence[Rate], enforce: Sequence[bool]) -> list[int]:
        """Decide one request against several limits at once, all or nothing: returns each key's
        backlog before this request; every limit that admits it advances, unless an enforcing
        limit refuses it, in which case nothing changes. Redis' script does exactly this."""
        now = self._clock()
        tats = self._tats
        backlogs = []
        admitted = []
        refused = False
        for key, rate, enforcing in zip(keys, rates, enforce, strict=True):
            backlog = tats.get(key, now) - now
            backlog = backlog if backlog > 0 else 0
            backlogs.append(backlog)
            ok = fits(backlog, rate)
            admitted.append(ok)
            refused = refused or (enforcing and not ok)
        if not refused:
            for key, rate, backlog, ok in zip(keys, rates, backlogs, admitted, strict=True):
                if ok:
                    tats.pop(key, None)  # re-insert at the end: the dict stays in update order
                    tats[key] = now + backlog + rate.interval_us
        self._sweep(now)
        return backlogs

    def retain(self, keep: Callable[[str], bool]) -> None:
        """Forget every key `keep` refuses: a reload drops the budgets of rules it changed."""
        self._tats = {key: tat for key, tat in self._tats.items() if keep(key)}

    def _sweep(self, now: int) -> None:
        self._checks_since_sweep += 1
        if self._checks_since_sweep < _SWEEP_EVERY:
            return
        self._checks_since_sweep = 0
        tats = self._tats
        for _ in range(_SWEEP_EVERY * _SWEEP_PER_CHECK):
            if not tats:
                return
            oldest = next(iter(tats))
            if tats[oldest] > now and len(tats) <= self.max_keys:
                return
            del tats[oldest]


def _monotonic_us() -> int:
    return time.monotonic_ns() // 1000
