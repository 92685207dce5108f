"""What a listener serves: the application its connections run (`Site`), what a client
connection may do (`ConnectionLimits`), and the switch that tells connections the server is
draining (`Lifecycle`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# Real imports, not under TYPE_CHECKING: a compiled module's annotations need them (setup.py).
from guardproxy.answer import RefusedError
from guardproxy.asgi import Receive, Scope, Send


class Handler(Protocol):
    """The application a listener's connections run (the guard chain, guards/chain.py)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None: ...

    async def answer_refusal(self, refusal: RefusedError, scope: Scope, send: Send) -> None:
        """Answer a request the server refused before the application could see it."""


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    # Seconds a client has for a whole request head, from the connection opening or the previous
    # response ending. Bytes trickling in do not extend it (uvicorn's timer restarts on each).
    head_timeout: float = 10.0
    # Seconds an idle keep-alive connection stays open.
    keep_alive_timeout: float = 5.0
    # Seconds a request body may go without a byte arriving before the client gets 408.
    body_timeout: float = 30.0
    # Request line and header fields together, in bytes (431 past it).
    max_head_bytes: int = 16 * 1024
    max_header_fields: int = 100  # 431 past it
    max_uri_bytes: int = 8 * 1024  # 414 past it


class Lifecycle:
    """Shared by every connection of a worker. While draining, each response says
    `Connection: close`, so clients move to other instances as their requests finish."""

    def __init__(self) -> None:
        self.draining = False


@dataclass(frozen=True, slots=True)
class Site:
    """What one listener serves, from one runtime: a reload swaps in a new Site, and each
    connection takes the current one for every request it starts."""

    app: Handler
    limits: ConnectionLimits
    # The application for upgrade requests (WebSocket handshakes); None: served as plain ones.
    upgrades: Handler | None = None
