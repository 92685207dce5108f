"""Compression over real sockets: negotiation, what is left alone, streaming, validators."""

from __future__ import annotations

import gzip
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import brotli
import httpx
import pytest
from backports.zstd import decompress as zstd_decompress

from tests.support.processes import Guardproxy, UpstreamProcess, start_guardproxy
from tests.support.raw import parse_responses, raw_exchange, request_bytes

DECODERS = {"gzip": gzip.decompress, "br": brotli.decompress, "zstd": zstd_decompress}


def fetch(proxy: Guardproxy, target: str, accept: str | None, method: str = "GET", **headers: str):  # type: ignore[no-untyped-def]
    request_headers = [("Connection", "close"), *headers.items()]
    if accept is not None:
        request_headers.append(("Accept-Encoding", accept))
    return parse_responses(raw_exchange(proxy.port, request_bytes(method, target, request_headers)))[0]


def upstream_body(proxy: Guardproxy, target: str) -> bytes:
    return fetch(proxy, target, None).body


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_round_trip(proxy: Guardproxy, coding: str, chunked: bool) -> None:
    target = "/payload?size=60000" + ("&chunked=1" if chunked else "")
    response = fetch(proxy, target, coding)
    assert response.status == 200
    assert response.header(b"content-encoding") == coding.encode()
    # Without a known length a body that arrives whole in its first chunk is compressed whole,
    # and then its compressed length is known; the original length never survives.
    assert response.header(b"content-length") in (None, str(len(response.body)).encode())
    assert b"accept-encoding" in response.header(b"vary").lower()  # type: ignore[union-attr]
    assert DECODERS[coding](response.body) == upstream_body(proxy, target)
    assert len(response.body) < 6000


def test_best_coding_by_quality_and_preference(proxy: Guardproxy) -> None:
    assert fetch(proxy, "/payload", "gzip;q=1, br;q=0.5").header(b"content-encoding") == b"gzip"
    assert fetch(proxy, "/payload", "gzip, br").header(b"content-encoding") == b"br"
    assert fetch(proxy, "/payload", "*").header(b"content-encoding") == b"br"


@pytest.mark.parametrize("accept", [None, "identity", "gzip;q=0", "*;q=0", "deflate", "compress"])
def test_identity_when_nothing_acceptable_is_offered(proxy: Guardproxy, accept: str | None) -> None:
    response = fetch(proxy, "/payload?size=5000", accept)
    assert response.header(b"content-encoding") is None
    assert response.header(b"content-length") == b"5000"
    # It could have been compressed for another client: caches must know.
    assert b"accept-encoding" in response.header(b"vary").lower()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("/payload?size=500", "below the minimum size"),
        ("/payload?size=5000&random=1&type=image/png", "not a compressible type"),
        ("/payload?size=5000&type=application/octet-stream", "not a compressible type"),
        ("/payload?size=5000&h=content-encoding:gzip", "already encoded"),
        ("/payload?size=5000&h=cache-control:public,%20no-transform", "no-transform"),
        ("/payload?size=5000&status=206&h=content-range:bytes%200-4999/9000", "a partial response"),
        ("/payload?size=5000&h=content-range:bytes%200-4999/5000", "a range"),
    ],
)
def test_left_alone(proxy: Guardproxy, target: str, why: str) -> None:
    response = fetch(proxy, target, "gzip, br, zstd")
    untouched = fetch(proxy, target, None)
    assert response.header(b"content-encoding") == untouched.header(b"content-encoding"), why
    assert response.header(b"content-length") == untouched.header(b"content-length"), why
    assert response.body == untouched.body, why


def test_head_is_left_alone(proxy: Guardproxy) -> None:
    response = fetch(proxy, "/payload?size=5000", "gzip", method="HEAD")
    assert response.header(b"content-encoding") is None
    assert response.header(b"content-length") == b"5000"
    assert response.body == b""


def test_strong_etag_becomes_weak_and_vary_is_merged(proxy: Guardproxy) -> None:
    target = '/payload?size=5000&h=etag:"abc123"&h=vary:Origin'
    compressed = fetch(proxy, target, "gzip")
    assert compressed.header(b"etag") == b'W/"abc123"'
    assert compressed.header_values(b"vary") == [b"Origin, accept-encoding"]
    plain = fetch(proxy, target, None)
    assert plain.header(b"etag") == b'"abc123"'


def test_weak_etag_stays_as_it_is(proxy: Guardproxy) -> None:
    response = fetch(proxy, '/payload?size=5000&h=etag:W/"v1"', "gzip")
    assert response.header(b"etag") == b'W/"v1"'


def test_existing_accept_encoding_vary_is_not_duplicated(proxy: Guardproxy) -> None:
    response = fetch(proxy, "/payload?size=5000&h=vary:Accept-Encoding", "gzip")
    assert response.header_values(b"vary") == [b"Accept-Encoding"]


@pytest.fixture(scope="module")
def small_min_proxy(upstream: UpstreamProcess, proxy_log_dir: Path) -> Iterator[Guardproxy]:
    """Compression from 8 bytes on: the 15-byte first event of /sse decides for compression."""
    gp = start_guardproxy(upstream.url, log_dir=proxy_log_dir, env={"GUARDPROXY_COMPRESSION__MIN_SIZE": "8"})
    yield gp
    gp.stop()


def sse_arrivals(proxy: Guardproxy, coding: str) -> tuple[httpx.Headers, list[tuple[float, bytes]]]:
    arrivals: list[tuple[float, bytes]] = []
    headers = {"Accept-Encoding": coding}
    with httpx.stream("GET", f"{proxy.url}/sse?n=4&interval=0.4", headers=headers, timeout=10) as response:
        for chunk in response.iter_raw():
            arrivals.append((time.monotonic(), chunk))
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(arrivals)]
    assert len([gap for gap in gaps if gap > 0.25]) >= 3, f"events were held back: {gaps}"
    return response.headers, arrivals


EVENTS = b"".join(b"data: event %d\n\n" % i for i in range(4))


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_server_sent_events_stay_live_through_compression(small_min_proxy: Guardproxy, coding: str) -> None:
    headers, arrivals = sse_arrivals(small_min_proxy, coding)
    assert headers["content-encoding"] == coding
    assert DECODERS[coding](b"".join(chunk for _, chunk in arrivals)) == EVENTS


def test_events_smaller_than_the_minimum_stay_as_they_are_and_live(proxy: Guardproxy) -> None:
    """The first event (15 bytes) decides: each flushed gzip event would have been larger."""
    headers, arrivals = sse_arrivals(proxy, "gzip")
    assert "content-encoding" not in headers
    assert b"".join(chunk for _, chunk in arrivals) == EVENTS


def test_large_bodies_do_not_stall_other_requests(proxy: Guardproxy) -> None:
    import threading  # noqa: PLC0415

    done = threading.Event()

    def big_downloads() -> None:
        with httpx.Client(headers={"Accept-Encoding": "br"}, timeout=30) as client:
            while not done.is_set():
                client.get(f"{proxy.url}/payload?size=3000000")

    thread = threading.Thread(target=big_downloads)
    thread.start()
    try:
        time.sleep(0.3)
        latencies = []
        with httpx.Client(timeout=10) as client:
            for _ in range(30):
                started = time.monotonic()
                assert client.get(f"{proxy.url}/echo").status_code == 200
                latencies.append(time.monotonic() - started)
    finally:
        done.set()
        thread.join()
    latencies.sort()
    assert latencies[len(latencies) // 2] < 0.1, latencies


def test_guardproxy_problems_are_compressible_too_but_small_ones_are_not(start_proxy) -> None:  # type: ignore[no-untyped-def]
    from tests.support.processes import free_port  # noqa: PLC0415

    gp = start_proxy(f"http://127.0.0.1:{free_port()}")
    response = fetch(gp, "/x", "gzip")
    assert response.status == 502
    assert response.header(b"content-encoding") is None  # a few hundred bytes: below min_size


def test_compression_can_be_turned_off(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, env={"GUARDPROXY_COMPRESSION__ENABLED": "false"})
    response = fetch(gp, "/payload?size=5000", "gzip")
    assert response.header(b"content-encoding") is None
    assert response.header(b"vary") is None
