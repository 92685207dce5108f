"""WebSocket tunnel settings (guards/websocket.py, proxy/tunnel.py): global, and per route."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, PositiveFloat, field_validator

from guardproxy.config.base import CommaList, Section
from guardproxy.origins import compile_origin_pattern

# RFC 9110 §5.6.2 token characters: what an Upgrade protocol name may be made of.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")


def _origins(origins: list[str] | None) -> list[str] | None:
    for origin in origins or ():
        if origin != "*":
            compile_origin_pattern(origin)
    return origins


def _protocols(protocols: list[str] | None) -> list[str] | None:
    if protocols is None:
        return None
    lowered = [protocol.strip().lower() for protocol in protocols]
    bad = [protocol for protocol in lowered if not _TOKEN.fullmatch(protocol)]
    if bad:
        raise ValueError(f"not an upgrade token: {bad[0]!r}")
    return lowered


class WebSocketSettings(Section):
    # Tunnel upgrades (RFC 6455 WebSocket handshakes) to the upstream. Off: an upgrade request
    # is forwarded as a plain request without Upgrade, as before.
    enabled: bool = True
    # Origins a handshake may come from; null: the route's CORS origins (when those are empty,
    # any origin). Same syntax as cors.origins: exact, https://*.example.com, "*".
    allowed_origins: CommaList | None = None
    # Let in handshakes without an Origin field (non-browser clients send none).
    allow_missing_origin: bool = True
    # Seconds a tunnel may carry no byte in either direction before it is closed.
    idle_timeout: PositiveFloat = 300.0
    # Seconds a tunnel may stay open at all; null: no limit.
    max_lifetime: PositiveFloat | None = None
    # Open tunnels per worker and route; past it a handshake gets 503 with Retry-After.
    max_tunnels: Annotated[int, Field(ge=1)] = 1000
    # Upgrade tokens tunnelled. `websocket` handshakes are checked (RFC 6455 §4); any other
    # token listed here (e.g. h2c) is tunnelled as it is. An unlisted token is ignored: the
    # request goes on as a plain one, without Upgrade.
    protocols: list[str] = ["websocket"]
    # At shutdown, send each side of a WebSocket tunnel a 1001 Going Away close frame before
    # closing it. guardproxy then follows frame boundaries: free with large frames, about 0.4 µs
    # per frame with tiny ones (bench/tunnel_throughput.py --frame 125: half the throughput).
    going_away_at_shutdown: bool = True

    _check_origins = field_validator("allowed_origins")(_origins)
    _check_protocols = field_validator("protocols")(_protocols)


class WebSocketOverride(Section):
    """Per-route WebSocket settings; unset fields inherit the global `websocket` section."""

    enabled: bool | None = None
    allowed_origins: CommaList | None = None
    allow_missing_origin: bool | None = None
    idle_timeout: PositiveFloat | None = None
    max_lifetime: PositiveFloat | None = None
    max_tunnels: Annotated[int, Field(ge=1)] | None = None
    protocols: list[str] | None = None
    going_away_at_shutdown: bool | None = None

    _check_origins = field_validator("allowed_origins")(_origins)
    _check_protocols = field_validator("protocols")(_protocols)
