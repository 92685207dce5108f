"""The response side at the edge, over real sockets: upstream redirects and cookies pointed back at
the client's origin, Cache-Control defaults, deprecated and retired routes, and compression that
decides on the first chunk. A scripted raw upstream plays the app that believes it lives
elsewhere; guardproxy runs through its CLI."""

from __future__ import annotations

import gzip
import socket
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.support.processes import Guardproxy
from tests.support.raw import parse_responses, raw_exchange, raw_upstream, read_request_head, request_bytes

INTERNAL = "http://10.0.0.5:8000"
INTERNAL_ENV = {"GUARDPROXY_UPSTREAM__INTERNAL_ORIGINS": f"{INTERNAL},https://app.internal"}


def respond(status: str, *fields: str, body: bytes = b"") -> bytes:
    head = "\r\n".join([f"HTTP/1.1 {status}", *fields, f"Content-Length: {len(body)}"])
    return head.encode("latin-1") + b"\r\n\r\n" + body


@pytest.fixture
def redirecting_upstream() -> Iterator[tuple[str, list[bytes]]]:
    """An app that redirects to its own address, to an internal origin, elsewhere and relatively."""
    seen: list[bytes] = []
    own: list[str] = []

    def handler(conn: socket.socket, _: int) -> None:
        while head := read_request_head(conn):
            seen.append(head)
            path = head.split(b" ", 2)[1].decode()
            answers = {
                "/self": respond("302 Found", f"Location: {own[0]}/login?next=%2Fhome"),
                "/internal": respond(
                    "201 Created",
                    f"Location: {INTERNAL}/items/7",
                    f"Content-Location: {INTERNAL}/items/7.json",
                    f"Refresh: 0; url={INTERNAL}/later",
                ),
                "/userinfo": respond("302 Found", f"Location: {INTERNAL}@evil.example/login"),
                "/foreign": respond("302 Found", "Location: https://evil.example/login"),
                "/relative": respond("302 Found", "Location: /login"),
                "/network-path": respond("302 Found", "Location: //app.internal/x"),
                "/slashes": respond("302 Found", f"Location: {INTERNAL}//evil.example/x"),
                "/cookies": respond(
                    "200 OK",
                    "Set-Cookie: sid=1; Domain=10.0.0.5; Path=/; HttpOnly",
                    "Set-Cookie: pref=2; Domain=.app.internal",
                    "Set-Cookie: other=3; Domain=example.org",
                ),
            }
            conn.sendall(answers.get(path, respond("404 Not Found")))

    with raw_upstream(handler) as upstream:
        own.append(upstream.url)
        yield upstream.url, seen


def get(proxy: Guardproxy, path: str, *headers: tuple[str, str], host: str = "api.example.com") -> httpx.Response:
    return httpx.get(f"{proxy.url}{path}", headers=[("Host", host), *headers], follow_redirects=False)


# --- upstream redirects: hostile cases first ------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/userinfo", f"{INTERNAL}@evil.example/login"),  # names evil.example: never under our name
        ("/foreign", "https://evil.example/login"),
        ("/relative", "/login"),
    ],
)
def test_foreign_userinfo_and_relative_locations_pass_untouched(
    start_proxy: Callable[..., Guardproxy], redirecting_upstream: tuple[str, list[bytes]], path: str, location: str
) -> None:
    proxy = start_proxy(redirecting_upstream[0], env=INTERNAL_ENV)
    assert get(proxy, path).headers["location"] == location


def test_a_path_that_looks_like_another_host_stays_a_path_on_ours(
    start_proxy: Callable[..., Guardproxy], redirecting_upstream: tuple[str, list[bytes]]
) -> None:
    proxy = start_proxy(redirecting_upstream[0], env=INTERNAL_ENV)
    location = get(proxy, "/slashes").headers["location"]
    assert location == "http://api.example.com//evil.example/x"
    assert httpx.URL(location).host == "api.example.com"


def test_guardproxys_own_https_redirect_is_not_rewritten(
    start_proxy: Callable[..., Guardproxy], redirecting_upstream: tuple[str, list[bytes]]
) -> None:
    """Its canonical host is an internal origin's host on purpose: still its own Location."""
    upstream_url, seen = redirecting_upstream
    proxy = start_proxy(
        upstream_url,
        "--trusted-proxy",
        "127.0.0.1",
        env={**INTERNAL_ENV, "GUARDPROXY_HOSTS__CANONICAL": "app.internal"},
    )
    response = get(proxy, "/internal", ("X-Forwarded-Proto", "http"))
    assert response.status_code == 308
    assert response.headers["location"] == "https://app.internal/internal"
    assert seen == []


def test_the_upstreams_own_address_becomes_the_clients_origin_with_only_upstream_set(
    start_proxy: Callable[..., Guardproxy], redirecting_upstream: tuple[str, list[bytes]]
) -> None:
    proxy = start_proxy(redirecting_upstream[0])
    response = get(proxy, "/self", host="api.example.com:8080")
    assert response.status_code == 302
    assert response.headers["location"] == "http://api.example.com:8080/login?next=%2Fhome"
    # An internal origin guardproxy was not told about is not guessed at.
    assert get(proxy, "/internal").headers["location"] == f"{INTERNAL}/items/7"


def test_listed_internal_origins_in_location_content_location_and_refresh(
    start_proxy: Callable[..., Guardproxy], redirecting_upstream: tuple[str, list[bytes]]
) -> None:
    proxy = start_proxy(redirecting_upstream[0], env=INTERNAL_ENV)
    response = get(proxy, "/internal")
    assert response.status_code == 201
    assert response.headers["location"] == "http://api.example.com/items/7"
    assert response.headers["content-location"] == "http://api.example.com/items/7.json"
    assert response.headers["refresh"] == "0; url=http://api.example.com/later"
    assert get(proxy, "/network-path").headers["location"] == "http://api.example.com/x"


def test_behind_a_trusted_proxy_the_scheme_and_host_it_reported_are_used(
    start_proxy: Callable[..., Guardproxy], redirecting_upstream: tuple[str, list[bytes]]
) -> None:
    proxy = start_proxy(redirecting_upstream[0], "--trusted-proxy", "127.0.0.1", env=INTERNAL_ENV)
    response = get(proxy, "/internal", ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "shop.example.com"))
    assert response.headers["location"] == "https://shop.example.com/items/7"
    # The same claims from a peer that is not trusted change nothing: its own Host, plain http.
    untrusted = start_proxy(redirecting_upstream[0], env=INTERNAL_ENV)
    spoofed = get(untrusted, "/internal", ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil.example"))
    assert spoofed.headers["location"] == "http://api.example.com/items/7"


def test_cookie_domains_are_left_alone_by_default_and_rewritten_when_asked(
    start_proxy: Callable[..., Guardproxy], redirecting_upstream: tuple[str, list[bytes]]
) -> None:
    default = start_proxy(redirecting_upstream[0], env=INTERNAL_ENV)
    assert get(default, "/cookies").headers.get_list("set-cookie") == [
        "sid=1; Domain=10.0.0.5; Path=/; HttpOnly",
        "pref=2; Domain=.app.internal",
        "other=3; Domain=example.org",
    ]
    asked = start_proxy(
        redirecting_upstream[0], env={**INTERNAL_ENV, "GUARDPROXY_UPSTREAM__REWRITE_COOKIE_DOMAINS": "true"}
    )
    assert get(asked, "/cookies").headers.get_list("set-cookie") == [
        "sid=1; Domain=api.example.com; Path=/; HttpOnly",
        "pref=2; Domain=api.example.com",
        "other=3; Domain=example.org",
    ]
    # A client that used an IP address gets a host-only cookie.
    by_address = get(asked, "/cookies", host="127.0.0.1").headers.get_list("set-cookie")
    assert by_address[:2] == ["sid=1; Path=/; HttpOnly", "pref=2"]


def test_rewriting_can_be_turned_off(
    start_proxy: Callable[..., Guardproxy], redirecting_upstream: tuple[str, list[bytes]]
) -> None:
    proxy = start_proxy(redirecting_upstream[0], env={"GUARDPROXY_UPSTREAM__REWRITE_REDIRECTS": "false"})
    assert get(proxy, "/self").headers["location"].startswith(redirecting_upstream[0])


def test_bad_internal_origins_stop_the_start(start_proxy: Callable[..., Guardproxy], tmp_path: Path) -> None:
    with pytest.raises(AssertionError) as failed:
        start_proxy("http://127.0.0.1:9", env={"GUARDPROXY_UPSTREAM__INTERNAL_ORIGINS": "http://10.0.0.5/login"})
    assert "upstream.internal_origins" in str(failed.value)


# --- Cache-Control defaults -------------------------------------------------------------------


def test_the_upstreams_cache_control_is_kept_and_none_becomes_no_store(proxy: Guardproxy) -> None:
    kept = httpx.get(f"{proxy.url}/payload?size=10&h=cache-control:public,%20max-age=60")
    assert kept.headers.get_list("cache-control") == ["public, max-age=60"]
    added = httpx.get(f"{proxy.url}/echo")
    assert added.headers.get_list("cache-control") == ["no-store"]
    assert "x-xss-protection" not in added.headers  # deprecated: see guards/security_headers.py


def test_a_304_gets_no_cache_control_of_ours(proxy: Guardproxy) -> None:
    response = httpx.get(f"{proxy.url}/status/304")
    assert response.status_code == 304
    assert "cache-control" not in response.headers


def test_routes_choose_their_own_default(start_proxy: Callable[..., Guardproxy], upstream, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "guardproxy.yaml"
    config.write_text(
        "routes:\n"
        "  - {name: catalog, path: /echo/catalog/**, cache_control: 'public, max-age=300'}\n"
        "  - {name: raw, path: /echo/raw/**, cache_control: ''}\n"
    )
    proxy = start_proxy(upstream.url, "--config", str(config))
    assert httpx.get(f"{proxy.url}/echo/catalog/1").headers["cache-control"] == "public, max-age=300"
    assert "cache-control" not in httpx.get(f"{proxy.url}/echo/raw/1").headers
    assert httpx.get(f"{proxy.url}/echo/other").headers["cache-control"] == "no-store"


# --- deprecated and retired routes --------------------------------------------------------------


@pytest.fixture
def deprecating_proxy(start_proxy: Callable[..., Guardproxy], upstream, tmp_path: Path) -> Guardproxy:  # type: ignore[no-untyped-def]
    config = tmp_path / "guardproxy.yaml"
    config.write_text(
        "routes:\n"
        "  - name: retired\n    path: /echo/v0/**\n    deprecation: 2020-01-01\n    sunset: 2021-01-01\n"
        "    link: https://docs.example.com/v0\n    gone_after_sunset: true\n"
        "  - name: old\n    path: /echo/v1/**\n    deprecation: 2020-01-01\n    sunset: 2021-01-01\n"
        "  - name: soon\n    path: /echo/v2/**\n    deprecation: 2999-01-01T00:00:00Z\n"
        "    sunset: 2999-06-01\n    sunset_link: /docs/sunset\n"
    )
    return start_proxy(upstream.url, "--config", str(config))


def test_past_the_sunset_a_retired_route_is_gone_and_never_forwarded(deprecating_proxy: Guardproxy) -> None:
    response = httpx.get(f"{deprecating_proxy.url}/echo/v0/items")
    assert response.status_code == 410
    problem = orjson.loads(response.content)
    assert problem["type"] == "urn:guardproxy:problem:gone"
    assert problem["request_id"] == response.headers["x-request-id"]
    assert "method" not in problem  # /echo would have answered with the request it saw
    assert response.headers["sunset"] == "Fri, 01 Jan 2021 00:00:00 GMT"
    assert response.headers.get_list("link") == [
        '<https://docs.example.com/v0>; rel="deprecation"',
        '<https://docs.example.com/v0>; rel="sunset"',
    ]


def test_past_the_sunset_without_gone_the_route_still_answers(deprecating_proxy: Guardproxy) -> None:
    response = httpx.get(f"{deprecating_proxy.url}/echo/v1/items")
    assert response.status_code == 200
    assert response.headers["deprecation"] == "@1577836800"
    assert response.headers["sunset"] == "Fri, 01 Jan 2021 00:00:00 GMT"
    assert "link" not in response.headers


def test_a_future_deprecation_is_announced(deprecating_proxy: Guardproxy) -> None:
    response = httpx.get(f"{deprecating_proxy.url}/echo/v2/items")
    assert response.status_code == 200
    assert response.headers["deprecation"] == "@32472144000"
    assert response.headers["sunset"] == "Sat, 01 Jun 2999 00:00:00 GMT"
    assert response.headers["link"] == '</docs/sunset>; rel="sunset"'
    plain = httpx.get(f"{deprecating_proxy.url}/echo/current")
    assert "deprecation" not in plain.headers
    assert "sunset" not in plain.headers


def test_calls_to_deprecated_routes_are_counted_by_route(deprecating_proxy: Guardproxy) -> None:
    for path in ("/echo/v0/a", "/echo/v0/b", "/echo/v1/a", "/echo/current"):
        httpx.get(f"{deprecating_proxy.url}{path}")
    metrics = httpx.get(f"{deprecating_proxy.admin_url}/metrics").text
    assert 'guardproxy_deprecated_requests_total{route="retired"} 2.0' in metrics
    assert 'guardproxy_deprecated_requests_total{route="old"} 1.0' in metrics
    assert 'guardproxy_deprecated_requests_total{route="soon"} 0.0' in metrics
    assert 'guardproxy_deprecated_requests_total{route="default"}' not in metrics
    assert 'outcome="gone"' in metrics


def test_bad_deprecation_dates_stop_the_start(start_proxy: Callable[..., Guardproxy], tmp_path: Path) -> None:
    config = tmp_path / "guardproxy.yaml"
    config.write_text("routes:\n  - {name: v1, path: /v1/**, deprecation: '2026-06-01T10:00:00'}\n")
    with pytest.raises(AssertionError) as failed:
        start_proxy("http://127.0.0.1:9", "--config", str(config))
    assert "routes.0.deprecation: give the time zone" in str(failed.value)


# --- compression decided on the first chunk -------------------------------------------------------


def chunked(*chunks: bytes, content_type: bytes = b"application/json") -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"


def fetch_raw(proxy: Guardproxy, path: str = "/", accept: str = "gzip") -> bytes:
    return raw_exchange(proxy.port, request_bytes("GET", path, [("Accept-Encoding", accept), ("Connection", "close")]))


def test_a_40_byte_body_of_unknown_length_is_not_made_55_bytes_of_gzip(start_proxy: Callable[..., Guardproxy]) -> None:
    body = b'{"id":1,"name":"small","ok":true,"n":1}\n'
    assert len(body) == 40

    def handler(conn: socket.socket, _: int) -> None:
        while read_request_head(conn):
            conn.sendall(chunked(body))

    with raw_upstream(handler) as upstream:
        proxy = start_proxy(upstream.url)
        wire = fetch_raw(proxy)
    [response] = parse_responses(wire)
    assert response.header(b"content-encoding") is None
    assert response.header(b"content-length") == b"40"
    assert response.header(b"transfer-encoding") is None
    assert response.body == body
    assert len(wire.split(b"\r\n\r\n", 1)[1]) == 40
    assert b"accept-encoding" in (response.header(b"vary") or b"").lower()


def test_a_large_body_of_unknown_length_is_still_compressed(start_proxy: Callable[..., Guardproxy]) -> None:
    body = b'{"item":"compressible value"},' * 300

    def handler(conn: socket.socket, _: int) -> None:
        while read_request_head(conn):
            conn.sendall(chunked(body))

    with raw_upstream(handler) as upstream:
        proxy = start_proxy(upstream.url)
        [response] = parse_responses(fetch_raw(proxy))
    assert response.header(b"content-encoding") == b"gzip"
    assert gzip.decompress(response.body) == body


def stream_first_then(first: bytes, second: bytes) -> Callable[[socket.socket, int], None]:
    """An ndjson stream: `first`, then 1.5 s of silence, then `second` and the end."""

    def handler(conn: socket.socket, _: int) -> None:
        if read_request_head(conn):
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"%x\r\n%s\r\n" % (len(first), first)
            )
            time.sleep(1.5)
            conn.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(second), second))

    return handler


def first_arrival(proxy: Guardproxy) -> tuple[httpx.Headers, bytes, float, bytes]:
    started = time.monotonic()
    with httpx.stream("GET", proxy.url, headers={"Accept-Encoding": "gzip"}, timeout=10) as response:
        chunks = response.iter_raw()
        first = next(chunks)
        elapsed = time.monotonic() - started
        rest = b"".join(chunks)
    return response.headers, first, elapsed, rest


def test_a_small_first_chunk_of_a_stream_starts_at_once_uncompressed(start_proxy: Callable[..., Guardproxy]) -> None:
    """8 bytes, then silence: the first chunk decides (identity) and is not held for the second."""
    with raw_upstream(stream_first_then(b'{"n":1}\n', b'{"n":2}\n')) as upstream:
        headers, first, elapsed, rest = first_arrival(start_proxy(upstream.url))
    assert "content-encoding" not in headers
    assert first == b'{"n":1}\n'
    assert elapsed < 1.0, f"the first chunk waited {elapsed:.2f} s"
    assert rest == b'{"n":2}\n'


def test_a_large_first_chunk_of_a_stream_starts_at_once_compressed(start_proxy: Callable[..., Guardproxy]) -> None:
    line = b'{"item":"compressible value"}\n' * 100
    with raw_upstream(stream_first_then(line, b'{"n":2}\n')) as upstream:
        headers, first, elapsed, rest = first_arrival(start_proxy(upstream.url))
    assert headers["content-encoding"] == "gzip"
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    assert decoder.decompress(first) == line  # flushed: whole before the second chunk exists
    assert elapsed < 1.0, f"the first chunk waited {elapsed:.2f} s"
    assert decoder.decompress(rest) == b'{"n":2}\n'


def test_a_304_for_a_compressed_representation_keeps_the_clients_weak_validator(proxy: Guardproxy) -> None:
    compressed = httpx.get(f"{proxy.url}/payload?size=5000&h=etag:%22v9%22", headers={"Accept-Encoding": "gzip"})
    assert compressed.headers["etag"] == 'W/"v9"'
    revalidated = httpx.get(f"{proxy.url}/status/304", headers={"Accept-Encoding": "gzip", "If-None-Match": 'W/"v1"'})
    assert revalidated.status_code == 304
    assert revalidated.headers["etag"] == 'W/"v1"'
    strong = httpx.get(f"{proxy.url}/status/304", headers={"If-None-Match": '"v1"'})
    assert strong.headers["etag"] == '"v1"'
