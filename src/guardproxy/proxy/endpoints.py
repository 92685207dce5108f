"""One instance of the upstream: its own keep-alive pool, its circuit breaker, and what the
balancer reads (requests in flight, whether it is held back or unhealthy).

Passive outlier detection is the breaker's: connect failures, cut connections, timeouts and
(with several endpoints) 502/503/504 answers count as failures, and `consecutive_failures` of
them in a row (or a failure ratio) take the endpoint out of the balancing for `open_for`
seconds. With several endpoints, a 503 with `Retry-After` holds the endpoint back for that long
(capped), as the upstream asked. Active checks (health.py) set `healthy`, and a passing one ends
an open circuit's wait at once (`check_passed`): the next request is its probe.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, Final

import structlog

from guardproxy.asgi import Headers
from guardproxy.proxy.breaker import BreakerState, CircuitBreaker
from guardproxy.proxy.transport import UpstreamResponse, UpstreamTransport

log: Final = structlog.get_logger(component="guardproxy.proxy")

_CLOSED: Final = BreakerState.CLOSED
# Statuses that say the upstream instance (not the request) is the problem.
FAILURE_STATUSES: Final = frozenset({502, 503, 504})
# The longest an upstream's Retry-After holds an endpoint back: a typo upstream must not take
# an instance out for a day.
MAX_HOLD: Final = 60.0


@dataclass(frozen=True, slots=True)
class EndpointTarget:
    name: str
    url: str


class Endpoint:
    __slots__ = ("breaker", "healthy", "held_until", "in_flight", "name", "ok_attempts", "pool", "url")

    def __init__(self, target: EndpointTarget, pool: UpstreamTransport, breaker: CircuitBreaker | None) -> None:
        self.name = target.name
        self.url = target.url
        self.pool = pool
        self.breaker = breaker
        self.in_flight = 0
        self.held_until = 0.0
        self.healthy = True
        # Attempts answered below 500: a plain int on the request path, read by the metrics.
        self.ok_attempts = 0

    def available(self, now: float) -> bool:
        """Whether the balancer may send it a request now (health aside)."""
        if self.held_until:
            if now < self.held_until:
                return False
            self.held_until = 0.0
        breaker = self.breaker
        return breaker is None or breaker.would_allow()

    def plainly_available(self) -> bool:
        """Available without a clock reading: not held back, its circuit closed."""
        breaker = self.breaker
        return not self.held_until and (breaker is None or breaker.state is _CLOSED)

    def take(self) -> bool:
        """Commit to sending a request here: takes a half-open probe's place if need be."""
        breaker = self.breaker
        return breaker is None or breaker.allow()

    def check_passed(self) -> None:
        """An active health check found it healthy: an open circuit goes half-open now rather
        than after `open_for`, as Envoy's and HAProxy's active checks return a host to service.
        Requests still decide whether it closes; a held-back endpoint stays held."""
        if self.breaker is not None:
            self.breaker.half_open()

    def failed(self) -> None:
        if self.breaker is not None:
            self.breaker.record_failure()

    def succeeded(self) -> None:
        """An answer below 500: the common case, kept short."""
        self.ok_attempts += 1
        breaker = self.breaker
        if breaker is not None:
            breaker.record_success()

    def answered(self, status: int, headers: Headers, clock: Callable[[], float], *, shared: bool) -> None:
        """A 5xx answer. When the endpoint `shared` the load with others, 502, 503 and 504
        count against it and a 503's Retry-After holds it back, so traffic goes elsewhere. The
        only endpoint is never taken out for its answers: it was reached, and relaying what it
        said is what a drop-in proxy does (one route's 503 must not become every route's)."""
        breaker = self.breaker
        if shared and status in FAILURE_STATUSES:
            if breaker is not None:
                breaker.record_failure()
            if status == 503:
                delay = retry_after_seconds(headers)
                if delay:
                    self.held_until = clock() + delay
        elif breaker is not None:
            breaker.record_success()

    def state(self, now: float) -> str:
        """For /readyz and the metrics: open, half_open, held, unhealthy or healthy."""
        if self.breaker is not None and self.breaker.state is not BreakerState.CLOSED:
            return str(self.breaker.state)
        if now < self.held_until:
            return "held"
        return "healthy" if self.healthy else "unhealthy"


def retry_after_seconds(headers: Headers, now: float | None = None) -> float:
    """Retry-After (RFC 9110 §10.2.3) in seconds from `now` (wall-clock, time.time()), at most
    MAX_HOLD: delay-seconds, or an HTTP-date (0 once past; our clock and the upstream's are
    assumed to roughly agree, and the cap bounds what a skew costs). 0 when absent or not
    understood: a hostile or broken value is ignored, never an error."""
    for name, value in headers:
        if name == b"retry-after":
            text = value.strip()
            if text.isdigit():
                return min(float(text), MAX_HOLD)
            return _seconds_until(text.decode("latin-1"), time.time() if now is None else now)
    return 0.0


def _seconds_until(http_date: str, now: float) -> float:
    try:
        when = parsedate_to_datetime(http_date)
        if when.tzinfo is None:
            # The asctime form has no zone, and HTTP-dates are always UTC (RFC 9110 §5.6.7).
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    except (ValueError, OverflowError):
        # What email.utils raises for what is no date, or a field out of range (year 99999).
        return 0.0
    return min(max(seconds, 0.0), MAX_HOLD)


class EndpointResponse:
    """The endpoint's response, counting the request as in flight until it is closed."""

    __slots__ = ("_endpoint", "_response", "headers", "status")

    def __init__(self, response: UpstreamResponse, endpoint: Endpoint) -> None:
        self._response = response
        self._endpoint: Endpoint | None = endpoint
        self.status = response.status
        self.headers = response.headers

    def read_chunk(self) -> Coroutine[Any, Any, bytes]:
        # The response's own coroutine: no coroutine of this wrapper's per chunk.
        return self._response.read_chunk()

    @property
    def finished(self) -> bool:
        return self._response.finished

    @property
    def chunk_ready(self) -> bool:
        return self._response.chunk_ready

    @property
    def trailers(self) -> Headers:
        return self._response.trailers

    def close(self) -> None:
        endpoint, self._endpoint = self._endpoint, None
        if endpoint is not None:
            endpoint.in_flight -= 1
        self._response.close()


def endpoint_name(url: str, name: str | None) -> str:
    """The configured name, else host:port from the url."""
    return name or url.split("://", 1)[-1].rstrip("/")


def log_transitions(name: str) -> Callable[[BreakerState, BreakerState], None]:
    """A breaker's `on_transition`: one log line per change of an endpoint's circuit."""

    def moved(previous: BreakerState, state: BreakerState) -> None:
        log_method = log.info if state is BreakerState.CLOSED else log.warning
        log_method("upstream endpoint circuit changed", endpoint=name, previous=str(previous), state=str(state))

    return moved
