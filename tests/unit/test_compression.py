"""Negotiation and header rules of guards/compression.py, without sockets."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest
from backports.zstd import ZstdDecompressor
from backports.zstd import decompress as zstd_decompress
from hypothesis import given
from hypothesis import strategies as st

from guardproxy.guards.compression import (
    BrotliEncoder,
    GzipEncoder,
    ZstdEncoder,
    media_type_matcher,
    negotiate,
)
from guardproxy.http1.fields import merge_vary

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
