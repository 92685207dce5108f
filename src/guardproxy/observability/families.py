"""Metric families of two features with few series each, part of `ProxyMetrics`: upstream
resilience (proxy/resilient.py; `observability/upstream.py` counts into them) and configuration
reloads (server/reload.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

# applied: all of it; partial: all but restart-only settings; failed: nothing (invalid config).
CONFIG_RELOAD_RESULTS = ("applied", "partial", "failed")


class ReloadFamilies:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.reloads = Counter(
            "guardproxy_config_reloads_total",
            "Configuration reloads (SIGHUP), by result.",
            ["result"],
            registry=registry,
        )
        # 0 while a worker's last reload failed: it serves an older configuration than its file says.
        self.last_reload_successful = Gauge(
            "guardproxy_config_last_reload_successful",
            "1 if the last configuration reload succeeded (or none was tried), 0 if it failed.",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.last_reload_successful.set(1)
        # Series that exist from the start, so increase() sees the first failure.
        for result in CONFIG_RELOAD_RESULTS:
            self.reloads.labels(result)


class UpstreamFamilies:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.attempts = Counter(
            "guardproxy_upstream_attempts_total",
            "Attempts by endpoint and outcome.",
            ["endpoint", "outcome"],
            registry=registry,
        )
        self.retries = Counter(
            "guardproxy_upstream_retries_total", "Retries by the failure's kind.", ["reason"], registry=registry
        )
        self.retry_budget_exhausted = Counter(
            "guardproxy_upstream_retry_budget_exhausted_total", "Safe retries the budget refused.", registry=registry
        )
        self.endpoint_state = Gauge(
            "guardproxy_upstream_endpoint_state",
            "1 for each endpoint's state.",
            ["endpoint", "state"],
            registry=registry,
            multiprocess_mode="livemax",
        )
