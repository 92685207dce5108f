"""Where log lines go: memory first, then a writer thread, so a slow log consumer (a full pipe,
a stalled collector) never stalls the event loop.

Lines are written in batches of at most PIPE_BUF bytes, cut at line ends: the kernel writes
that much to a pipe atomically, so the lines of several worker processes sharing one stdout
never interleave mid-line. If the consumer falls far behind, new lines are dropped and counted
rather than buffered without bound.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections import deque

_BATCH = select.PIPE_BUF


class LogSink:
    def __init__(self, fd: int = 1, *, max_pending: int = 100_000, interval: float = 0.05) -> None:
        self._fd = fd
        self._max_pending = max_pending
        self._interval = interval
        self._lines: deque[bytes] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0

    def write(self, line: bytes) -> None:
        """Queue one line (ending in a newline). Safe from any thread; never blocks."""
        if len(self._lines) >= self._max_pending:
            self.dropped += 1
            return
        self._lines.append(line)
        if self._thread is None:
            self._start()

    def flush(self) -> None:
        """structlog calls this after every line; writing is the thread's job."""

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, waiting at most `timeout` seconds for a slow consumer."""
        self._stop.set()
        if self._thread is None and self._lines:
            self._start()
        if self._thread is not None:
            self._thread.join(timeout)

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="guardproxy-log-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._drain()
        self._drain()

    def _drain(self) -> None:
        batch: list[bytes] = []
        size = 0
        while self._lines:
            line = self._lines.popleft()
            if batch and size + len(line) > _BATCH:
                self._write(b"".join(batch))
                batch, size = [], 0
            batch.append(line)
            size += len(line)
        if batch:
            self._write(b"".join(batch))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        with contextlib.suppress(OSError):  # a closed stdout must not take the proxy down
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
