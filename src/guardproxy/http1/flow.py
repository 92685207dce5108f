"""Flow control on one asyncio transport, for both directions (as uvicorn's FlowControl).

Writing: the transport calls `pause_writing` when its buffer passes the high-water mark and
`resume_writing` when it has drained; a writer awaits `drain()` in between, so a slow reader
on the other end holds back the producer instead of growing a buffer. Reading: the owner pauses
the transport once it holds more than it can hand on (`HIGH_WATER`), and resumes it when the
consumer has taken what was waiting, so a slow consumer stops the socket being read.
"""

from __future__ import annotations

import asyncio
from typing import Final

# Bytes received but not yet handed on, past which the socket stops being read.
HIGH_WATER: Final = 256 * 1024


class FlowControl:
    __slots__ = ("_drain_waiter", "_loop", "_transport", "read_paused", "ready", "write_paused")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self.write_paused = False
        self.read_paused = False
        # A future that is already done: what a write that need not wait hands its caller to
        # await, so it costs no coroutine of its own (awaiting it returns at once, as often
        # as it is awaited).
        self.ready: asyncio.Future[None] = loop.create_future()
        self.ready.set_result(None)

    def attach(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    # Called by the transport, through the protocol's methods of the same names.

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.wake_writer()

    # Used by the protocol's owner.

    async def drain(self) -> None:
        """Wait while the transport's write buffer is over its high-water mark (returns at once
        when the transport is closing: the caller then finds out why)."""
        while self.write_paused and self._transport is not None and not self._transport.is_closing():
            waiter = self._drain_waiter
            if waiter is None or waiter.done():
                waiter = self._drain_waiter = self._loop.create_future()
            await waiter

    def wake_writer(self) -> None:
        """Release a writer waiting in `drain` (also when the connection is lost)."""
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def pause_reading(self) -> None:
        if not self.read_paused and self._transport is not None:
            self.read_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and self._transport is not None:
            self.read_paused = False
            self._transport.resume_reading()
