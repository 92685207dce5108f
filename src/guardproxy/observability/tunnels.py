"""Metric families of the WebSocket tunnels (proxy/tunnel.py), part of `ProxyMetrics`.

Tunnels open and close rarely next to requests, so these are counted straight into
prometheus-client when a tunnel opens or closes; no per-chunk work touches them (the bytes of
open tunnels are added at every metrics flush, proxy/tunnels.py). Every series
exists from the start (`declare`), so a dashboard or an alert sees zero, not nothing, while no
tunnel has opened yet.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Why a handshake got no tunnel: 400, 403 (Origin), 503 (limit, draining), 502 (a 101 that
# does not answer the key or switches to another protocol).
REFUSAL_REASONS = ("malformed", "origin", "limit", "draining", "bad_switch")
DIRECTIONS = ("to_upstream", "to_client")
CLOSERS = ("client", "upstream", "idle_timeout", "max_lifetime", "shutdown")
# Tunnels live from seconds to days.
DURATION_BUCKETS = (1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0, 43200.0, 86400.0)


class TunnelMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.open = Gauge(
            "guardproxy_websocket_tunnels_open",
            "WebSocket (upgrade) tunnels open, summed over live workers.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.opened = Counter(
            "guardproxy_websocket_tunnels_opened_total",
            "Upgrade tunnels opened (the upstream's 101 passed on), by route.",
            ["route"],
            registry=registry,
        )
        self.refused = Counter(
            "guardproxy_websocket_tunnels_refused_total",
            "Upgrade handshakes refused: malformed (400), origin (403), limit or draining (503), "
            "bad_switch (a 101 not answering the handshake, 502).",
            ["reason"],
            registry=registry,
        )
        self.closed = Counter(
            "guardproxy_websocket_tunnels_closed_total",
            "Upgrade tunnels closed, by who closed: client, upstream, idle_timeout, max_lifetime, shutdown.",
            ["closed_by"],
            registry=registry,
        )
        self.bytes = Counter(
            "guardproxy_websocket_bytes_total",
            "Bytes carried by upgrade tunnels (open ones up to the last flush), by direction (to_upstream, to_client).",
            ["direction"],
            registry=registry,
        )
        self.duration = Histogram(
            "guardproxy_websocket_tunnel_duration_seconds",
            "How long upgrade tunnels stayed open.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        for reason in REFUSAL_REASONS:
            self.refused.labels(reason)
        for closer in CLOSERS:
            self.closed.labels(closer)
        for direction in DIRECTIONS:
            self.bytes.labels(direction)

    def declare_routes(self, routes: Iterable[str]) -> None:
        for route in routes:
            self.opened.labels(route)
