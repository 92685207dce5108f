"""Upgrade requests on the server side: which application answers them, and how the client
connection is handed over to a tunnel once the upstream has switched protocols.

llhttp stops parsing at an upgrade request's head (what follows is another protocol), and the
server protocol branches here only then, so a plain request pays nothing for upgrades. A site
without an upgrade application (`websocket.enabled: false`) answers them as plain requests,
without Upgrade, and closes the connection after the response.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from guardproxy.proxy.tunnel import TunnelEnd
from guardproxy.server.limits import Handler, Site

HANDOFF_KEY = "guardproxy.handoff"


class Releasable(Protocol):
    """What the handoff needs of the server protocol (server/protocol.py)."""

    connections: set[Any]

    def release_transport(self) -> tuple[asyncio.Transport, bool]:
        """Stop serving HTTP on the connection and return its transport (and whether writing
        is paused); the protocol keeps no reference to it."""


class ClientHandoff:
    """Put in the scope of an upgrade request: the tunnel takes the client connection from it."""

    __slots__ = ("_protocol", "connections", "held", "taken")

    def __init__(self, protocol: Releasable) -> None:
        self._protocol = protocol
        self.connections = protocol.connections
        # Bytes the client sent after the handshake's head, before any 101.
        self.held = b""
        self.taken = False

    def take(self) -> TunnelEnd:
        """The client connection as a tunnel end; from now on it is no HTTP connection."""
        transport, write_paused = self._protocol.release_transport()
        self.taken = True
        end = TunnelEnd(transport, self.held)
        # Reading stopped when the upgrade was parsed; the tunnel resumes it.
        end.read_paused = True
        end.write_paused = write_paused
        transport.set_protocol(end)
        return end


def upgrade_app(protocol: Releasable, scope: dict[str, Any], site: Site) -> Handler | None:
    """The application for an upgrade request, with the handoff put in its scope; None when the
    site does not tunnel upgrades."""
    if site.upgrades is None:
        return None
    scope[HANDOFF_KEY] = ClientHandoff(protocol)
    return site.upgrades


def hold_after_upgrade(scope: dict[str, Any] | None, rest: bytes) -> None:
    """Keep what followed the upgrade request's head for the tunnel (if one opens)."""
    handoff = scope.get(HANDOFF_KEY) if scope is not None else None
    if handoff is not None:
        handoff.held += rest
