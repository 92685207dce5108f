"""The transport in front of several endpoints: balancing, retries, circuit breaking.

It is an `UpstreamTransport` wrapping one keep-alive pool per endpoint (as httpx's transports
wrap one another), so the forwarder does not change: it sends once, and this transport makes
the attempts. Each failed attempt is judged once (`proxy/retry.may_retry`): retried on another
endpoint when it is safe, the route's retry count and deadline allow it, and the retry budget
has room; otherwise the last failure is the answer. When every endpoint is out of the balancing
the request fails at once with `NoEndpointError` (503 with Retry-After), without waiting on a
timeout.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, Protocol

from mypy_extensions import mypyc_attr

from guardproxy.proxy.balancer import Balancer
from guardproxy.proxy.breaker import BreakerState
from guardproxy.proxy.endpoints import Endpoint, EndpointResponse
from guardproxy.proxy.errors import NoEndpointError, PoolExhaustedError, UpstreamError
from guardproxy.proxy.retry import ReplayBody, RetryBudget, RetryPolicy, backoff_delay, may_retry
from guardproxy.proxy.transport import UpstreamRequest, UpstreamResponse

_CLOSED: Final = BreakerState.CLOSED


# Open to subclasses outside the compiled build (observability/upstream.py, tests).
@mypyc_attr(allow_interpreted_subclasses=True)
class AttemptObserver:
    """What the transport reports per attempt; the metrics implement it (no-ops by default)."""

    def attempt(self, endpoint: str, outcome: str) -> None:
        """An attempt ended in a 5xx answer or a failure (`outcome`: "5xx" or the error's
        kind); answers below 500 are counted in `Endpoint.ok_attempts` instead."""

    def retry(self, reason: str) -> None:
        """A retry was started after a failure of this kind."""

    def budget_exhausted(self) -> None:
        """A retry was safe but the budget had no room for it."""


class Refresher(Protocol):
    """Something that changes the endpoints while the transport runs (proxy/dns.py)."""

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


class ResilientTransport:
    def __init__(
        self,
        balancer: Balancer,
        *,
        policies: Mapping[str, RetryPolicy],
        default: RetryPolicy,
        budget: RetryBudget,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        observer: AttemptObserver | None = None,
        scheme: str = "http",
    ) -> None:
        self.balancer = balancer
        self.scheme = scheme
        self.refresher: Refresher | None = None
        self._policies = dict(policies)
        self._default = default
        self._budget = budget
        self._requests = budget.requests
        self._clock = clock
        self._sleep = sleep
        self._rand = rand
        self._observer = observer
        self._only: Endpoint | None = None
        self.set_endpoints(balancer.endpoints)

    @property
    def endpoints(self) -> list[Endpoint]:
        return self.balancer.endpoints

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:  # noqa: PLR0912, PLR0915 - the hot path in one piece
        policy = self._policies.get(request.route, self._default)
        self._requests.pending += 1  # the budget's count of requests: no clock reading here
        bodiless = request.body is None
        replay: ReplayBody | None = None
        # Only an idempotent body is kept: any other is resent only when none of it left, and
        # then the client's stream is still unread.
        if not bodiless and policy.attempts and policy.replay_bytes and request.method in policy.idempotent:
            replay = ReplayBody(request.body, policy.replay_bytes)  # type: ignore[arg-type]
        deadline = self._clock() + policy.total_timeout if policy.total_timeout is not None else None
        tried: tuple[Endpoint, ...] = ()  # a tuple: no allocation unless there is a retry
        last_error: UpstreamError | None = None
        only = self._only
        while True:
            # One endpoint, not held back, its circuit closed: no balancing (the common case).
            if only is not None and not only.held_until and (only.breaker is None or only.breaker.state is _CLOSED):
                endpoint: Endpoint | None = only
            else:
                endpoint = self.balancer.pick(tried)
            if endpoint is None:
                if last_error is not None:
                    raise last_error  # a retry found every endpoint out: the failure is the answer
                request.attempts = 0
                raise NoEndpointError("no upstream endpoint is taking requests", self.balancer.retry_in())
            request.attempts = len(tried) + 1 if tried else 1
            request.endpoint = endpoint.name
            if replay is not None:
                request.body = replay.chunks()
            if only is None:
                endpoint.in_flight += 1
            try:
                response = await endpoint.pool.send(request)
            except UpstreamError as exc:
                if only is None:
                    endpoint.in_flight -= 1
                replayable = bodiless or (replay is not None and replay.replayable)
                delay = self._after_failure(
                    endpoint,
                    request=request,
                    policy=policy,
                    exc=exc,
                    replayable=replayable,
                    retries=len(tried),
                    deadline=deadline,
                )
                if delay is None:
                    raise
                last_error = exc
                tried += (endpoint,)
                if delay:
                    await self._sleep(delay)
                continue
            except BaseException:
                if only is None:
                    endpoint.in_flight -= 1
                raise
            if response.status < 500:
                endpoint.succeeded()
            else:
                endpoint.answered(response.status, response.headers, self._clock, shared=only is None)
                if self._observer is not None:
                    self._observer.attempt(endpoint.name, "5xx")
            # With several endpoints the balancer reads requests in flight until the body is done.
            return response if only is not None else EndpointResponse(response, endpoint)

    def _after_failure(
        self,
        endpoint: Endpoint,
        *,
        request: UpstreamRequest,
        policy: RetryPolicy,
        exc: UpstreamError,
        replayable: bool,
        retries: int,
        deadline: float | None,
    ) -> float | None:
        """The one retry decision after a failed attempt: the back-off before the retry, or
        None when the failure is the answer."""
        busy = isinstance(exc, PoolExhaustedError)
        if not busy:
            # A full pool is guardproxy's own limit, not the endpoint failing.
            endpoint.failed()
        observer = self._observer
        if observer is not None:
            observer.attempt(endpoint.name, exc.kind)
        if retries >= policy.attempts or isinstance(exc, NoEndpointError):
            return None
        if busy and self._only is not None:
            # It already waited connect_timeout for a free connection; waiting again on the
            # same pool would only add load and latency.
            return None
        if not may_retry(
            method=request.method,
            idempotent=policy.idempotent,
            written=exc.written,
            response_started=exc.received,
            body_replayable=replayable,
        ):
            return None
        if deadline is not None and self._clock() + policy.backoff_cap >= deadline:
            # Not enough of the route's total time left for another attempt to mean anything.
            return None
        if not self._budget.try_spend():
            if observer is not None:
                observer.budget_exhausted()
            return None
        if observer is not None:
            observer.retry(exc.kind)
        return backoff_delay(retries, base=policy.backoff_base, cap=policy.backoff_cap, rand=self._rand)

    def set_endpoints(self, endpoints: list[Endpoint]) -> None:
        """The endpoints to balance over from now on (requests in flight finish where they are)."""
        self.balancer.endpoints = list(endpoints)
        # The one endpoint, when there is only one: no balancing, no in-flight count.
        self._only = endpoints[0] if len(endpoints) == 1 else None

    async def start(self) -> None:
        if self.refresher is not None:
            await self.refresher.start()

    @property
    def open_connections(self) -> int:
        return sum(getattr(endpoint.pool, "open_connections", 0) for endpoint in self.endpoints)

    async def aclose(self) -> None:
        if self.refresher is not None:
            await self.refresher.aclose()
        for endpoint in self.endpoints:
            await endpoint.pool.aclose()
