"""The log sink: whole lines, in order, in pipe-atomic batches, never blocking the caller."""

from __future__ import annotations

import os
import select
import threading
import time

from guardproxy.observability.access_log import redact_query
from guardproxy.observability.sink import LogSink


def test_lines_arrive_whole_in_order() -> None:
    read_end, write_end = os.pipe()
    chunks: list[bytes] = []

    def read_all() -> None:
        while chunk := os.read(read_end, 1 << 20):
            chunks.append(chunk)

    reader = threading.Thread(target=read_all)
    reader.start()
    sink = LogSink(write_end, interval=0.01)
    lines = [b"%d %s\n" % (index, b"x" * (index % 700)) for index in range(2000)]
    for line in lines:
        sink.write(line)
    sink.close()
    os.close(write_end)
    reader.join(10)
    os.close(read_end)
    assert b"".join(chunks) == b"".join(lines)


def test_close_gives_up_on_a_consumer_that_never_reads() -> None:
    read_end, write_end = os.pipe()
    sink = LogSink(write_end, interval=0.01)
    for _ in range(1000):
        sink.write(b"x" * 1000 + b"\n")  # far more than a pipe holds
    started = time.monotonic()
    sink.close(timeout=0.5)
    assert time.monotonic() - started < 2
    os.close(read_end)
    os.close(write_end)


def test_a_stalled_consumer_costs_dropped_lines_not_a_blocked_caller() -> None:
    read_end, write_end = os.pipe()
    sink = LogSink(write_end, max_pending=100, interval=3600)  # the writer never gets to run
    for index in range(150):
        sink.write(b"line %d\n" % index)
    assert sink.dropped == 50
    os.close(read_end)
    sink.close(timeout=1)  # a pipe nobody reads any more must not raise either
    os.close(write_end)


def test_batches_never_exceed_pipe_buf_unless_a_line_does() -> None:
    written: list[bytes] = []
    sink = LogSink(interval=0.01)
    sink._write = written.append  # type: ignore[method-assign,assignment]  # observe the batching only
    for _ in range(100):
        sink.write(b"y" * 999 + b"\n")
    sink.write(b"z" * (select.PIPE_BUF * 2) + b"\n")
    sink.close()
    assert all(len(batch) <= select.PIPE_BUF for batch in written[:-1])
    assert all(batch.endswith(b"\n") for batch in written)


def test_sensitive_query_values_are_redacted() -> None:
    sensitive = frozenset({b"token", b"password"})
    assert redact_query(b"token=abc&x=1&PASSWORD=hunter2&password", sensitive) == (
        "token=[REDACTED]&x=1&PASSWORD=[REDACTED]&password"
    )
    assert redact_query(b"", sensitive) == ""
    assert redact_query(b"a=b=c&token==x", sensitive) == "a=b=c&token=[REDACTED]"
