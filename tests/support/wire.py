"""Byte-level test rigs for the server protocol: a transport that records what is written, and
a connection whose bytes a test feeds and reads without sockets (h11's style of testing)."""

from __future__ import annotations

import asyncio
from typing import Any

from guardproxy.server.limits import ConnectionLimits, Handler, Lifecycle, Site
from guardproxy.server.protocol import ProxyHttpProtocol
from tests.support.raw import ParsedResponse, parse_responses


class RecordingTransport(asyncio.Transport):
    """Records writes; closing it tells the protocol the connection is lost, as asyncio does."""

    def __init__(self, *, peer: tuple[str, int] = ("203.0.113.9", 40000)) -> None:
        super().__init__()
        self.written = bytearray()
        self.writes = 0  # how many writes (system calls, on a real socket) made it
        self.closed = False
        self.reading = True
        self.protocol: asyncio.Protocol | None = None
        self._peer = peer

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.written += data
        self.writes += 1

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.protocol is not None:
                asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self._peer, "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class ServerState:
    """What the protocol reads from uvicorn's server state."""

    def __init__(self) -> None:
        self.connections: set[Any] = set()
        self.tasks: set[asyncio.Task[None]] = set()


class UvicornConfig:
    """What the protocol reads from uvicorn's Config (the site gives it its application)."""

    loaded = True


class Wire:
    """One client connection to `app`, fed and read byte by byte."""

    def __init__(self, app: Handler, limits: ConnectionLimits | None = None, lifecycle: Lifecycle | None = None):
        self.state = ServerState()
        # What the listener serves; a test may replace it, as a reload does.
        self.site = Site(app, limits or ConnectionLimits())
        self.protocol = ProxyHttpProtocol(
            UvicornConfig(),  # type: ignore[arg-type]
            self.state,
            site=lambda: self.site,
            lifecycle=lifecycle,
        )
        self.transport = RecordingTransport()
        self.transport.protocol = self.protocol
        self.protocol.connection_made(self.transport)

    def feed(self, data: bytes) -> None:
        self.protocol.data_received(data)

    async def settle(self, timeout: float = 2.0) -> None:
        """Run the loop until this connection's exchanges are all done: its runner task waits
        for the next request, or has ended with the connection."""
        async with asyncio.timeout(timeout):
            while self.protocol.runner.busy or (self.transport.closed and self.state.tasks):  # noqa: ASYNC110
                await asyncio.sleep(0)  # a few loop turns: there is no event to wait on
            await asyncio.sleep(0)  # the held response head is flushed at the next turn

    def responses(self) -> list[ParsedResponse]:
        return parse_responses(bytes(self.transport.written))
