"""Which endpoint gets the next attempt.

`least_in_flight` (the default) is the power of two choices: two endpoints drawn at random, the
one with fewer requests in flight wins; it follows load nearly as well as a full scan, without
sending every request to the same momentarily idle instance. `round_robin` takes them in turn.

Endpoints out of the balancing (circuit open, held back) are skipped; unhealthy ones (active
checks) only when a healthy one is left, so a failed health check alone never refuses traffic
that an endpoint could still serve. A retry prefers an endpoint not tried yet.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from guardproxy.config.resilience import Balance
from guardproxy.proxy.endpoints import Endpoint


class Balancer:
    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        balance: Balance,
        clock: Callable[[], float],
        rand: random.Random | None = None,
    ) -> None:
        self.endpoints = list(endpoints)
        self._round_robin = balance == "round_robin"
        self._clock = clock
        self._rand = rand or random.Random()  # noqa: S311 - spreading load, not a secret
        self._next = 0

    def pick(self, tried: Sequence[Endpoint] = ()) -> Endpoint | None:
        """An endpoint for the next attempt, committed to (see `Endpoint.take`); None when
        every endpoint is out of the balancing."""
        endpoints = self.endpoints
        if not tried and all(endpoint.plainly_available() and endpoint.healthy for endpoint in endpoints):
            # The common case: every endpoint usable, no clock reading, no list built.
            candidates = endpoints
        else:
            candidates = self._candidates(tried)
        while candidates:
            endpoint = self._choose(candidates)
            if endpoint.take():
                return endpoint
            # Its half-open probes are all out: the others may still take it.
            candidates = [candidate for candidate in candidates if candidate is not endpoint]
        return None

    def _candidates(self, tried: Sequence[Endpoint]) -> list[Endpoint]:
        now = self._clock()
        candidates = [endpoint for endpoint in self.endpoints if endpoint.available(now)]
        healthy = [endpoint for endpoint in candidates if endpoint.healthy]
        if healthy:
            candidates = healthy
        if tried:
            fresh = [endpoint for endpoint in candidates if endpoint not in tried]
            if fresh:
                candidates = fresh
        return candidates

    def retry_in(self) -> float:
        """Seconds until some endpoint takes traffic again (for Retry-After)."""
        now = self._clock()
        waits = [
            max(endpoint.held_until - now, endpoint.breaker.retry_in() if endpoint.breaker is not None else 0.0)
            for endpoint in self.endpoints
        ]
        return min(waits, default=1.0)

    def _choose(self, candidates: Sequence[Endpoint]) -> Endpoint:
        if len(candidates) == 1:
            return candidates[0]
        if self._round_robin:
            count = len(self.endpoints)
            for step in range(count):
                endpoint = self.endpoints[(self._next + step) % count]
                if endpoint in candidates:
                    self._next = (self._next + step + 1) % count
                    return endpoint
        # Two different endpoints drawn at random (cheaper than random.sample).
        count = len(candidates)
        draw = self._rand.random
        first = int(draw() * count)
        second = int(draw() * (count - 1))
        if second >= first:
            second += 1
        one, other = candidates[first], candidates[second]
        return other if other.in_flight < one.in_flight else one
