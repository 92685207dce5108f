"""An upstream's response checked byte by byte (proxy/connection.py): statuses outside 100-599,
heads past their limits and trailer fields that must not join the head."""

from __future__ import annotations

import asyncio

import pytest

from guardproxy.proxy.connection import UpstreamConnection
from guardproxy.proxy.errors import UpstreamProtocolError
from tests.support.wire import RecordingTransport


def connection(**limits: int) -> UpstreamConnection:
    upstream = UpstreamConnection(asyncio.get_running_loop(), **limits)
    upstream.connection_made(RecordingTransport())
    upstream.begin(head_only=False, idle_timeout=1.0)
    return upstream


async def body_of(upstream: UpstreamConnection) -> bytes:
    chunks = []
    while chunk := await upstream.read_chunk():
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("status", [b"999", b"600", b"099", b"000"])
async def test_a_status_outside_100_to_599_fails_the_exchange(status: bytes) -> None:
    upstream = connection()
    upstream.data_received(b"HTTP/1.1 " + status + b" Odd\r\nContent-Length: 0\r\n\r\n")
    await upstream.head
    with pytest.raises(UpstreamProtocolError, match="outside 100-599"):
        upstream.response_head()
    assert upstream.closed
    assert not upstream.reusable


async def test_a_head_past_its_size_fails_even_while_one_field_never_ends() -> None:
    upstream = connection(max_head_bytes=2048)
    upstream.data_received(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 1000)
    assert not upstream.head_received
    upstream.data_received(b"a" * 1100)
    await upstream.head
    with pytest.raises(UpstreamProtocolError, match="too large"):
        upstream.response_head()


async def test_interim_responses_count_toward_the_head_limit() -> None:
    upstream = connection(max_head_bytes=2048)
    hint = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    upstream.data_received(hint * 60)
    await upstream.head
    with pytest.raises(UpstreamProtocolError):
        upstream.response_head()


async def test_too_many_fields_fail_the_exchange() -> None:
    upstream = connection(max_header_fields=10)
    upstream.data_received(b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(11)) + b"\r\n")
    await upstream.head
    with pytest.raises(UpstreamProtocolError, match="too many"):
        upstream.response_head()


async def test_a_head_within_the_limits_passes() -> None:
    upstream = connection(max_header_fields=10, max_head_bytes=2048)
    upstream.data_received(
        b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(9)) + b"Content-Length: 0\r\n\r\n"
    )
    await upstream.head
    assert len(upstream.response_head()[1]) == 10


async def test_trailer_fields_never_join_the_head_and_are_kept_apart() -> None:
    upstream = connection()
    # One packet: the head's waiter only runs after the whole packet, trailers included, was parsed.
    upstream.data_received(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-Checksum: 42\r\nSet-Cookie: a=b\r\n\r\n"
    )
    await upstream.head
    _status, headers = upstream.response_head()
    assert headers == [(b"transfer-encoding", b"chunked"), (b"trailer", b"X-Checksum")]
    assert await body_of(upstream) == b"abc"
    assert upstream.trailers == [(b"x-checksum", b"42"), (b"set-cookie", b"a=b")]
    assert upstream.reusable


async def test_too_many_trailer_fields_fail_the_exchange() -> None:
    upstream = connection(max_header_fields=10)
    upstream.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")
    await upstream.head
    upstream.data_received(b"0\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(11)) + b"\r\n")
    with pytest.raises(UpstreamProtocolError):
        await body_of(upstream)


async def test_trailers_are_reset_for_the_next_exchange() -> None:
    upstream = connection()
    upstream.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-A: 1\r\n\r\n")
    await upstream.head
    await body_of(upstream)
    upstream.begin(head_only=False, idle_timeout=1.0)
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    await upstream.head
    assert upstream.trailers == []
    assert upstream.response_head()[1] == [(b"content-length", b"0")]


async def test_a_trailer_section_past_the_size_limit_fails_the_exchange() -> None:
    upstream = connection(max_head_bytes=2048)
    upstream.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")
    await upstream.head
    upstream.data_received(b"0\r\nX-A: " + b"a" * 1500 + b"\r\nX-B: " + b"b" * 700)  # still arriving
    with pytest.raises(UpstreamProtocolError, match="trailer section too large"):
        await body_of(upstream)


async def test_a_trailer_field_that_never_ends_fails_the_exchange() -> None:
    upstream = connection(max_head_bytes=2048)
    upstream.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX-Endless: ")
    await upstream.head
    for _ in range(3):
        upstream.data_received(b"a" * 1000)
    with pytest.raises(UpstreamProtocolError, match="trailer section too large"):
        await body_of(upstream)


async def test_a_large_body_in_large_reads_is_not_mistaken_for_a_long_trailer() -> None:
    upstream = connection(max_head_bytes=2048)
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 30000\r\n\r\n" + b"x" * 10000)
    await upstream.head
    upstream.data_received(b"x" * 20000)
    assert len(await body_of(upstream)) == 30000


async def test_a_head_past_its_size_fails_when_it_arrives_in_one_read_with_its_body() -> None:
    upstream = connection(max_head_bytes=2048)
    upstream.data_received(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 3000 + b"\r\nContent-Length: 2\r\n\r\nok")
    await upstream.head
    with pytest.raises(UpstreamProtocolError, match="too large"):
        upstream.response_head()
