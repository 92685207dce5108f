"""Negotiation and header rules of guards/compression.py, without sockets."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Sequence

import brotli
import pytest
from backports.zstd import ZstdDecompressor
from backports.zstd import decompress as zstd_decompress
from hypothesis import given
from hypothesis import strategies as st

from guardproxy.asgi import Message
from guardproxy.guards.chain import GuardChain
from guardproxy.guards.compression import (
    BrotliEncoder,
    GzipEncoder,
    ZstdEncoder,
    media_type_matcher,
    negotiate,
)
from guardproxy.http1.fields import merge_vary
from guardproxy.proxy.errors import UpstreamTimeoutError
from tests.support.factories import Reply, call, make_chain, make_scope, make_settings
from tests.support.mock_transport import MockResponse, MockTransport

PREFERENCE = ("br", "zstd", "gzip")


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("gzip", "gzip"),
        ("gzip, deflate, br", "br"),
        ("gzip;q=1.0, br;q=0.5", "gzip"),
        ("br;q=0.5, zstd;q=0.5, gzip;q=0.5", "br"),
        ("zstd, gzip", "zstd"),
        ("*", "br"),
        ("*;q=0.5, gzip;q=0.8", "gzip"),
        ("*, br;q=0", "zstd"),
        ("x-gzip", "gzip"),
        ("GZIP", "gzip"),
        (" gzip ; q=0.7 ", "gzip"),
        ("gzip;Q=1", "gzip"),
    ],
)
def test_negotiation_picks_the_best_coding(accept: str, expected: str) -> None:
    assert negotiate(accept, PREFERENCE) == expected


@pytest.mark.parametrize(
    "accept",
    [
        "",
        "identity",
        "deflate",
        "gzip;q=0",
        "gzip;q=0.000",
        "*;q=0",
        "*;q=0, identity",
        "gzip;q=bad",
        "gzip;q=2",
        "gzip;level=1",
        ",,,",
        "br;q=0, zstd;q=0, gzip;q=0",
    ],
)
def test_negotiation_falls_back_to_identity(accept: str) -> None:
    assert negotiate(accept, PREFERENCE) is None


def test_negotiation_respects_the_configured_algorithms() -> None:
    assert negotiate("br, zstd", ("gzip",)) is None
    assert negotiate("br, gzip", ("gzip", "br")) == "gzip"


@given(st.text(max_size=200))
def test_negotiation_never_fails_on_any_header(accept: str) -> None:
    assert negotiate(accept, PREFERENCE) in (None, *PREFERENCE)


@pytest.mark.parametrize(
    ("media_type", "compressible"),
    [
        ("application/json", True),
        ("application/problem+json", True),
        ("application/vnd.api+json", True),
        ("text/html", True),
        ("text/event-stream", True),
        ("image/svg+xml", True),
        ("image/png", False),
        ("application/octet-stream", False),
        ("application/jsonx", False),
        ("application/json/evil", False),
        ("text", False),
        ("video/mp4", False),
    ],
)
def test_media_type_patterns(media_type: str, compressible: bool) -> None:
    matcher = media_type_matcher(["application/json", "application/*+json", "text/*", "image/svg+xml"])
    assert (matcher.match(media_type) is not None) is compressible


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ([], [(b"vary", b"accept-encoding")]),
        ([(b"vary", b"Origin")], [(b"vary", b"Origin, accept-encoding")]),
        ([(b"vary", b"Accept-Encoding")], [(b"vary", b"Accept-Encoding")]),
        ([(b"vary", b"origin, accept-encoding")], [(b"vary", b"origin, accept-encoding")]),
        ([(b"vary", b"*")], [(b"vary", b"*")]),
    ],
)
def test_vary_is_merged_never_duplicated(before: list[tuple[bytes, bytes]], after: list[tuple[bytes, bytes]]) -> None:
    headers = list(before)
    merge_vary(headers, b"accept-encoding")
    assert headers == after


PAYLOAD = b'{"item":"compressible value"},' * 3000


@pytest.mark.parametrize(
    ("encoder", "decompress"),
    [
        (GzipEncoder(5), gzip.decompress),
        (BrotliEncoder(4), brotli.decompress),
        (ZstdEncoder(3), zstd_decompress),
    ],
    ids=["gzip", "br", "zstd"],
)
def test_encoders_round_trip_in_pieces_with_flushes(encoder, decompress) -> None:  # type: ignore[no-untyped-def]
    pieces = [PAYLOAD[:10], PAYLOAD[10:50_000], b"", PAYLOAD[50_000:]]
    out = []
    for index, piece in enumerate(pieces):
        out.append(encoder.compress(piece, flush=index % 2 == 0))
    out.append(encoder.finish())
    compressed = b"".join(out)
    assert decompress(compressed) == PAYLOAD
    assert len(compressed) < len(PAYLOAD) / 10


def _incremental_decoders():  # type: ignore[no-untyped-def]
    gzip_decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    brotli_decoder = brotli.Decompressor()
    zstd_decoder = ZstdDecompressor()
    return [
        (GzipEncoder(5), gzip_decoder.decompress),
        (BrotliEncoder(4), brotli_decoder.process),
        (ZstdEncoder(3), zstd_decoder.decompress),
    ]


@pytest.mark.parametrize(("encoder", "decode"), _incremental_decoders(), ids=["gzip", "br", "zstd"])
def test_a_flush_emits_everything_so_far(encoder, decode) -> None:  # type: ignore[no-untyped-def]
    """What streaming depends on: after each flush, a client decoding as bytes arrive already
    has every event sent so far."""
    for index in range(3):
        event = b"data: event %d\n\n" % index
        assert decode(encoder.compress(event, flush=True)) == event


# The decision on knowledge, through the real chain over a mock upstream (guards/compression.py).

JSON = [(b"content-type", b"application/json")]


def _chain_with(response: Callable[[], MockResponse]) -> GuardChain:
    settings = make_settings(logging={"access_log": False})
    chain, _ = make_chain(settings, MockTransport(lambda request: response()))
    return chain


async def _fetch(chain: GuardChain, accept: bytes = b"gzip", extra: Sequence[tuple[bytes, bytes]] = ()) -> Reply:
    headers = [(b"host", b"api.example.com"), (b"accept-encoding", accept), *extra]
    return await call(chain, make_scope("GET", "/items", headers=headers))


def _body_messages(reply: Reply) -> list[Message]:
    return [message for message in reply.messages if message["type"] == "http.response.body"]


async def test_a_small_body_of_unknown_length_is_not_inflated_by_gzip() -> None:

    body = b'{"id":1,"name":"small","ok":true,"n":1}\n'
    assert len(body) == 40
    reply = await _fetch(_chain_with(lambda: MockResponse(headers=list(JSON), chunks=(body,))))
    assert reply.header(b"content-encoding") is None
    assert reply.body == body
    # Now that it is known, the length is said (no chunked framing either).
    assert reply.header(b"content-length") == b"40"
    # Another client could have had it compressed: caches must still know.
    assert reply.header(b"vary") == b"accept-encoding"


async def test_a_small_first_chunk_decides_for_the_whole_stream_without_waiting() -> None:
    chunks = (b'{"a":1}', b'{"b":2}' * 400, b"")
    reply = await _fetch(_chain_with(lambda: MockResponse(headers=list(JSON), chunks=chunks)))
    assert reply.header(b"content-encoding") is None
    assert reply.header(b"content-length") is None  # the length was not known when it was decided
    assert reply.body == b"".join(chunks)
    # The head went out with the first chunk, as it was.
    assert _body_messages(reply)[0] == {"type": "http.response.body", "body": b'{"a":1}', "more_body": True}


async def test_a_large_first_chunk_with_more_to_come_is_compressed_and_flushed_at_once() -> None:
    first = b'{"a":1},' * 200
    chunks = (first, b'{"b":2}', b"")
    reply = await _fetch(_chain_with(lambda: MockResponse(headers=list(JSON), chunks=chunks)))
    assert reply.header(b"content-encoding") == b"gzip"
    assert reply.header(b"content-length") is None
    assert gzip.decompress(reply.body) == first + b'{"b":2}'
    message = _body_messages(reply)[0]
    assert message["more_body"] is True
    assert zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(message["body"]) == first


async def test_a_large_body_of_unknown_length_in_one_chunk_is_compressed_with_its_length() -> None:

    body = b'{"item":"compressible value"},' * 200
    reply = await _fetch(_chain_with(lambda: MockResponse(headers=[*JSON, (b"etag", b'"v7"')], chunks=(body,))))
    assert reply.header(b"content-encoding") == b"gzip"
    assert gzip.decompress(reply.body) == body
    assert reply.header(b"content-length") == str(len(reply.body)).encode()
    assert reply.header(b"etag") == b'W/"v7"'


async def test_an_empty_body_of_unknown_length_goes_out_as_it_is() -> None:

    reply = await _fetch(_chain_with(lambda: MockResponse(headers=list(JSON), chunks=(b"",))))
    assert reply.header(b"content-encoding") is None
    assert reply.header(b"content-length") == b"0"
    assert reply.body == b""


@pytest.mark.parametrize(("event", "compressed"), [(b"data: 1\n\n", False), (b"data: " + b"x" * 2000 + b"\n\n", True)])
async def test_server_sent_events_are_decided_by_their_first_event(event: bytes, compressed: bool) -> None:
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    reply = await _fetch(_chain_with(lambda: MockResponse(headers=list(headers), chunks=(event, b"data: 2\n\n", b""))))
    assert (reply.header(b"content-encoding") == b"gzip") is compressed
    assert [message["type"] for message in reply.messages][:2] == ["http.response.start", "http.response.body"]
    first = _body_messages(reply)[0]
    assert first["more_body"] is True
    decoded = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(first["body"]) if compressed else first["body"]
    assert decoded == event


async def test_sse_of_a_known_length_is_flushed_chunk_by_chunk() -> None:
    event = b"data: " + b"x" * 2000 + b"\n\n"
    headers = [(b"content-type", b"text/event-stream"), (b"content-length", b"%d" % (2 * len(event)))]
    reply = await _fetch(_chain_with(lambda: MockResponse(headers=list(headers), chunks=(event, event))))
    first = _body_messages(reply)[0]
    assert zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(first["body"]) == event


async def test_a_client_that_accepts_no_coding_gets_the_stream_untouched() -> None:

    reply = await _fetch(_chain_with(lambda: MockResponse(headers=list(JSON), chunks=(b"{}",))), accept=b"identity")
    assert reply.header(b"content-encoding") is None
    assert reply.header(b"content-length") is None  # nothing was held or measured
    assert reply.body == b"{}"


async def test_an_upstream_failing_before_the_first_chunk_cuts_the_response() -> None:

    def failing() -> MockResponse:
        return MockResponse(headers=list(JSON), chunks=(), fail_after=UpstreamTimeoutError("read"))

    reply = await _fetch(_chain_with(failing))
    # The held head never went out: no response claims to be whole.
    assert reply.status == 0


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        (b'W/"v7"', b'W/"v7"'),  # the client holds the compressed 200's validator: say that one
        (b'"other", W/"v7"', b'W/"v7"'),
        (b'"v7"', b'"v7"'),  # it holds the identity 200's: the strong one stays
        (b'W/"v8"', b'"v7"'),
    ],
)
async def test_a_304_names_the_validator_the_client_holds(sent: bytes, expected: bytes) -> None:

    chain = _chain_with(lambda: MockResponse(status=304, headers=[(b"etag", b'"v7"')], chunks=(b"",)))
    reply = await _fetch(chain, extra=[(b"if-none-match", sent)])
    assert reply.status == 304
    assert reply.header(b"etag") == expected
