"""The task that runs a connection's exchanges, one after the other.

One task per connection, kept between its requests: creating a Task for every request cost about
9k instructions of the ~210k a request takes (the Task itself, the entry in asyncio's weak set of
all tasks, the done callback); handing the next exchange to the waiting task costs one future.
The task ends when the connection does, so uvicorn's graceful shutdown, which waits for the
server's tasks after its connections have closed, still finds nothing left behind.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from guardproxy.server.exchange import Exchange


class Connection(Protocol):
    """What the runner needs of its connection (server/protocol.py): the client transport,
    None once a tunnel has taken it over."""

    transport: asyncio.Transport | None


class ExchangeRunner:
    __slots__ = ("_connection", "_loop", "_next", "_task", "_tasks", "_waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop, tasks: set[asyncio.Task[None]], connection: Connection) -> None:
        self._loop = loop
        self._tasks = tasks  # uvicorn's set of the server's tasks: shutdown waits for them
        self._connection = connection
        self._task: asyncio.Task[None] | None = None
        # While the task waits for the connection's next exchange: what wakes it.
        self._waiting: asyncio.Future[Exchange | None] | None = None
        # An exchange handed over while the task still runs the one before it (pipelining).
        self._next: Exchange | None = None

    @property
    def busy(self) -> bool:
        """An exchange is running, or has been handed over and is about to."""
        return self._task is not None and self._waiting is None

    def start(self, exchange: Exchange) -> None:
        """Run `exchange` now, or as soon as the one running has returned."""
        waiting = self._waiting
        if waiting is not None and not waiting.done():
            self._waiting = None
            waiting.set_result(exchange)
        elif self._task is not None:
            self._next = exchange
        else:
            task = self._task = self._loop.create_task(self._run(exchange))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def stop(self) -> None:
        """The connection is gone (or handed to a tunnel): a task waiting for more ends."""
        waiting = self._waiting
        if waiting is not None and not waiting.done():
            self._waiting = None
            waiting.set_result(None)

    async def _run(self, exchange: Exchange | None) -> None:
        try:
            while exchange is not None:
                await exchange.run()
                exchange, self._next = self._next, None
                transport = self._connection.transport
                if exchange is None and transport is not None and not transport.is_closing():
                    waiting = self._waiting = self._loop.create_future()
                    exchange = await waiting
        except asyncio.CancelledError:
            # Shutdown ran out of grace time (or something cancelled the task): an exchange
            # handed over but not started would never be answered, so the connection closes;
            # the client sees it closed, never a request left hanging.
            transport = self._connection.transport
            if transport is not None:
                transport.close()
            raise
        finally:
            self._task = None
            self._waiting = None
            self._next = None
