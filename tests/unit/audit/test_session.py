"""The audit's client pieces (audit/session.py, audit/wire.py, audit/command.py): URL parsing,
request budgets and pacing, raw request heads, raw response parsing, --header parsing."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from guardproxy import cli
from guardproxy.audit.command import _headers
from guardproxy.audit.session import RequestBudget, Session, Target, describe_error
from guardproxy.audit.wire import read_response


def test_target_parse() -> None:
    target = Target.parse("https://api.example.test/v1/items?x=1")
    assert (target.scheme, target.host, target.port, target.authority) == (
        "https",
        "api.example.test",
        443,
        "api.example.test",
    )
    assert target.target == "/v1/items?x=1"
    assert Target.parse("http://127.0.0.1:8000").target == "/"
    assert Target.parse("http://[::1]:8000/").host == "::1"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.test/", "not an http"),
        ("http:///nohost", "not an http"),
        ("http://example.test:99999/", "invalid port"),
        ("http://user:secret@example.test/", "credentials"),
    ],
)
def test_target_parse_refuses(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Target.parse(url)


async def test_budget_stops_at_its_limit() -> None:
    budget = RequestBudget(3, rate=1000)
    assert [await budget.take() for _ in range(5)] == [True, True, True, False, False]
    assert budget.used == 3


async def test_budget_paces_requests() -> None:
    budget = RequestBudget(100, rate=50)
    started = time.monotonic()
    for _ in range(6):
        await budget.take()
    assert time.monotonic() - started >= 5 / 50 * 0.9


async def test_session_refuses_unsafe_methods_unless_allowed() -> None:
    async with Session(Target.parse("http://127.0.0.1:9/")) as session:
        with pytest.raises(ValueError, match="POST is not allowed"):
            await session.request("POST")
        assert not session.allows("DELETE")
    async with Session(Target.parse("http://127.0.0.1:9/"), methods=["post"]) as session:
        assert session.allows("POST")


async def test_raw_heads_carry_the_operator_headers() -> None:
    async with Session(Target.parse("http://127.0.0.1:9/x?y=1"), headers=[("Authorization", "Bearer t")]) as session:
        head = session.head("GET", [("X-A", "1")])
        assert head == b"GET /x?y=1 HTTP/1.1\r\nHost: 127.0.0.1:9\r\nAuthorization: Bearer t\r\nX-A: 1\r\n\r\n"
        assert session.head("GET", target="/long", host="evil.invalid").startswith(
            b"GET /long HTTP/1.1\r\nHost: evil.invalid\r\n"
        )


async def test_a_host_given_with_header_replaces_the_urls() -> None:
    async with Session(Target.parse("http://127.0.0.1:9/"), headers=[("host", "api.example.test")]) as session:
        assert session.head("GET") == b"GET / HTTP/1.1\r\nHost: api.example.test\r\n\r\n"
        assert session.extra_headers == []


def _reader(*chunks: bytes, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    for chunk in chunks:
        reader.feed_data(chunk)
    if eof:
        reader.feed_eof()
    return reader


async def test_read_response_parses_a_complete_answer() -> None:
    reader = _reader(
        b"HTTP/1.1 413 Content Too Large\r\nContent-Type: application/problem+json\r\n", b"Content-Length: 2\r\n\r\n{}"
    )
    exchange = await read_response(reader, "x", timeout=1, started=time.monotonic())
    assert exchange.status == 413
    assert exchange.header("content-type") == "application/problem+json"
    assert exchange.body == b"{}"
    assert exchange.error is None


async def test_read_response_reports_garbage_silence_and_a_close() -> None:
    garbage = await read_response(_reader(b"\x16\x03\x01\x00\xff garbage"), "x", timeout=1, started=time.monotonic())
    assert garbage.status is None
    assert garbage.error == "answered with bytes that are not HTTP/1.x"
    silent = await read_response(_reader(eof=False), "x", timeout=0.2, started=time.monotonic())
    assert silent.status is None
    assert silent.error == "no complete answer within 0.2 s"
    assert not silent.closed
    closed = await read_response(_reader(), "x", timeout=1, started=time.monotonic())
    assert closed.closed
    assert closed.error == "closed the connection without an answer"


async def test_read_response_bounds_the_body_it_keeps() -> None:
    size = 1024 * 1024
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size
    exchange = await read_response(_reader(head, b"x" * size), "x", timeout=2, started=time.monotonic())
    assert exchange.status == 200
    assert len(exchange.body) <= 256 * 1024


def test_errors_are_described_in_words() -> None:
    refused = httpx.ConnectError("All connection attempts failed")
    refused.__cause__ = OSError("All connection attempts failed")
    refused.__cause__.__cause__ = ConnectionRefusedError(111, "refused")
    assert describe_error(refused, 5) == "connection refused"
    assert describe_error(httpx.ReadTimeout("timed out"), 5) == "connected, but no answer within 5 s"
    assert describe_error(httpx.ConnectTimeout("timed out"), 2) == "no connection within 2 s"
    assert (
        describe_error(httpx.RemoteProtocolError("illegal status line"), 5)
        == "answered with bytes that are not HTTP/1.x"
    )
    disconnected = httpx.RemoteProtocolError("Server disconnected without sending a response.")
    assert describe_error(disconnected, 5) == "closed the connection without an answer"


def test_header_arguments() -> None:
    assert _headers(["Authorization: Bearer x", "X-A:1"]) == [("Authorization", "Bearer x"), ("X-A", "1")]
    for bad in ("no colon", ": empty name", "Bad Name: x", "X-A: one\r\nX-B: two"):
        with pytest.raises(ValueError, match="--header"):
            _headers([bad])


@pytest.mark.parametrize(
    "argv",
    [
        ["--method", "GET /x"],
        ["--header", "no colon"],
        ["--timeout", "0"],
        ["--burst", "0"],
    ],
)
def test_bad_arguments_exit_2_before_any_request(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["audit", "http://127.0.0.1:9/", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("guardproxy audit: ")
