"""The tunnels' bookkeeping (proxy/tunnels.py): per-route budgets, and the metrics and log line
of tunnels, counted into a registry of the test's own."""

from __future__ import annotations

from typing import Any, cast

import orjson
from prometheus_client import CollectorRegistry

from guardproxy.observability.tunnels import TunnelMetrics
from guardproxy.proxy.tunnel import Tunnel, TunnelRecord
from guardproxy.proxy.tunnels import Tunnels


class FakeTunnel:
    """Stands in for a Tunnel: what the bookkeeping reads of one."""

    def __init__(self) -> None:
        self.bytes_to_upstream = 0
        self.bytes_to_client = 0
        self._counted = (0, 0)

    def take_bytes(self) -> tuple[int, int]:
        up, down = self.bytes_to_upstream - self._counted[0], self.bytes_to_client - self._counted[1]
        self._counted = (self.bytes_to_upstream, self.bytes_to_client)
        return up, down

    def record(self) -> TunnelRecord:
        return TunnelRecord("live", "r1", "203.0.113.9", "/ws", "websocket", "client", 2.5, 10, 20)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return found if found is not None else -1.0


def test_the_budget_is_per_route_and_given_back() -> None:
    tunnels = Tunnels()
    assert tunnels.reserve("live", 2)
    assert tunnels.reserve("live", 2)
    assert not tunnels.reserve("live", 2)
    assert tunnels.reserve("other", 1)
    tunnels.release("live")
    assert tunnels.reserve("live", 2)
    assert tunnels.by_route == {"live": 2, "other": 1}


def test_metrics_follow_a_tunnel_from_open_to_close_with_bytes_counted_while_it_lasts() -> None:
    registry = CollectorRegistry()
    metrics = TunnelMetrics(registry)
    metrics.declare_routes(["live"])
    lines: list[bytes] = []
    tunnels = Tunnels(metrics=metrics, write_log=lines.append)
    assert value(registry, "guardproxy_websocket_tunnels_opened_total", route="live") == 0
    assert value(registry, "guardproxy_websocket_tunnels_refused_total", reason="origin") == 0
    fake = FakeTunnel()
    tunnel = cast(Tunnel, fake)
    tunnels.reserve("live", 5)
    tunnels.opened(tunnel, "live")
    assert value(registry, "guardproxy_websocket_tunnels_open") == 1
    fake.bytes_to_upstream, fake.bytes_to_client = 4, 7
    tunnels.count_bytes()
    assert value(registry, "guardproxy_websocket_bytes_total", direction="to_upstream") == 4
    fake.bytes_to_upstream, fake.bytes_to_client = 10, 20
    tunnels.closed(tunnel)
    assert value(registry, "guardproxy_websocket_bytes_total", direction="to_upstream") == 10
    assert value(registry, "guardproxy_websocket_bytes_total", direction="to_client") == 20
    assert value(registry, "guardproxy_websocket_tunnels_open") == 0
    assert value(registry, "guardproxy_websocket_tunnels_closed_total", closed_by="client") == 1
    assert value(registry, "guardproxy_websocket_tunnel_duration_seconds_count") == 1
    assert tunnels.by_route == {"live": 0}
    tunnels.count_bytes()  # a closed tunnel is counted no more
    assert value(registry, "guardproxy_websocket_bytes_total", direction="to_upstream") == 10
    (line,) = lines
    logged: dict[str, Any] = orjson.loads(line)
    assert logged["event"] == "tunnel_closed"
    assert (logged["closed_by"], logged["bytes_to_upstream"], logged["bytes_to_client"]) == ("client", 10, 20)
    assert logged["duration_ms"] == 2500.0


def test_refusals_are_counted_by_reason() -> None:
    registry = CollectorRegistry()
    tunnels = Tunnels(metrics=TunnelMetrics(registry))
    tunnels.refused("limit")
    tunnels.refused("limit")
    assert value(registry, "guardproxy_websocket_tunnels_refused_total", reason="limit") == 2
