"""Where log lines go: one reusable buffer, written in blocks without ever blocking the event loop.

What a line costs is a copy into a buffer that is allocated once and reused (nginx's
`access_log ... buffer=64k flush=...` does the same): the buffer is written when it holds
`buffer_size` bytes, or `flush_interval` seconds after its first line, whichever comes first,
so under load there is one system call per few kilobytes of log and no thread, no per-line
hand-off, and no memory that comes and goes with every batch.

The guarantees, and how each is kept:
- A slow or stalled consumer (a full pipe nobody reads, a stuck collector) never stalls the
  event loop: pipes, terminals and sockets are written without blocking. When the consumer
  does not take more, lines wait in the buffer, which grows up to `max_buffer` bytes; past that
  new lines are dropped and counted in `dropped` (exported as
  guardproxy_log_lines_dropped_total), and writing resumes as soon as the consumer reads.
  A regular file is written directly and blocking, as nginx writes its log files: a page-cache
  write does not wait for the disk.
- Lines of several worker processes sharing one stdout never interleave: to a pipe or a socket
  every write is at most PIPE_BUF bytes, cut at a line end, which POSIX makes atomic for pipes
  (a single line longer than that is written whole and may interleave: nothing can prevent it
  but writing it alone). A regular file is written in whole buffers: writes through one shared
  file description (or to a file opened O_APPEND) do not overlap on Linux.
- Nothing is lost at drain or shutdown: `aclose()` (the access log guard's close, on the event
  loop) and `close()` (at exit) write what is buffered, waiting a bounded time for a consumer
  that is slow; what a consumer that never reads again leaves behind is counted as dropped.
- Event lines (structlog calls `flush()` after each) are written at once, with every access
  line before them, so warnings reach the log in order and without delay.

Non-blocking writes need a file description of the sink's own: O_NONBLOCK set on the stdout it
shares with the supervisor and the other workers would reach their writes too (and the
interpreter's own stderr when it is the same pipe). A pipe or a terminal is therefore opened
anew through /proc/self/fd, which gives a description of its own; a socket (systemd's journal
stream) is written with MSG_DONTWAIT, which is per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Final

# Like nginx's `access_log ... buffer=64k`: one write per 64 KiB to a file. To a pipe, PIPE_BUF
# blocks decide the number of writes, so this only bounds how long lines wait under load.
BUFFER_SIZE: Final = 64 * 1024
# nginx's usual `flush=1s`, shorter: at most a handful of timer callbacks a second, and only
# while lines wait, so nothing measurable, and `docker logs -f` stays close to live.
FLUSH_INTERVAL: Final = 0.2
# How much a stalled consumer may leave behind before lines are dropped: about two seconds of
# access log at 5,000 requests a second.
MAX_BUFFER: Final = 4 * 1024 * 1024
_ATOMIC: Final = select.PIPE_BUF
_WHOLE: Final = 1 << 62  # a regular file takes whatever is buffered in one write


@dataclass(frozen=True)
class _Output:
    """How to write to the sink's file descriptor without blocking, and in which blocks."""

    fileno: int
    write: Callable[[memoryview], int]
    block: int
    watchable: bool  # the event loop can tell when it takes more (not so for regular files)
    owned: socket.socket | int | None = None  # what the sink opened itself, to close at the end

    @classmethod
    def closed(cls) -> _Output:
        return cls(-1, _refuse, _ATOMIC, watchable=False)

    def release(self) -> None:
        with contextlib.suppress(OSError):
            if isinstance(self.owned, socket.socket):
                self.owned.close()
            elif self.owned is not None:
                os.close(self.owned)

    @classmethod
    def open(cls, fd: int) -> _Output:
        try:
            mode = os.fstat(fd).st_mode
        except OSError:  # no stdout at all: writes fail and lines are counted as dropped
            return cls(fd, partial(os.write, fd), _ATOMIC, watchable=False)
        if stat.S_ISREG(mode):
            return cls(fd, partial(os.write, fd), _WHOLE, watchable=False)
        if stat.S_ISSOCK(mode):
            sock = socket.socket(fileno=os.dup(fd))
            return cls(sock.fileno(), partial(_send_nowait, sock), _ATOMIC, watchable=True, owned=sock)
        try:
            own = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:
            # No /proc, or a pipe whose reader is gone (writes fail either way): the shared
            # description, made non-blocking, since a stalled log must not stall requests.
            own = fd
            with contextlib.suppress(OSError):
                os.set_blocking(fd, False)
        return cls(own, partial(os.write, own), _ATOMIC, watchable=True, owned=own if own != fd else None)


def _refuse(_: memoryview) -> int:
    raise BrokenPipeError("the log sink is closed")


def _send_nowait(sock: socket.socket, data: memoryview) -> int:
    return sock.send(data, socket.MSG_DONTWAIT)


class LogSink:
    """A process's log output. `write` takes one line ending in a newline; safe from any
    thread, never blocks."""

    def __init__(
        self,
        fd: int = 1,
        *,
        buffer_size: int = BUFFER_SIZE,
        max_buffer: int = MAX_BUFFER,
        flush_interval: float = FLUSH_INTERVAL,
    ) -> None:
        self._output = _Output.open(fd)
        self._threshold = buffer_size
        self._max_buffer = max(max_buffer, buffer_size)
        self._interval = flush_interval
        # Allocated once: lines are copied in at `_end` and written from `_start`, through a
        # memoryview, because assigning bytes to a bytearray slice copies them into a temporary
        # bytearray first. It grows only when a consumer falls behind (up to max_buffer) or for
        # a line larger than itself, and never shrinks.
        self._buffer = bytearray(buffer_size)
        self._view = memoryview(self._buffer)
        self._room = buffer_size
        self._start = 0
        self._end = 0
        self._lock = threading.Lock()
        # Bound once: a method looked up on the lock at every line costs more than the copy.
        self._acquire = self._lock.acquire
        self._release = self._lock.release
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._watching: asyncio.AbstractEventLoop | None = None  # waiting for the consumer to read
        self.dropped = 0

    @property
    def pending(self) -> int:
        """Bytes buffered and not yet written."""
        return self._end - self._start

    def write(self, line: bytes) -> None:
        self._acquire()  # not `with`: that looks up two methods per line
        try:
            end = self._end + len(line)
            if end > self._room:
                end = self._make_room(len(line))
                if end < 0:
                    return
            self._view[self._end : end] = line
            self._end = end
            if end - self._start >= self._threshold:
                if self._watching is None:  # else the consumer is behind: the loop writes when it can
                    self._write_locked()
                    self._forget_stale_timer()
            elif self._timer is None and self._watching is None:
                self._arm()
        finally:
            self._release()

    def flush(self) -> None:
        """Write what is buffered now, as far as the consumer takes it without waiting.
        structlog calls this after each of its lines, so events are not held back."""
        with self._lock:
            if self._watching is None and self._end:
                self._write_locked()

    def settle(self) -> None:
        """Write what is buffered as far as the consumer takes it now, and disarm the flush
        timer: for a runtime that closes (a reload) while the process's sink keeps serving.
        Lines a slow consumer has not taken yet stay buffered, and are not given up."""
        with self._lock:
            self._cancel_timer()
        self.flush()

    async def aclose(self, timeout: float = 5.0) -> None:
        """Write everything buffered before the event loop stops, waiting at most `timeout`
        seconds for a slow consumer. The sink stays usable: later lines are written at once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with self._lock:
            self._cancel_timer()
        self.flush()
        while self.pending and loop.time() < deadline:
            await asyncio.sleep(0.01)  # the writability watch writes as the consumer reads...
            self.flush()  # ...and this whatever no watch waits for
        with self._lock:
            self._unwatch()
            self._give_up()

    def close(self, timeout: float = 5.0) -> None:
        """Write everything buffered, blocking at most `timeout` seconds for a slow consumer,
        and release the sink's own descriptor (at exit, when no event loop is left to wait on).
        Lines written after this are dropped and counted."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._cancel_timer()
            self._unwatch()
            output = self._output
            poller = select.poll()
            poller.register(output.fileno, select.POLLOUT)
            while self._end:
                self._write_locked(watch=False)
                remaining = deadline - time.monotonic()
                if not self._end or remaining <= 0:
                    break
                poller.poll(remaining * 1000)
            self._give_up()
            self._output = _Output.closed()
            output.release()

    def _write_locked(self, *, watch: bool = True) -> None:
        output, buffer, view, start, end = self._output, self._buffer, self._view, self._start, self._end
        while start < end:
            stop = end if end - start <= output.block else _cut(buffer, start, end, output.block)
            try:
                start += output.write(view[start:stop])
            except BlockingIOError:
                self._start = start
                if watch:
                    self._watch()
                return
            except OSError:
                # The consumer is gone (EPIPE), the descriptor closed, the disk full: what is
                # buffered cannot be written, and is counted; a later line may be.
                self.dropped += buffer.count(b"\n", start, end)
                break
        self._start = self._end = 0

    def _make_room(self, size: int) -> int:
        """Where a line of `size` bytes will end once there is room for it, or -1 when it is
        dropped. The buffer is full: write it, and if the consumer is behind, make room."""
        if self._watching is None and self._end:
            self._write_locked()
            self._forget_stale_timer()
        pending = self._end - self._start
        if pending + size > self._max_buffer:
            self.dropped += 1
            return -1
        if self._start:  # move what is left to the front (memoryview copies overlap safely)
            self._view[:pending] = self._view[self._start : self._end]
            self._start, self._end = 0, pending
        if pending + size > len(self._buffer):
            # A new buffer rather than a resized one: slices of the old view may still exist.
            grown = bytearray(min(max(pending + size, 2 * len(self._buffer)), self._max_buffer))
            grown[:pending] = self._view[:pending]
            self._buffer, self._view = grown, memoryview(grown)
            self._room = len(grown)
        return pending + size

    def _arm(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # No event loop in this thread (start-up, the supervisor, another thread) and so no
            # timer to come back: write now.
            self._write_locked()
            return
        self._timer = loop.call_later(self._interval, self._on_timer)
        self._timer_loop = loop

    def _forget_stale_timer(self) -> None:
        # A timer whose event loop was closed without aclose() would never fire: checked once
        # per block rather than per line.
        if self._timer_loop is not None and self._timer_loop.is_closed():
            self._timer = self._timer_loop = None

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = None
            if self._watching is None and self._end:
                self._write_locked()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer_loop is not None and not self._timer_loop.is_closed():
            self._timer.cancel()
        self._timer = self._timer_loop = None

    def _watch(self) -> None:
        if not self._output.watchable:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not on a loop: the next line or the loop's timer tries again
        loop.add_writer(self._output.fileno, self._on_writable)
        self._watching = loop

    def _unwatch(self) -> None:
        loop, self._watching = self._watching, None
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError, ValueError, OSError):
                loop.remove_writer(self._output.fileno)

    def _on_writable(self) -> None:
        with self._lock:
            self._unwatch()
            self._write_locked()

    def _give_up(self) -> None:
        # What a consumer that never read again left behind: lost, and counted.
        if self._end:
            self.dropped += self._buffer.count(b"\n", self._start, self._end)
            self._start = self._end = 0


def _cut(buffer: bytearray, start: int, end: int, block: int) -> int:
    """The end of the longest run of whole lines in buffer[start:end] that fits in `block`
    bytes; a single longer line is taken whole."""
    cut = buffer.rfind(b"\n", start, start + block)
    if cut < 0:
        cut = buffer.find(b"\n", start + block, end)
        return end if cut < 0 else cut + 1
    return cut + 1
