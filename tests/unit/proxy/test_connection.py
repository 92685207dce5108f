"""One upstream connection byte by byte (proxy/connection.py): response bytes in, what the
forwarder sees out; no sockets. And the pool's request head and body framing (proxy/pool.py)."""

from __future__ import annotations

import asyncio

import pytest

from guardproxy.http1.flow import HIGH_WATER
from guardproxy.proxy.connection import UpstreamConnection
from guardproxy.proxy.errors import UpstreamClosedError, UpstreamProtocolError, UpstreamTimeoutError
from guardproxy.proxy.pool import _request_head
from guardproxy.proxy.transport import UpstreamRequest
from tests.support.wire import RecordingTransport


def connection(*, head_only: bool = False) -> tuple[UpstreamConnection, RecordingTransport]:
    upstream = UpstreamConnection(asyncio.get_running_loop())
    transport = RecordingTransport()
    upstream.connection_made(transport)
    upstream.begin(head_only=head_only, idle_timeout=1.0)
    return upstream, transport


async def body_of(upstream: UpstreamConnection) -> bytes:
    chunks = []
    while chunk := await upstream.read_chunk():
        chunks.append(chunk)
    return b"".join(chunks)


async def test_a_response_with_content_length_is_reusable_once_read() -> None:
    upstream, _ = connection()
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhel")
    await upstream.head
    assert upstream.response_head() == (200, [(b"content-length", b"5"), (b"x-a", b"1")])
    upstream.data_received(b"lo")
    assert await body_of(upstream) == b"hello"
    assert upstream.reusable


async def test_chunk_ready_says_whether_a_read_would_wait() -> None:
    upstream, _ = connection()
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
    await upstream.head
    assert not upstream.chunk_ready  # nothing of the body yet: a read waits
    upstream.data_received(b"ab")
    assert upstream.chunk_ready
    assert await upstream.read_chunk() == b"ab"
    assert not upstream.chunk_ready  # two bytes still due
    upstream.data_received(b"cd")
    assert await upstream.read_chunk() == b"cd"
    assert upstream.chunk_ready  # complete: a read returns b"" at once
    assert await upstream.read_chunk() == b""


async def test_a_broken_body_is_ready_to_raise_and_an_empty_one_to_end() -> None:
    upstream, _ = connection()
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\npart")
    await upstream.head
    assert await upstream.read_chunk() == b"part"
    upstream.connection_lost(ConnectionResetError())
    assert upstream.chunk_ready  # a read raises at once instead of waiting
    with pytest.raises(UpstreamClosedError):
        await upstream.read_chunk()
    empty, _ = connection()
    empty.data_received(b"HTTP/1.1 204 No Content\r\n\r\n")
    await empty.head
    assert empty.chunk_ready


async def test_interim_responses_are_skipped_for_the_final_one() -> None:
    upstream, _ = connection()
    upstream.data_received(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
    assert not upstream.head_received
    upstream.data_received(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    await upstream.head
    assert upstream.response_head() == (201, [(b"content-length", b"0")])


async def test_a_close_delimited_body_ends_with_the_close_and_is_not_reused() -> None:
    upstream, _ = connection()
    upstream.data_received(b"HTTP/1.1 200 OK\r\n\r\nall of it")
    await upstream.head
    upstream.eof_received()
    assert await body_of(upstream) == b"all of it"
    assert not upstream.reusable


async def test_a_head_response_ends_with_its_head() -> None:
    upstream, _ = connection(head_only=True)
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    await upstream.head
    assert await body_of(upstream) == b""
    assert upstream.body_drained


@pytest.mark.parametrize(
    "garbage",
    [
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"NOT HTTP\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    ],
)
async def test_an_invalid_response_fails_the_exchange_and_closes_the_connection(garbage: bytes) -> None:
    upstream, transport = connection()
    upstream.data_received(garbage)
    await upstream.head
    with pytest.raises(UpstreamProtocolError):
        upstream.response_head()
    assert transport.closed
    assert not upstream.reusable


async def test_a_second_response_to_one_request_is_a_protocol_error() -> None:
    upstream, transport = connection()
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert transport.closed
    assert not upstream.reusable


async def test_a_reset_mid_body_is_an_error_for_the_reader_not_an_early_end() -> None:
    upstream, _ = connection()
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    await upstream.head
    assert await upstream.read_chunk() == b"abc"
    upstream.connection_lost(ConnectionResetError())
    with pytest.raises(UpstreamClosedError, match="reset"):
        await upstream.read_chunk()


async def test_a_slow_reader_stops_the_socket_being_read_and_resumes_it() -> None:
    upstream, transport = connection()
    upstream.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    await upstream.head
    piece = b"x" * 65536
    for _ in range(HIGH_WATER // len(piece) + 1):
        upstream.data_received(b"%x\r\n%b\r\n" % (len(piece), piece))
    assert not transport.reading
    await upstream.read_chunk()
    assert transport.reading


async def test_an_exchange_with_no_progress_times_out() -> None:
    upstream, transport = connection()
    upstream.check_idle(asyncio.get_running_loop().time() + 0.5)
    assert not transport.closed
    upstream.check_idle(asyncio.get_running_loop().time() + 1.0)
    await upstream.head
    with pytest.raises(UpstreamTimeoutError):
        upstream.response_head()


def test_the_request_head_is_sent_as_is_and_a_body_without_length_goes_chunked() -> None:
    async def body():  # type: ignore[no-untyped-def]
        yield b"x"

    request = UpstreamRequest(b"POST", b"/a%20b?q", [(b"host", b"x")], body(), None, 1.0, 1.0)
    assert _request_head(request) == b"POST /a%20b?q HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
    plain = UpstreamRequest(b"GET", b"/", [(b"host", b"x")], None, None, 1.0, 1.0)
    assert _request_head(plain) == b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"
