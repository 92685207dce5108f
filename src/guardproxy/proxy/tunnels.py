"""The tunnels of one runtime: how many are open per route (the `websocket.max_tunnels` budget),
the ticket a handshake carries from the WebSocket guard to the upgrade forwarder, and what a
tunnel leaves behind when it closes (metrics, one log line)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import orjson

from guardproxy.http1.upgrade import WebSocketHandshake
from guardproxy.observability.access_log import Clock
from guardproxy.observability.tunnels import TunnelMetrics
from guardproxy.proxy.tunnel import Tunnel, TunnelLimits

# Scope key of the ticket: present only on a handshake the guards let through to a tunnel.
TICKET_KEY = "guardproxy.tunnel"


@dataclass(slots=True)
class TunnelTicket:
    """A tunnel slot reserved for one handshake; the guard gives it back unless a tunnel opened."""

    route: str
    # The upgrade token asked for (`websocket`, or another one the route lets through).
    protocol: bytes
    # The checked WebSocket handshake; None for another protocol.
    handshake: WebSocketHandshake | None
    limits: TunnelLimits
    # Follow frame boundaries to send 1001 Going Away at shutdown (websocket.going_away_at_shutdown).
    going_away: bool = False
    opened: bool = False


class Tunnels:
    def __init__(
        self,
        *,
        metrics: TunnelMetrics | None = None,
        write_log: Callable[[bytes], None] | None = None,
    ) -> None:
        self._metrics = metrics
        self._write_log = write_log
        self._clock = Clock()
        # Reserved slots by route: tunnels open, and handshakes on their way to becoming one.
        self.by_route: dict[str, int] = {}
        self.open: set[Tunnel] = set()

    def reserve(self, route: str, limit: int) -> bool:
        count = self.by_route.get(route, 0)
        if count >= limit:
            return False
        self.by_route[route] = count + 1
        return True

    def release(self, route: str) -> None:
        self.by_route[route] -= 1

    def refused(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.refused.labels(reason).inc()

    def opened(self, tunnel: Tunnel, route: str) -> None:
        self.open.add(tunnel)
        if self._metrics is not None:
            self._metrics.opened.labels(route).inc()
            self._metrics.open.inc()

    def count_bytes(self) -> None:
        """Called at every metrics flush: the bytes of open tunnels so far, so a long tunnel's
        traffic shows while it lasts, not only once it closes."""
        for tunnel in self.open:
            self._count(tunnel)

    def closed(self, tunnel: Tunnel) -> None:
        self.open.discard(tunnel)
        record = tunnel.record()
        self.release(record.route)
        self._count(tunnel)
        metrics = self._metrics
        if metrics is not None:
            metrics.open.dec()
            metrics.closed.labels(record.closed_by).inc()
            metrics.duration.observe(record.duration)
        if self._write_log is not None:
            self._write_log(
                orjson.dumps(
                    {
                        "timestamp": self._clock.now(),
                        "level": "info",
                        "event": "tunnel_closed",
                        "request_id": record.request_id,
                        "client": record.client,
                        "route": record.route,
                        "path": record.path,
                        "protocol": record.protocol,
                        "closed_by": record.closed_by,
                        "duration_ms": int(record.duration * 1_000_000) / 1000,
                        "bytes_to_upstream": record.bytes_to_upstream,
                        "bytes_to_client": record.bytes_to_client,
                    },
                    option=orjson.OPT_APPEND_NEWLINE,
                )
            )

    def _count(self, tunnel: Tunnel) -> None:
        to_upstream, to_client = tunnel.take_bytes()
        if self._metrics is not None:
            if to_upstream:
                self._metrics.bytes.labels("to_upstream").inc(to_upstream)
            if to_client:
                self._metrics.bytes.labels("to_client").inc(to_client)
