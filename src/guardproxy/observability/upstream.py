"""What the resilient transport reports, counted for Prometheus: attempts by endpoint and
outcome, retries by reason and retry-budget exhaustion (plain counts on the request path, moved
into the metric families at each flush), and each endpoint's state, breaker and health in one
gauge read at each flush (`guardproxy_upstream_endpoint_state` is 1 for the state each endpoint
is in). Endpoint labels are the configured names: a bounded set."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from guardproxy.observability.metrics import MetricSources
from guardproxy.proxy.endpoints import Endpoint
from guardproxy.proxy.resilient import AttemptObserver

RETRY_REASONS = ("connect", "closed", "timeout", "protocol", "pool_exhausted")
# Endpoint.state(): health checks (healthy, unhealthy), a 503's Retry-After (held), breaker.
ENDPOINT_STATES = ("healthy", "unhealthy", "held", "open", "half_open")


class UpstreamMetrics(AttemptObserver):
    def __init__(self, sources: MetricSources) -> None:
        self._families = families = sources.families
        self._attempts = sources.counted(families.upstream.attempts)
        self._retries = sources.counted(families.upstream.retries)
        self._exhausted = 0
        self._endpoints: Callable[[], Sequence[Endpoint]] = tuple
        # Series that exist from the start, so a rate() sees the first retry.
        for reason in RETRY_REASONS:
            families.upstream.retries.labels(reason)
        sources.watch(self._flush)

    def attempt(self, endpoint: str, outcome: str) -> None:
        self._attempts.add(endpoint, outcome)

    def retry(self, reason: str) -> None:
        self._retries.add(reason)

    def budget_exhausted(self) -> None:
        self._exhausted += 1

    def watch(self, endpoints: Callable[[], Sequence[Endpoint]]) -> None:
        """Report the states of the endpoints `endpoints()` gives (they change with DNS) at
        every flush."""
        self._endpoints = endpoints
        for endpoint in endpoints():
            self._families.upstream.attempts.labels(endpoint.name, "ok")

    def _flush(self) -> None:
        families = self._families
        if self._exhausted:
            families.upstream.retry_budget_exhausted.inc(self._exhausted)
            self._exhausted = 0
        now = time.monotonic()
        for endpoint in self._endpoints():
            if endpoint.ok_attempts:
                families.upstream.attempts.labels(endpoint.name, "ok").inc(endpoint.ok_attempts)
                endpoint.ok_attempts = 0
            current = endpoint.state(now)
            for state in ENDPOINT_STATES:
                families.upstream.endpoint_state.labels(endpoint.name, state).set(1 if state == current else 0)
