"""Malformed and hostile requests over raw sockets: each gets a problem response, the connection
closes, nothing half-parsed reaches the upstream, and the worker keeps serving."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.support.processes import Guardproxy
from tests.support.raw import (
    RawUpstream,
    parse_responses,
    raw_exchange,
    raw_upstream,
    read_request_head,
    read_until_close,
)


@pytest.fixture
def recording_upstream() -> Iterator[RawUpstream]:
    """An upstream that records every request head it receives and answers 200."""

    def handler(conn: socket.socket, _: int) -> None:
        while head := read_request_head(conn):
            upstream.received.append(head)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    with raw_upstream(handler) as upstream:
        yield upstream


MALFORMED = {
    "content-length with transfer-encoding": (
        b"POST /smuggle HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n"
    ),
    "transfer-encoding with content-length": (
        b"POST /smuggle HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\n"
    ),
    "duplicate content-length": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "signed content-length": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
    "negative content-length": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    "non-numeric content-length": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5a\r\n\r\nhello",
    "unknown transfer-encoding": (
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    ),
    "hex-prefixed chunk size": (
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n"
    ),
    "chunk size garbage": b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "NUL in header value": b"GET /x HTTP/1.1\r\nHost: a\r\nX-Bad: a\x00b\r\n\r\n",
    "bare CR in header value": b"GET /x HTTP/1.1\r\nHost: a\r\nX-Bad: a\rb\r\n\r\n",
    "bare LF line endings": b"GET /x HTTP/1.1\nHost: a\n\n",
    "obs-fold": b"GET /x HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n",
    "space before colon": b"GET /x HTTP/1.1\r\nHost: a\r\nX-Bad : a\r\n\r\n",
    "garbage request line": b"HELLO\r\n\r\n",
    "binary garbage": bytes(range(256)) * 4,
    "missing version": b"GET /x\r\nHost: a\r\n\r\n",
    "unsupported version": b"GET /x HTTP/3.7\r\nHost: a\r\n\r\n",
    "absolute-form with bad url": b"GET http://[::1 HTTP/1.1\r\nHost: a\r\n\r\n",
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_request_gets_problem_and_close(
    start_proxy,
    recording_upstream: RawUpstream,
    data: bytes,  # type: ignore[no-untyped-def]
) -> None:
    gp: Guardproxy = start_proxy(recording_upstream.url)
    response = raw_exchange(gp.port, data)
    parsed = parse_responses(response)
    assert len(parsed) == 1, response
    assert parsed[0].status == 400
    assert parsed[0].header(b"content-type") == b"application/problem+json"
    assert parsed[0].header(b"connection") == b"close"
    problem = orjson.loads(parsed[0].body)
    assert problem["status"] == 400
    assert problem["type"].startswith("urn:guardproxy:problem:")
    assert problem["request_id"].encode() == parsed[0].header(b"x-request-id")
    # Nothing broken, and nothing smuggled behind it, reached the upstream.
    assert recording_upstream.received == []
    # The worker is unharmed.
    assert httpx.get(f"{gp.url}/after", timeout=5).status_code == 200


def test_transfer_coding_other_than_chunked_is_not_implemented(start_proxy, recording_upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(recording_upstream.url)
    data = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
    parsed = parse_responses(raw_exchange(gp.port, data))
    assert parsed[0].status == 501
    assert recording_upstream.received == []


def test_bad_chunk_after_a_good_one_never_completes_upstream(start_proxy) -> None:  # type: ignore[no-untyped-def]
    """The head is fine and forwarding has begun when the body turns out to be broken: the
    upstream must see its request cut off, never a complete one."""
    bodies: list[bytes] = []

    def handler(conn: socket.socket, _: int) -> None:
        head = read_request_head(conn)
        conn.settimeout(5)
        data = head.partition(b"\r\n\r\n")[2]
        while chunk := conn.recv(65536):
            data += chunk
        bodies.append(data)

    with raw_upstream(handler) as upstream:
        gp = start_proxy(upstream.url)
        data = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        with socket.create_connection(("127.0.0.1", gp.port), timeout=5) as sock:
            sock.sendall(data)
            time.sleep(0.3)
            sock.sendall(b"zz\r\nbroken\r\n0\r\n\r\n")
            response = read_until_close(sock)
        deadline = time.monotonic() + 5
        while not bodies and time.monotonic() < deadline:
            time.sleep(0.05)
    parsed = parse_responses(response)
    assert parsed[0].status == 400
    assert bodies, "the upstream connection was never closed"
    assert not bodies[0].endswith(b"0\r\n\r\n"), "the upstream received a complete chunked body"


def test_request_head_trickled_slowly_is_cut_at_the_deadline(start_proxy, recording_upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(recording_upstream.url, env={"GUARDPROXY_SERVER__REQUEST_HEAD_TIMEOUT": "1"})
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", gp.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n")
        response = b""
        try:
            for _ in range(40):
                sock.sendall(b"X-Drip: a\r\n")  # a byte-dripping client never completes its head
                time.sleep(0.1)
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    response += sock.recv(65536)
                sock.setblocking(True)
                if response:
                    break
        except OSError:
            pass
    elapsed = time.monotonic() - started
    assert elapsed < 2.5, f"connection still open after {elapsed:.1f}s"
    parsed = parse_responses(response)
    assert parsed
    assert parsed[0].status == 408
    assert recording_upstream.received == []


def test_idle_keep_alive_connection_is_closed(start_proxy, recording_upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(recording_upstream.url, env={"GUARDPROXY_SERVER__KEEP_ALIVE_TIMEOUT": "0.5"})
    with socket.create_connection(("127.0.0.1", gp.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        time.sleep(0.2)
        first = sock.recv(65536)
        started = time.monotonic()
        assert sock.recv(65536) == b""  # closed by the server, without another response
        assert time.monotonic() - started < 2
    assert parse_responses(first)[0].status == 200


def test_request_with_unread_body_closes_after_early_response(start_proxy) -> None:  # type: ignore[no-untyped-def]
    """An upstream that answers before reading the body: the unread rest must not be parsed
    as a new request on the kept-alive connection."""

    def handler(conn: socket.socket, _: int) -> None:
        read_request_head(conn)
        conn.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
        time.sleep(1)

    with raw_upstream(handler) as upstream:
        gp = start_proxy(upstream.url)
        smuggled = b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n"
        body = smuggled * 2000
        head = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body)
        with socket.create_connection(("127.0.0.1", gp.port), timeout=5) as sock:
            sock.sendall(head + body[:1000])
            response = read_until_close(sock)
    parsed = parse_responses(response)
    assert [r.status for r in parsed] == [413]
