"""Prometheus metrics. Labels come from route names and small fixed sets only: a label taken from
client data (raw path, arbitrary method) would let any client create unbounded series.

Requests are not counted into prometheus-client on the hot path: its `inc()` and `observe()`
take a lock each time, and in multiprocess mode also write an mmap'd file, which cost about
7 µs (13 µs with several workers) per request here. `MetricsGuard` adds to plain numbers
instead (`tally.py`), and `ProxyMetrics.flush` moves them into the prometheus-client metrics
before every scrape and, with several workers, every `FLUSH_INTERVAL` seconds.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import REGISTRY

from guardproxy.observability.families import ReloadFamilies, UpstreamFamilies
from guardproxy.observability.multiprocess import MULTIPROC_DIR_ENV, WorkerProcessMetrics, aggregated_registry
from guardproxy.observability.tally import DURATION_BUCKETS, RouteTally
from guardproxy.observability.tunnels import TunnelMetrics
from guardproxy.outcomes import PROTOCOL_OUTCOMES, Outcome

# With several workers, a scrape is answered by one of them: the others' figures are at most
# this many seconds old. Prometheus scrapes every 15 s or more.
FLUSH_INTERVAL = 1.0
RATELIMIT_DECISIONS = ("allowed", "limited", "dry_run_limited")
RATELIMIT_STORE_ERROR_KINDS = ("timeout", "connection", "script", "other")
IDEMPOTENCY_STORE_ERROR_KINDS = ("timeout", "connection", "script", "corrupt", "other")
_UPSTREAM_FAILURES: dict[str, str] = {
    Outcome.UPSTREAM_ERROR: "unavailable",
    Outcome.UPSTREAM_TIMEOUT: "timeout",
    Outcome.UPSTREAM_BUSY: "pool_exhausted",
    Outcome.UPSTREAM_CIRCUIT_OPEN: "circuit_open",
}


class PlainCounts:
    """Increments by label values, in a plain dict: about 0.2 µs where a prometheus-client
    inc() costs several (a lock, label validation, and a file write with several workers)."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[tuple[str, ...], int] = {}

    def add(self, *labels: str) -> None:
        counts = self._counts
        counts[labels] = counts.get(labels, 0) + 1

    def take(self) -> dict[tuple[str, ...], int]:
        counts, self._counts = self._counts, {}
        return counts


class MetricSources:
    """What one runtime counts into the process's metrics: its request tallies, its plain counts,
    and the figures read from its objects at every flush. A reload builds a new runtime, so a new
    set of sources; `close` hands over the last of the old one's counts and detaches it, so
    nothing is lost and nothing keeps an old runtime alive."""

    def __init__(self, metrics: ProxyMetrics) -> None:
        # The process's metric families, for the counts a runtime keeps of its own.
        self.families = metrics
        self.tallies: list[Callable[[], dict[str, RouteTally]]] = []
        self.counts: list[tuple[Counter, PlainCounts]] = []
        self.in_flight: Callable[[], float] = lambda: 0
        self.upstream_up: Callable[[], bool] | None = None
        # Called at every flush: gauges set from the runtime's objects, figures a source keeps
        # itself (endpoint states, the bytes of open tunnels).
        self.flush_hooks: list[Callable[[], None]] = []

    def add_tally(self, take: Callable[[], dict[str, RouteTally]]) -> None:
        """Register a source of request tallies: `take()` hands over what was counted so far."""
        self.tallies.append(take)

    def counted(self, counter: Counter) -> PlainCounts:
        """Counts for `counter` kept in a plain dict on the hot path, moved into it by flush()."""
        counts = PlainCounts()
        self.counts.append((counter, counts))
        return counts

    def watch_in_flight(self, in_flight: Callable[[], float]) -> None:
        self.in_flight = in_flight

    def watch_upstream(self, up: Callable[[], bool]) -> None:
        """The readiness probe's latest verdict on the upstream, read at every flush."""
        self.upstream_up = up

    def watch(self, update: Callable[[], None]) -> None:
        self.flush_hooks.append(update)

    def ratelimit_fallback(self, active: bool) -> None:
        self.families.ratelimit_fallback_active.set(int(active))

    def close(self) -> None:
        self.families.detach(self)


class ProxyMetrics:
    """Every metric guardproxy exposes, and its /metrics rendering.

    In-process (one worker): the metrics live in `registry` (prometheus-client's default one,
    with its process and platform collectors). Multiprocess (`multiprocess_dir`, several
    workers): every worker writes its own files there and a scrape merges all of them.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, multiprocess_dir: str | None = None) -> None:
        self.multiprocess = multiprocess_dir is not None
        if registry is None:
            registry = CollectorRegistry() if self.multiprocess else REGISTRY
        self.requests = Counter(
            "guardproxy_requests_total",
            "Requests answered by the proxy listener.",
            ["route", "method", "status_class", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "guardproxy_request_duration_seconds",
            "Time from a request's head to the end of its response.",
            ["route"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.upstream_duration = Histogram(
            "guardproxy_upstream_duration_seconds",
            "Time the upstream took to answer with its response head.",
            ["route"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.request_bytes = Counter(
            "guardproxy_request_body_bytes_total", "Request body bytes received.", ["route"], registry=registry
        )
        self.response_bytes = Counter(
            "guardproxy_response_body_bytes_total",
            "Response body bytes sent (before compression).",
            ["route"],
            registry=registry,
        )
        self.upstream_errors = Counter(
            "guardproxy_upstream_errors_total",
            "Requests the upstream failed: unavailable, timeout or pool_exhausted.",
            ["route", "kind"],
            registry=registry,
        )
        self.protocol_refusals = Counter(
            "guardproxy_protocol_refusals_total",
            "Requests the server refused before the guard chain: malformed (400), head_timeout (408), "
            "uri_too_long (414), head_too_large (431), unsupported_coding (501).",
            ["reason"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "guardproxy_requests_in_flight",
            "Requests being answered, summed over live workers.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.upstream_up = Gauge(
            "guardproxy_upstream_up",
            "1 while the readiness probe reaches the upstream (in any live worker), else 0.",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.workers = Gauge(
            "guardproxy_workers", "Worker processes serving.", registry=registry, multiprocess_mode="livesum"
        )
        self.log_lines_dropped = Counter(
            "guardproxy_log_lines_dropped_total",
            "Log lines dropped because the log consumer fell behind.",
            registry=registry,
        )
        self.config = ReloadFamilies(registry)
        # Rate limiting: the limiter counts its own decisions into these.
        self.ratelimit_decisions = Counter(
            "guardproxy_ratelimit_decisions_total",
            "Rate-limit decisions by rule: allowed, limited, or dry_run_limited (over the limit, let through).",
            ["rule", "decision"],
            registry=registry,
        )
        self.ratelimit_store_errors = Counter(
            "guardproxy_ratelimit_store_errors_total",
            "Rate-limit store failures: timeout, connection, script or other.",
            ["kind"],
            registry=registry,
        )
        self.ratelimit_fallback_active = Gauge(
            "guardproxy_ratelimit_fallback_active",
            "1 while a worker limits from its local fallback because the shared store is failing.",
            registry=registry,
            multiprocess_mode="livemax",
        )
        # Idempotency-Key: what keyed requests met, what became of their responses, store trouble.
        self.idempotency_decisions = Counter(
            "guardproxy_idempotency_decisions_total",
            "Requests with an Idempotency-Key by decision: executed, replayed, conflict (409), mismatch (422), "
            "missing_key or malformed_key (400), unprotected (store down, forwarded) or refused (store down, 503).",
            ["route", "decision"],
            registry=registry,
        )
        self.idempotency_responses = Counter(
            "guardproxy_idempotency_responses_total",
            "Responses to requests that held an Idempotency-Key lock: stored for replay, or why not "
            "(server_error, transient, too_large, incomplete, not_upstream, lock_lost, store_failed).",
            ["route", "result"],
            registry=registry,
        )
        self.idempotency_store_errors = Counter(
            "guardproxy_idempotency_store_errors_total",
            "Idempotency store failures: timeout, connection, script, corrupt or other.",
            ["kind"],
            registry=registry,
        )
        # Edge authentication: the auth guard counts its decisions and key-set fetches into these.
        self.auth_decisions = Counter(
            "guardproxy_auth_decisions_total",
            "Authentication decisions by provider (a JWT provider, api_keys, forward, or none) and result "
            "(valid, missing, expired, bad_signature, bad_audience, insufficient_scope, no_keys, ...).",
            ["provider", "result"],
            registry=registry,
        )
        self.auth_jwks_fetches = Counter(
            "guardproxy_auth_jwks_fetches_total",
            "JWKS fetches by provider and result: ok, not_modified or error.",
            ["provider", "result"],
            registry=registry,
        )
        # Deprecated routes: the deprecation guard counts every request to one.
        self.deprecated_requests = Counter(
            "guardproxy_deprecated_requests_total",
            "Requests to routes with a deprecation or sunset date, by route: who still calls them.",
            ["route"],
            registry=registry,
        )
        # Upstream resilience (proxy/resilient.py): observability/upstream.py counts into these.
        self.upstream = UpstreamFamilies(registry)
        self.websocket = TunnelMetrics(registry)
        # Known label values start at zero, so their series exist before the first event and
        # increase() over a window that contains the first one is not blind to it.
        for outcome in PROTOCOL_OUTCOMES:
            self.protocol_refusals.labels(outcome)
        for kind in RATELIMIT_STORE_ERROR_KINDS:
            self.ratelimit_store_errors.labels(kind)
        for kind in IDEMPOTENCY_STORE_ERROR_KINDS:
            self.idempotency_store_errors.labels(kind)
        self.workers.set(1)
        self._process = WorkerProcessMetrics(registry) if self.multiprocess else None
        self._exposition = aggregated_registry(multiprocess_dir, registry) if multiprocess_dir else registry
        self._sources: list[MetricSources] = []
        self._log_lines_dropped: Callable[[], int] = lambda: 0
        self._log_lines_dropped_seen = 0
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def for_this_process(cls) -> ProxyMetrics:
        """Multiprocess when the supervisor (or the operator) set PROMETHEUS_MULTIPROC_DIR: that is
        what made prometheus-client store values in files when it was imported."""
        return cls(multiprocess_dir=os.environ.get(MULTIPROC_DIR_ENV))

    def declare_ratelimit_rules(self, rules: Iterable[str]) -> None:
        """Start each rule's decision series at zero (see the comment in __init__)."""
        for rule in rules:
            for decision in RATELIMIT_DECISIONS:
                self.ratelimit_decisions.labels(rule, decision)

    def declare_idempotency_routes(
        self, routes: Iterable[str], decisions: Sequence[str], results: Sequence[str]
    ) -> None:
        """Start each idempotent route's series at zero (see the comment in __init__)."""
        for route in routes:
            for decision in decisions:
                self.idempotency_decisions.labels(route, decision)
            for result in results:
                self.idempotency_responses.labels(route, result)

    def declare_auth_providers(self, providers: Iterable[str], remote: Iterable[str]) -> None:
        """Start the valid and failure series of each provider, and the fetch series of those
        with a JWKS URL, at zero (see the comment in __init__)."""
        for provider in providers:
            for result in ("valid", "missing", "expired", "bad_signature", "no_keys"):
                self.auth_decisions.labels(provider, result)
        for provider in remote:
            for result in ("ok", "not_modified", "error"):
                self.auth_jwks_fetches.labels(provider, result)

    def declare_deprecated_routes(self, routes: Iterable[str]) -> None:
        """Start each deprecated route's series at zero (see the comment in __init__)."""
        for route in routes:
            self.deprecated_requests.labels(route)

    def sources(self) -> MetricSources:
        """A new set of per-runtime sources, flushed with every other until closed."""
        sources = MetricSources(self)
        self._sources.append(sources)
        return sources

    def detach(self, sources: MetricSources) -> None:
        """The last flush of a closing runtime's counts, then forget them."""
        self._flush_sources(sources)
        self._sources.remove(sources)

    def watch_log_lines_dropped(self, log_lines_dropped: Callable[[], int]) -> None:
        """The process's log sink counts its drops; read at every flush."""
        self._log_lines_dropped = log_lines_dropped

    def flush(self) -> None:
        """Move what was counted since the last flush into the prometheus-client metrics."""
        for sources in self._sources:
            self._flush_sources(sources)
        # While a reload overlaps two runtimes, both have requests in flight; the newest one
        # probes the upstream the process now forwards to.
        self.in_flight.set(sum(sources.in_flight() for sources in self._sources))
        watched = [sources.upstream_up for sources in self._sources if sources.upstream_up is not None]
        if watched:
            self.upstream_up.set(1 if watched[-1]() else 0)
        dropped = self._log_lines_dropped()
        if dropped > self._log_lines_dropped_seen:
            self.log_lines_dropped.inc(dropped - self._log_lines_dropped_seen)
            self._log_lines_dropped_seen = dropped
        if self._process is not None:
            self._process.update()

    def _flush_sources(self, sources: MetricSources) -> None:
        for take in sources.tallies:
            for route, tally in take().items():
                self._flush_route(route, tally)
        for counter, counts in sources.counts:
            for labels, count in counts.take().items():
                counter.labels(*labels).inc(count)
        for hook in sources.flush_hooks:
            hook()

    def _flush_route(self, route: str, tally: RouteTally) -> None:
        for (method, status_class, outcome), count in tally.requests.items():
            self.requests.labels(route, method, status_class, outcome).inc(count)
            # Two views derived here, off the hot path: upstream failures by kind, and the
            # server's own refusals by reason (they are requests too, with a route and a status).
            failure = _UPSTREAM_FAILURES.get(outcome)
            if failure is not None:
                self.upstream_errors.labels(route, failure).inc(count)
            elif outcome in PROTOCOL_OUTCOMES:
                self.protocol_refusals.labels(outcome).inc(count)
        _add_observations(self.duration.labels(route), tally.duration, tally.duration_sum)
        if tally.upstream_sum:
            _add_observations(self.upstream_duration.labels(route), tally.upstream, tally.upstream_sum)
        if tally.request_bytes:
            self.request_bytes.labels(route).inc(tally.request_bytes)
        if tally.response_bytes:
            self.response_bytes.labels(route).inc(tally.response_bytes)

    def start_flushing(self) -> None:
        """With several workers, flush every FLUSH_INTERVAL seconds: a scrape answered by another
        worker reads this one's figures from its files. One worker flushes when it is scraped."""
        if self.multiprocess and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self._flush_and_rearm)

    def stop_flushing(self) -> None:
        """The final flush, once requests are done: nothing counted is left behind."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()

    def _flush_and_rearm(self) -> None:
        self.flush()
        self._timer = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self._flush_and_rearm)

    def render(self) -> bytes:
        self.flush()
        return generate_latest(self._exposition)


def _add_observations(histogram: Any, counts: list[int], total: float) -> None:
    """Add counted observations to a histogram child: counts[i] of them in bucket i, summing to
    `total`. prometheus-client has no bulk observe(); its buckets and sum are value objects (an
    mmap'd file in multiprocess mode), so each touched bucket is written once per flush rather
    than once per request. tests/unit/observability/test_metrics.py checks the result against observe()."""
    buckets = histogram._buckets
    for index, count in enumerate(counts):
        if count:
            buckets[index].inc(count)
    histogram._sum.inc(total)
