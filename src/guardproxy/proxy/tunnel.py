"""The tunnel behind an upgrade: two transports handed over from HTTP, bytes pumped between them.

guardproxy does not parse WebSocket frames: once the upstream's 101 has gone to the client,
whatever either side sends is written to the other as it arrives. A WebSocket tunnel only follows
where frames begin and end (http1/frames.py), to send each side a 1001 close frame at shutdown. Both transports get a
`TunnelEnd` as their protocol (`transport.set_protocol`, as uvicorn does on its server side).

Backpressure runs both ways without a buffer of the tunnel's own: when one side's write buffer
passes its high-water mark, asyncio calls that end's `pause_writing` and the tunnel stops
reading the *other* side until `resume_writing`. A peer that stops reading therefore stops the
sender at the kernel's socket buffers; memory per tunnel stays at the two transports' write
buffers.

One lazily re-armed timer per tunnel enforces the idle timeout (no byte either way), the
optional maximum lifetime and, once the worker shuts down, the shutdown deadline. Half-closes
are passed on (`write_eof`) where the transport can; the tunnel ends when both directions have
ended, or either connection is lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from guardproxy.http1.flow import HIGH_WATER
from guardproxy.http1.frames import CLOSE_TO_CLIENT, FrameCursor, close_to_server

# After the tunnel has ended, a side whose peer stopped reading keeps unsent bytes for at most
# this long before its connection is cut.
_FLUSH_GRACE = 5.0


class TunnelEnd(asyncio.Protocol):
    """One side's connection as the tunnel sees it. Until the tunnel starts, what arrives is held
    (and reading stops past HIGH_WATER): the bytes a peer sends right after the handshake."""

    def __init__(self, transport: asyncio.BaseTransport, held: bytes = b"") -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.tunnel: Tunnel | None = None
        self.peer: TunnelEnd | None = None
        self.held = bytearray(held)
        self.eof = False
        self.lost = False
        self.write_paused = False
        self.read_paused = False

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.relay(self, data)
            return
        self.held += data
        if len(self.held) > HIGH_WATER:
            self.pause_reading()

    def eof_received(self) -> bool | None:
        self.eof = True
        if self.tunnel is not None:
            return self.tunnel.end_of_input(self)
        return True  # held open: the tunnel decides once it starts

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.tunnel is not None:
            self.tunnel.lost(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.peer is not None:
            self.peer.resume_reading()

    def pause_reading(self) -> None:
        if not self.read_paused and not self.lost:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and not self.lost and not self.transport.is_closing():
            self.read_paused = False
            self.transport.resume_reading()

    def take_held(self) -> bytes:
        held = bytes(self.held)
        self.held.clear()
        return held


@dataclass(frozen=True, slots=True)
class TunnelLimits:
    idle_timeout: float
    max_lifetime: float | None
    # Seconds an open tunnel may carry on once the worker shuts down (server.shutdown_timeout).
    shutdown_timeout: float


@dataclass(frozen=True, slots=True)
class TunnelRecord:
    """What a closed tunnel reports (metrics, the closing log line)."""

    route: str
    request_id: str
    client: str
    path: str
    protocol: str
    closed_by: str
    duration: float
    bytes_to_upstream: int
    bytes_to_client: int


class Tunnel:
    def __init__(
        self,
        client: TunnelEnd,
        upstream: TunnelEnd,
        *,
        limits: TunnelLimits,
        describe: dict[str, str],
        on_close: Callable[[Tunnel], None],
        connections: set[Any],
        frames: bool = False,
    ) -> None:
        self.client = client
        self.upstream = upstream
        self._limits = limits
        self._describe = describe
        self._on_close = on_close
        # uvicorn's set of open connections: it calls `shutdown()` on each when the worker
        # stops, and waits (up to its graceful timeout) for the set to empty.
        self._connections = connections
        self._loop = asyncio.get_running_loop()
        self.bytes_to_upstream = 0
        self.bytes_to_client = 0
        self.closed_by = ""
        self.closed = False
        self._started = self._loop.time()
        self._started_wall = time.perf_counter()
        self._last_activity = self._started
        self._shutdown_at: float | None = None
        self._counted = (0, 0)
        # WebSocket tunnels follow frame boundaries each way, to say goodbye at shutdown.
        self._to_upstream = FrameCursor() if frames else None
        self._to_client = FrameCursor() if frames else None
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        client, upstream = self.client, self.upstream
        client.peer, upstream.peer = upstream, client
        client.tunnel = upstream.tunnel = self
        self._connections.add(self)
        # What each side sent before the tunnel existed goes first.
        for end in (client, upstream):
            held = end.take_held()
            if held:
                self.relay(end, held)
        for end in (client, upstream):
            assert end.peer is not None
            if end.peer.write_paused:
                end.pause_reading()
            else:
                end.resume_reading()
        for end in (client, upstream):
            if end.lost:
                self.lost(end)
            elif end.eof:
                self.end_of_input(end)
        if not self.closed:
            self._arm()

    # called by the ends

    def relay(self, source: TunnelEnd, data: bytes) -> None:
        self._last_activity = self._loop.time()
        if source is self.client:
            self.bytes_to_upstream += len(data)
            if self._to_upstream is not None:
                self._to_upstream.feed(data)
            self.upstream.transport.write(data)
        else:
            self.bytes_to_client += len(data)
            if self._to_client is not None:
                self._to_client.feed(data)
            self.client.transport.write(data)

    def end_of_input(self, source: TunnelEnd) -> bool:
        """`source` will send no more. Passed on as a half-close when the peer's transport can;
        the tunnel ends once both directions have ended."""
        if self.closed:
            return False
        peer = source.peer
        assert peer is not None
        self.closed_by = self.closed_by or self._side(source)
        if peer.eof or peer.lost or not peer.transport.can_write_eof():
            self.close(self.closed_by)
            return False
        peer.transport.write_eof()
        return True

    def lost(self, end: TunnelEnd) -> None:
        self.close(self.closed_by or self._side(end))

    # used by uvicorn at shutdown

    def shutdown(self) -> None:
        """The worker is stopping: the tunnel may carry on for the shutdown timeout, then it is
        closed, a WebSocket tunnel with a 1001 close frame to each side first (`_going_away`)."""
        if self.closed or self._shutdown_at is not None:
            return
        self._shutdown_at = self._loop.time() + self._limits.shutdown_timeout
        self._rearm()

    def close(self, closed_by: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.closed_by = closed_by
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._connections.discard(self)
        for end in (self.client, self.upstream):
            end.tunnel = None
            transport = end.transport
            if not transport.is_closing():
                transport.close()
            if transport.get_write_buffer_size():
                # A peer that stopped reading would keep the connection (and its buffer) forever.
                self._loop.call_later(_FLUSH_GRACE, transport.abort)
        self._on_close(self)

    def record(self) -> TunnelRecord:
        """What the tunnel reports once closed."""
        describe = self._describe
        return TunnelRecord(
            route=describe["route"],
            request_id=describe["request_id"],
            client=describe["client"],
            path=describe["path"],
            protocol=describe["protocol"],
            closed_by=self.closed_by,
            duration=time.perf_counter() - self._started_wall,
            bytes_to_upstream=self.bytes_to_upstream,
            bytes_to_client=self.bytes_to_client,
        )

    def take_bytes(self) -> tuple[int, int]:
        """Bytes carried each way (to the upstream, to the client) since the last call: what the
        metrics have not counted yet."""
        up, down = self.bytes_to_upstream - self._counted[0], self.bytes_to_client - self._counted[1]
        self._counted = (self.bytes_to_upstream, self.bytes_to_client)
        return up, down

    # internals

    def _going_away(self) -> None:
        """A 1001 close frame to each side whose stream is between frames (mid-frame, one would
        corrupt it), so its endpoint sees the server going away rather than a broken connection.
        Nothing is relayed after it: the tunnel closes next."""
        for cursor, end, frame in (
            (self._to_client, self.client, CLOSE_TO_CLIENT),
            (self._to_upstream, self.upstream, None),
        ):
            if cursor is not None and cursor.at_boundary and not end.transport.is_closing():
                end.transport.write(frame or close_to_server())

    def _side(self, end: TunnelEnd) -> str:
        return "client" if end is self.client else "upstream"

    def _deadline(self) -> float:
        deadline = self._last_activity + self._limits.idle_timeout
        if self._limits.max_lifetime is not None:
            deadline = min(deadline, self._started + self._limits.max_lifetime)
        if self._shutdown_at is not None:
            deadline = min(deadline, self._shutdown_at)
        return deadline

    def _arm(self) -> None:
        self._timer = self._loop.call_at(self._deadline(), self._on_timer)

    def _rearm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._arm()

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed:
            return
        now = self._loop.time()
        if self._shutdown_at is not None and now >= self._shutdown_at:
            self._going_away()
            self.close("shutdown")
        elif self._limits.max_lifetime is not None and now >= self._started + self._limits.max_lifetime:
            self.close("max_lifetime")
        elif now >= self._last_activity + self._limits.idle_timeout:
            self.close("idle_timeout")
        else:
            self._arm()  # bytes moved since the timer was set: the deadline moved later
