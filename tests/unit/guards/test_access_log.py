"""The access log's own formatting (observability/access_log.py)."""

from __future__ import annotations

import datetime
import os
import select
import time

import orjson
import pytest

from guardproxy.context import RequestContext
from guardproxy.guards.access_log import AccessLogGuard
from guardproxy.observability import access_log
from guardproxy.observability.access_log import Clock
from guardproxy.observability.sink import LogSink
from guardproxy.outcomes import Outcome
from guardproxy.routes import RoutePolicy


@pytest.mark.parametrize(
    ("ns", "expected"),
    [
        (1_795_000_000_000_000_000, "2026-11-18T11:06:40.000000Z"),
        (1_795_000_000_000_042_999, "2026-11-18T11:06:40.000042Z"),  # padded, truncated to µs
        (1_795_000_000_999_999_999, "2026-11-18T11:06:40.999999Z"),
        (1_795_000_001_000_000_000, "2026-11-18T11:06:41.000000Z"),  # the next second's prefix
    ],
)
def test_timestamps_are_iso_8601_utc_with_microseconds(monkeypatch: pytest.MonkeyPatch, ns: int, expected: str) -> None:
    clock = Clock()
    monkeypatch.setattr(f"{access_log.__name__}.time.time_ns", lambda: 1_795_000_000_500_000_000)
    clock.now()  # a cached prefix from an earlier second must not leak into the next one
    monkeypatch.setattr(f"{access_log.__name__}.time.time_ns", lambda: ns)
    assert clock.now() == expected


def test_a_clock_stepped_back_gets_its_own_second(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(time, "time_ns", lambda: 1_795_000_001_250_000_000)
    assert clock.now() == "2026-11-18T11:06:41.250000Z"
    monkeypatch.setattr(time, "time_ns", lambda: 1_795_000_000_750_000_000)  # NTP stepped back
    assert clock.now() == "2026-11-18T11:06:40.750000Z"


def test_timestamps_follow_the_real_clock() -> None:
    stamp = Clock().now()
    parsed = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert abs(parsed.timestamp() - time.time()) < 2


async def test_closing_the_guard_writes_the_lines_it_buffered() -> None:
    # The chain closes its guards when a worker drains; the access lines still in the sink's
    # buffer (well within its flush interval here) must reach the log then.
    read_end, write_end = os.pipe()
    try:
        sink = LogSink(write_end, flush_interval=3600)
        guard = AccessLogGuard(sink=sink, redact_query_params=["token"])
        scope = {
            "method": "GET",
            "path": "/items",
            "query_string": b"token=t0p&x=1",
            "headers": [(b"user-agent", b"t/1")],
        }
        context = RequestContext(route=RoutePolicy("default", 5.0, 60.0, None, 1024), client_host="192.0.2.7")
        context.request_id, context.status, context.outcome = "req-1", 429, Outcome.RATE_LIMITED
        guard.on_complete(scope, context)
        assert not select.select([read_end], [], [], 0)[0]  # buffered, not written per line
        await guard.aclose()
        request, audit = (orjson.loads(line) for line in os.read(read_end, 1 << 16).splitlines())
        sink.close()
    finally:
        os.close(read_end)
        os.close(write_end)
    assert request["event"] == "request"
    assert request["request_id"] == "req-1"
    assert request["query"] == "token=[REDACTED]&x=1"
    assert request["user_agent"] == "t/1"
    assert audit["event"] == "security_event"
    assert audit["kind"] == "rate_limited"


def test_a_line_carries_nothing_of_the_request_before_it() -> None:
    # The guard reuses one record for every line: each request must replace every value.
    read_end, write_end = os.pipe()
    try:
        sink = LogSink(write_end, flush_interval=3600)
        guard = AccessLogGuard(sink=sink, redact_query_params=["token"])
        first = RequestContext(route=RoutePolicy("api", 5.0, 60.0, None, 1024), client_host="192.0.2.7")
        first.request_id, first.status, first.subject = "req-1", 200, "alice"
        first.upstream_seconds, first.upstream_attempts, first.upstream_endpoint = 0.002, 2, "10.0.0.1:80"
        guard.on_complete(
            {"method": "POST", "path": "/a", "query_string": b"x=1", "headers": [(b"user-agent", b"t/1")]}, first
        )
        second = RequestContext(route=RoutePolicy("default", 5.0, 60.0, None, 1024), client_host="192.0.2.8")
        second.request_id, second.status = "req-2", 404
        guard.on_complete({"method": "GET", "path": "/b", "query_string": b"", "headers": []}, second)
        sink.flush()
        lines = os.read(read_end, 1 << 16).splitlines()
        sink.close()
    finally:
        os.close(read_end)
        os.close(write_end)
    one, two = (orjson.loads(line) for line in lines)
    assert list(one) == list(two)
    assert list(two)[:3] == ["timestamp", "level", "event"]
    assert (two["level"], two["event"]) == ("info", "request")
    assert {key: two[key] for key in ("request_id", "client", "method", "route", "path", "status")} == {
        "request_id": "req-2",
        "client": "192.0.2.8",
        "method": "GET",
        "route": "default",
        "path": "/b",
        "status": 404,
    }
    assert (two["query"], two["user_agent"], two["subject"]) == ("", "", "")
    assert (two["upstream_ms"], two["attempts"], two["endpoint"]) == (None, 0, None)
