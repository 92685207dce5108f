"""Trailer fields from the upstream, byte by byte through the server protocol and the real chain:
framed after the last chunk for a client that sent TE: trailers, dropped for every other one,
never in the header section, and only the fields that may be trailers."""

from __future__ import annotations

import gzip

from guardproxy.http1.fields import trailer_fields
from tests.support.factories import make_chain, make_settings
from tests.support.mock_transport import MockResponse, MockTransport
from tests.support.raw import parse_responses
from tests.support.wire import Wire

TRAILERS = [
    (b"x-checksum", b"42"),
    (b"content-length", b"999"),
    (b"set-cookie", b"session=evil"),
    (b"authorization", b"Bearer x"),
    (b"cache-control", b"public"),
    (b"content-type", b"text/html"),
    (b"transfer-encoding", b"gzip"),
    (b"access-control-allow-origin", b"*"),
    (b"strict-transport-security", b"max-age=0"),
    (b"x-timing", b"db;dur=53"),
]


def upstream(headers: list[tuple[bytes, bytes]] | None = None) -> MockTransport:
    return MockTransport(
        lambda request: MockResponse(
            headers=headers or [(b"content-type", b"text/plain")], chunks=(b"ab", b"cd"), trailers=TRAILERS
        )
    )


async def run(head: bytes, transport: MockTransport | None = None, **settings: object) -> Wire:
    chain, _ = make_chain(make_settings(**settings) if settings else None, transport=transport or upstream())
    wire = Wire(chain)
    wire.feed(head)
    await wire.settle()
    return wire


async def test_without_te_trailers_the_trailers_are_dropped_and_never_in_the_head() -> None:
    wire = await run(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    written = bytes(wire.transport.written)
    assert written.endswith(b"2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n")
    assert b"x-checksum" not in written
    assert b"session=evil" not in written
    (response,) = wire.responses()
    assert response.complete
    assert response.body == b"abcd"


async def test_with_te_trailers_the_allowed_fields_follow_the_last_chunk() -> None:
    wire = await run(b"GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n")
    written = bytes(wire.transport.written)
    head, _, body = written.partition(b"\r\n\r\n")
    assert b"x-checksum" not in head
    assert body.endswith(b"2\r\ncd\r\n0\r\nx-checksum: 42\r\nx-timing: db;dur=53\r\n\r\n")
    for forbidden in (b"999", b"session=evil", b"Bearer", b"public", b"text/html", b"gzip", b"max-age=0"):
        assert forbidden not in body
    (response,) = parse_responses(written)
    assert response.complete
    assert not wire.transport.closed  # keep-alive goes on after the trailer section


async def test_two_requests_on_one_connection_with_trailers_stay_in_step() -> None:
    request = b"GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n"
    wire = await run(request + request)
    responses = wire.responses()
    assert [response.status for response in responses] == [200, 200]
    assert all(response.complete and response.body == b"abcd" for response in responses)


async def test_a_response_with_a_length_or_an_http_10_client_gets_no_trailers() -> None:
    sized = upstream([(b"content-length", b"4")])
    wire = await run(b"GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n", sized)
    assert bytes(wire.transport.written).endswith(b"\r\n\r\nabcd")
    assert wire.responses()[0].complete
    old = await run(b"GET / HTTP/1.0\r\nHost: x\r\nTE: trailers\r\n\r\n")
    assert bytes(old.transport.written).endswith(b"\r\n\r\nabcd")
    head = await run(b"HEAD / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n")
    assert bytes(head.transport.written).endswith(b"\r\n\r\n")
    assert b"x-checksum" not in bytes(head.transport.written)


async def test_forward_trailers_false_drops_them_for_every_client() -> None:
    wire = await run(
        b"GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n",
        upstream={"url": "http://127.0.0.1:9", "forward_trailers": False},
    )
    assert bytes(wire.transport.written).endswith(b"2\r\ncd\r\n0\r\n\r\n")


def test_trailer_fields_keeps_only_what_may_be_a_trailer() -> None:
    assert trailer_fields(TRAILERS) == [(b"x-checksum", b"42"), (b"x-timing", b"db;dur=53")]


async def test_trailers_follow_a_compressed_body() -> None:
    body = b'{"item":"compressible value"},' * 200
    compressible = MockTransport(
        lambda request: MockResponse(
            headers=[(b"content-type", b"application/json")], chunks=(body[:3000], body[3000:]), trailers=TRAILERS
        )
    )
    wire = await run(b"GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nAccept-Encoding: gzip\r\n\r\n", compressible)
    written = bytes(wire.transport.written)
    assert b"content-encoding: gzip\r\n" in written
    assert written.endswith(b"\r\n0\r\nx-checksum: 42\r\nx-timing: db;dur=53\r\n\r\n")
    (response,) = wire.responses()
    assert response.complete
    assert gzip.decompress(response.body) == body
