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

from guardproxy.proxy.balancer import Balancer
from guardproxy.proxy.endpoints import Endpoint, EndpointResponse
from guardproxy.proxy.errors import NoEndpointError, UpstreamError
from guardproxy.proxy.retry import ReplayBody, RetryBudget, RetryPolicy, backoff_delay, may_retry
from guardproxy.proxy.transport import UpstreamRequest, UpstreamResponse

# Why an attempt is retried, as metrics and logs name it.
Reason = str


class AttemptObserver:
    """What the transport reports per attempt; the metrics implement it (no-ops by default)."""

    def attempt(self, endpoint: str, outcome: str) -> None:
        """An attempt ended: `outcome` is "ok", "5xx" or the error's kind."""

    def retry(self, reason: str) -> None:
        """A retry was started after a failure of this kind."""

    def budget_exhausted(self) -> None:
        """A retry was safe but the budget had no room for it."""


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
    ) -> None:
        self.balancer = balancer
        self._policies = dict(policies)
        self._default = default
        self._budget = budget
        self._clock = clock
        self._sleep = sleep
        self._rand = rand
        self._observer = observer or AttemptObserver()

    @property
    def endpoints(self) -> list[Endpoint]:
        return self.balancer.endpoints

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        policy = self._policies.get(request.route, self._default)
        self._budget.record_request()
        bodiless = request.body is None
        replay: ReplayBody | None = None
        if request.body is not None and policy.attempts and policy.replay_bytes:
            replay = ReplayBody(request.body, policy.replay_bytes)
        deadline = self._clock() + policy.total_timeout if policy.total_timeout is not None else None
        tried: list[Endpoint] = []
        observer = self._observer
        retries = 0
        while True:
            endpoint = self.balancer.pick(tried)
            if endpoint is None:
                retry_after = self.balancer.retry_in()
                raise NoEndpointError("no upstream endpoint is taking requests", retry_after)
            if replay is not None:
                request.body = replay.chunks()
            endpoint.in_flight += 1
            try:
                response = await endpoint.pool.send(request)
            except UpstreamError as exc:
                endpoint.in_flight -= 1
                endpoint.failed()
                observer.attempt(endpoint.name, exc.kind)
                replayable = bodiless or (replay is not None and replay.replayable)
                if not self._retry_allowed(
                    request=request, policy=policy, exc=exc, replayable=replayable, retries=retries, deadline=deadline
                ):
                    raise
                delay = backoff_delay(retries, base=policy.backoff_base, cap=policy.backoff_cap, rand=self._rand)
                retries += 1
                observer.retry(exc.kind)
                tried.append(endpoint)
                if delay:
                    await self._sleep(delay)
                continue
            except BaseException:
                endpoint.in_flight -= 1
                raise
            status = response.status
            endpoint.answered(status, response.headers, self._clock())
            observer.attempt(endpoint.name, "5xx" if status >= 500 else "ok")
            return EndpointResponse(response, endpoint)

    def _retry_allowed(
        self,
        *,
        request: UpstreamRequest,
        policy: RetryPolicy,
        exc: UpstreamError,
        replayable: bool,
        retries: int,
        deadline: float | None,
    ) -> bool:
        if retries >= policy.attempts or isinstance(exc, NoEndpointError):
            return False
        if not may_retry(
            method=request.method,
            idempotent=policy.idempotent,
            written=exc.written,
            response_started=exc.received,
            body_replayable=replayable,
        ):
            return False
        if deadline is not None and self._clock() + policy.backoff_cap >= deadline:
            # Not enough of the route's total time left for another attempt to mean anything.
            return False
        if not self._budget.try_spend():
            self._observer.budget_exhausted()
            return False
        return True

    @property
    def open_connections(self) -> int:
        return sum(getattr(endpoint.pool, "open_connections", 0) for endpoint in self.endpoints)

    async def aclose(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.pool.aclose()
