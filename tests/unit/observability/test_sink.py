"""The log sink: whole lines, in order, in pipe-atomic blocks, buffered on the event loop, never
blocking the caller, nothing lost at close, and no memory that comes and goes per batch."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import os
import select
import socket
import threading
import time
import tracemalloc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from guardproxy.observability.access_log import redact_query
from guardproxy.observability.logging import StructlogFile
from guardproxy.observability.sink import LogSink


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    yield read_end, write_end
    for fd in (read_end, write_end):
        with contextlib.suppress(OSError):  # a test closed it already
            os.close(fd)


def readable(fd: int) -> bytes:
    """What the pipe holds right now, without waiting."""
    chunks = []
    while select.select([fd], [], [], 0)[0]:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


class Reader(threading.Thread):
    """A consumer that reads a pipe until its write ends are closed, optionally slowly."""

    def __init__(self, fd: int, *, pause: float = 0.0, size: int = 1 << 20) -> None:
        super().__init__(daemon=True)
        self.fd, self.pause, self.size = fd, pause, size
        self.chunks: list[bytes] = []

    def run(self) -> None:
        while chunk := os.read(self.fd, self.size):
            self.chunks.append(chunk)
            if self.pause:
                time.sleep(self.pause)

    def text(self) -> bytes:
        self.join(10)
        return b"".join(self.chunks)


def numbered(count: int, width: int = 700) -> list[bytes]:
    return [b"%d %s\n" % (index, b"x" * (index % width)) for index in range(count)]


def test_without_an_event_loop_a_line_is_written_at_once(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    sink = LogSink(write_end, flush_interval=3600)
    sink.write(b"starting\n")  # no timer could come back for it (start-up, the supervisor)
    assert readable(read_end) == b"starting\n"
    sink.close()


def test_without_an_event_loop_lines_arrive_whole_in_order(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    reader = Reader(read_end)
    reader.start()
    sink = LogSink(write_end)
    lines = numbered(2000)
    for line in lines:
        sink.write(line)  # what the reader is not ready for yet waits for the next line
    sink.close()
    os.close(write_end)
    assert reader.text() == b"".join(lines)


def test_lines_after_close_are_counted_not_written(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    sink = LogSink(write_end)
    sink.write(b"before\n")
    sink.close()
    sink.write(b"after\n")
    assert readable(read_end) == b"before\n"
    assert sink.dropped == 1


async def test_on_the_event_loop_lines_wait_for_the_flush_interval(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    sink = LogSink(write_end, flush_interval=0.05)
    lines = numbered(20, width=50)
    for line in lines:
        sink.write(line)
    assert readable(read_end) == b""  # buffered: no system call per line
    await asyncio.sleep(0.2)
    assert readable(read_end) == b"".join(lines)
    assert sink.pending == 0


async def test_a_full_buffer_is_written_before_the_interval(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    sink = LogSink(write_end, buffer_size=1000, flush_interval=3600)
    sink.write(b"a" * 599 + b"\n")
    sink.write(b"b" * 299 + b"\n")
    assert readable(read_end) == b""
    sink.write(b"c" * 499 + b"\n")  # does not fit: what the buffer holds is written
    assert readable(read_end) == b"a" * 599 + b"\n" + b"b" * 299 + b"\n"
    sink.write(b"d" * 500)  # fills it exactly
    assert readable(read_end) == b"c" * 499 + b"\n" + b"d" * 500
    assert sink.pending == 0
    await sink.aclose()


async def test_a_line_larger_than_the_buffer_is_written_whole(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    reader = Reader(read_end)
    reader.start()
    sink = LogSink(write_end, buffer_size=1000, flush_interval=3600)
    lines = [b"small\n", b"L" * 2999 + b"\n", b"after\n"]
    for line in lines:
        sink.write(line)
    await sink.aclose()
    sink.close()
    os.close(write_end)
    assert reader.text() == b"".join(lines)
    assert sink.dropped == 0


async def test_flush_writes_what_waits_now_in_order(pipe: tuple[int, int]) -> None:
    # structlog calls flush() after each event: an event goes out at once, after the access
    # lines that came before it.
    read_end, write_end = pipe
    sink = LogSink(write_end, flush_interval=3600)
    sink.write(b'{"event":"request"}\n')
    sink.write(b'{"event":"upstream failed"}\n')
    sink.flush()
    assert readable(read_end) == b'{"event":"request"}\n{"event":"upstream failed"}\n'
    await sink.aclose()


async def test_aclose_writes_everything_buffered(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    reader = Reader(read_end)
    reader.start()
    sink = LogSink(write_end, flush_interval=3600)
    lines = numbered(300, width=100)
    for line in lines:
        sink.write(line)
    await sink.aclose()
    assert sink.dropped == 0
    sink.close()
    os.close(write_end)
    assert reader.text() == b"".join(lines)


async def test_a_stalled_consumer_costs_dropped_lines_not_a_blocked_loop(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    sink = LogSink(write_end, buffer_size=4096, max_buffer=20_000, flush_interval=0.01)
    line = b"y" * 99 + b"\n"
    started = time.monotonic()
    for _ in range(2000):  # 200 KB: three times what the pipe and the buffer hold together
        sink.write(line)
    assert time.monotonic() - started < 0.5
    assert sink.pending <= 20_000
    in_pipe = len(readable(read_end))
    assert in_pipe % len(line) == 0  # whole lines only
    assert sink.dropped > 0
    await sink.aclose()  # the reading above made room: what was buffered goes out now
    assert in_pipe // len(line) + len(readable(read_end)) // len(line) + sink.dropped == 2000


async def test_writing_resumes_when_the_consumer_reads_again(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    sink = LogSink(write_end, buffer_size=4096, max_buffer=1 << 20, flush_interval=0.01)
    lines = numbered(1000, width=200)  # ~110 KB: more than the pipe holds
    for line in lines:
        sink.write(line)
    await asyncio.sleep(0.05)
    assert sink.pending > 0  # waiting for the consumer...
    received = bytearray()
    for _ in range(100):
        received += readable(read_end)  # ...which now reads: the writability watch writes the rest
        if not sink.pending:
            break
        await asyncio.sleep(0.01)
    received += readable(read_end)
    assert bytes(received) == b"".join(lines)
    assert sink.dropped == 0
    sink.write(b"after\n")
    sink.flush()
    assert readable(read_end) == b"after\n"
    await sink.aclose()


async def test_aclose_gives_up_on_a_consumer_that_never_reads(pipe: tuple[int, int]) -> None:
    _, write_end = pipe
    sink = LogSink(write_end, flush_interval=3600)
    for _ in range(1000):
        sink.write(b"x" * 999 + b"\n")  # far more than a pipe holds
    started = time.monotonic()
    await sink.aclose(timeout=0.3)
    assert time.monotonic() - started < 1.5
    assert sink.pending == 0
    assert 0 < sink.dropped < 1000  # what the pipe took is not counted as lost


def test_close_gives_up_on_a_consumer_that_never_reads(pipe: tuple[int, int]) -> None:
    _, write_end = pipe
    sink = LogSink(write_end)
    for _ in range(1000):
        sink.write(b"x" * 999 + b"\n")
    started = time.monotonic()
    sink.close(timeout=0.5)
    assert time.monotonic() - started < 2
    assert sink.dropped > 0


def test_a_consumer_that_went_away_costs_counted_lines_not_an_exception(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    os.close(read_end)
    sink = LogSink(write_end)
    sink.write(b"one\n")  # EPIPE: Python ignores SIGPIPE, the write fails
    sink.write(b"two\n")
    sink.close(timeout=0.1)
    assert sink.dropped == 2


def test_the_shared_descriptor_is_left_blocking(pipe: tuple[int, int]) -> None:
    # O_NONBLOCK on the stdout that the supervisor and the other workers share would make their
    # writes fail with EAGAIN too: the sink writes through a description of its own.
    _, write_end = pipe
    sink = LogSink(write_end)
    assert os.get_blocking(write_end)
    assert sink._output.fileno != write_end
    assert not os.get_blocking(sink._output.fileno)


def test_blocks_to_a_pipe_never_exceed_pipe_buf_unless_a_line_does(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    reader = Reader(read_end)
    reader.start()
    sink = LogSink(write_end)
    written: list[bytes] = []
    real_write = sink._output.write

    def record(data: memoryview) -> int:
        count = real_write(data)  # a write the pipe refused (EAGAIN) is not recorded
        written.append(bytes(data[:count]))
        return count

    sink._output = dataclasses.replace(sink._output, write=record)

    async def burst() -> None:
        for index in range(300):
            sink.write(b"y" * (index % 997) + b"\n")
        sink.write(b"z" * (select.PIPE_BUF * 2) + b"\n")
        for _ in range(50):
            sink.write(b"w" * 199 + b"\n")
        await sink.aclose()

    asyncio.run(burst())
    sink.close()
    os.close(write_end)
    text = reader.text()
    assert len(written) > 1
    assert all(block.endswith(b"\n") for block in written)
    assert all(len(block) <= select.PIPE_BUF or block.count(b"\n") == 1 for block in written)
    assert b"".join(written) == text


def test_workers_sharing_a_pipe_never_interleave_lines(pipe: tuple[int, int]) -> None:
    # Three sinks on one pipe, as three workers on one stdout, each on its own event loop,
    # against a consumer that reads in small slow bites, so the pipe is full most of the time.
    read_end, write_end = pipe
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    reader = Reader(read_end, pause=0.0005, size=1500)
    reader.start()

    def worker(name: bytes) -> None:
        async def run() -> None:
            sink = LogSink(write_end, flush_interval=0.01)
            for index in range(400):
                body = b"%s-%d-" % (name, index) + name * (index * 37 % 1500)
                sink.write(body + b"|%d\n" % len(body))
                if index % 50 == 0:
                    await asyncio.sleep(0)
            await sink.aclose(timeout=20)
            assert sink.dropped == 0
            sink.close()

        asyncio.run(run())

    threads = [threading.Thread(target=worker, args=(name,)) for name in (b"a", b"b", b"c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    os.close(write_end)
    lines = reader.text().split(b"\n")[:-1]
    assert len(lines) == 1200
    for line in lines:
        body, _, length = line.rpartition(b"|")
        assert len(body) == int(length), line[:80]
        name = body[:1]
        assert body.replace(name, b"").strip(b"-0123456789") == b"", line[:80]


async def test_lines_from_another_thread_are_not_lost(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    reader = Reader(read_end)
    reader.start()
    sink = LogSink(write_end, flush_interval=0.01)

    def other() -> None:
        for index in range(2000):
            sink.write(b"thread %d\n" % index)

    thread = threading.Thread(target=other)
    thread.start()
    for index in range(2000):
        sink.write(b"loop %d\n" % index)
        if index % 100 == 0:
            await asyncio.sleep(0)
    thread.join()
    await sink.aclose()
    sink.close()
    os.close(write_end)
    lines = reader.text().splitlines()
    assert sorted(lines) == sorted([b"thread %d" % i for i in range(2000)] + [b"loop %d" % i for i in range(2000)])


async def test_a_regular_file_takes_whole_buffers(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        sink = LogSink(fd, flush_interval=3600)
        writes: list[int] = []
        real_write = sink._output.write

        def record(data: memoryview) -> int:
            writes.append(len(data))
            return real_write(data)

        sink._output = dataclasses.replace(sink._output, write=record)
        lines = numbered(1000, width=300)
        for line in lines:
            sink.write(line)
        await sink.aclose()
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(lines)
    assert len(writes) <= 4  # ~170 KB in 64 KiB buffers, not in PIPE_BUF pieces
    assert max(writes) >= 64 * 1024


async def test_a_stalled_socket_costs_dropped_lines_not_a_blocked_loop() -> None:
    # systemd's journal takes stdout as a stream socket.
    ours, theirs = socket.socketpair()
    try:
        sink = LogSink(ours.fileno(), max_buffer=50_000, flush_interval=0.01)
        started = time.monotonic()
        for _ in range(20_000):
            sink.write(b"s" * 199 + b"\n")  # 4 MB, far more than the socket buffers hold
        assert time.monotonic() - started < 1
        assert sink.dropped > 0
        assert ours.getblocking()
        theirs.setblocking(False)
        received = 0
        for _ in range(200):
            try:
                received += len(theirs.recv(1 << 20))
            except BlockingIOError:
                if not sink.pending:
                    break
                await asyncio.sleep(0.01)
        await sink.aclose()
        assert received % 200 == 0
        assert received // 200 + sink.dropped == 20_000
    finally:
        ours.close()
        theirs.close()


async def test_the_buffer_is_reused_not_reallocated_per_batch() -> None:
    # /dev/null takes everything at once: the steady state of a consumer that keeps up, written
    # in PIPE_BUF blocks as a pipe is.
    null = os.open(os.devnull, os.O_WRONLY)
    sink = LogSink(null, flush_interval=3600)
    assert sink._output.block == select.PIPE_BUF
    line = b"r" * 449 + b"\n"
    for _ in range(1000):  # warm-up: the buffer reaches its working size
        sink.write(line)
    capacity = len(sink._buffer)
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(20_000):  # 9 MB through the sink: some 140 batches
            sink.write(line)
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    await sink.aclose()
    sink.close()
    os.close(null)
    assert len(sink._buffer) == capacity
    assert peak < 4096  # no batch-sized allocation, ever


def test_sensitive_query_values_are_redacted() -> None:
    sensitive = frozenset({b"token", b"password"})
    assert redact_query(b"token=abc&x=1&PASSWORD=hunter2&password", sensitive) == (
        "token=[REDACTED]&x=1&PASSWORD=[REDACTED]&password"
    )
    assert redact_query(b"", sensitive) == ""
    assert redact_query(b"a=b=c&token==x", sensitive) == "a=b=c&token=[REDACTED]"


async def test_settle_writes_what_is_buffered_and_leaves_no_timer(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    sink = LogSink(write_end, flush_interval=3600)
    sink.write(b"before the reload\n")
    assert readable(read_end) == b""  # buffered, a timer armed
    sink.settle()
    assert readable(read_end) == b"before the reload\n"
    scheduled = asyncio.get_running_loop()._scheduled  # type: ignore[attr-defined]
    assert not [handle for handle in scheduled if not handle.cancelled()]
    sink.write(b"after\n")  # the sink keeps serving the next runtime
    await sink.aclose()
    assert readable(read_end) == b"after\n"


async def test_settle_gives_nothing_up_when_the_consumer_is_behind(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    sink = LogSink(write_end, buffer_size=4096, max_buffer=1 << 20, flush_interval=3600)
    lines = numbered(1000, width=200)  # more than the pipe holds
    for line in lines:
        sink.write(line)
    sink.settle()
    assert sink.pending > 0
    assert sink.dropped == 0  # unlike aclose, a reload keeps them for when the consumer reads
    received = bytearray()
    for _ in range(200):
        received += readable(read_end)
        if not sink.pending:
            break
        await asyncio.sleep(0.01)
    received += readable(read_end)
    assert bytes(received) == b"".join(lines)
    await sink.aclose()


def test_structlog_can_write_to_the_sink(pipe: tuple[int, int]) -> None:
    # structlog keeps a lock per file in a WeakKeyDictionary: the sink, a native class of the
    # compiled build that cannot be weakly referenced, is handed to it in an adapter that can.
    sink = LogSink(pipe[1])
    file = StructlogFile(sink)
    assert weakref.ref(file)() is file
    logger = structlog.BytesLoggerFactory(file)()  # type: ignore[arg-type]
    logger.msg(b"a line")
    sink.flush()
    assert os.read(pipe[0], 100) == b"a line\n"
