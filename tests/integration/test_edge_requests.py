"""The request-side edge rules over real sockets, through the CLI: raw-socket Host abuse, methods,
spoofed identity headers from an untrusted peer against the same headers via a trusted proxy, and
raw upstreams that send trailers, bad statuses and huge heads. Hostile cases first."""

from __future__ import annotations

import socket

import orjson
import pytest

from tests.support.processes import echoed_headers
from tests.support.raw import parse_responses, raw_exchange, raw_upstream, read_request_head

TRUST_ME = ("--trusted-proxy", "127.0.0.1")


def echo_of(port: int, head: bytes) -> dict:  # type: ignore[type-arg]
    (response,) = parse_responses(raw_exchange(port, head))
    assert response.status == 200, response
    return orjson.loads(response.body)  # type: ignore[no-any-return]


# --- Host and request target -----------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"GET /echo HTTP/1.1\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: a.example\r\nhost: a.example\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: \r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: evil.example/x\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: user@evil.example\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: evil.example:1:2\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: [::1\r\n\r\n",
        b"GET ftp://evil.example/echo HTTP/1.1\r\nHost: a.example\r\n\r\n",
        b"GET http://me@evil.example/echo HTTP/1.1\r\nHost: a.example\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: a.example\r\n\r\n",
    ],
)
def test_host_abuse_is_a_400_problem_that_never_reaches_the_upstream(start_proxy, upstream, head: bytes) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url)
    (response,) = parse_responses(raw_exchange(gp.port, head))
    assert response.status == 400
    problem = orjson.loads(response.body)
    assert problem["type"] == "urn:guardproxy:problem:bad-request"
    assert problem["request_id"] == response.header(b"x-request-id").decode()  # type: ignore[union-attr]
    assert response.header(b"connection") == b"close"


def test_absolute_form_authority_replaces_host_for_the_upstream(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url)
    echo = echo_of(
        gp.port, b"GET http://public.example/echo?a=1 HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n"
    )
    assert echo["raw_path"] == "/echo"
    assert echo["query_string"] == "a=1"
    headers = echoed_headers(echo)
    assert headers["host"] == ["public.example"]
    assert headers["x-forwarded-host"] == ["public.example"]


def test_absolute_form_authority_is_what_allowed_hosts_checks(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, "--allowed-host", "api.example.com")
    head = b"GET http://evil.example/echo HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n"
    assert parse_responses(raw_exchange(gp.port, head))[0].status == 421
    head = b"GET http://api.example.com/echo HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
    assert parse_responses(raw_exchange(gp.port, head))[0].status == 200


# --- methods -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", [b"TRACE", b"CONNECT"])
def test_trace_and_connect_get_405_with_allow(start_proxy, upstream, method: bytes) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url)
    target = b"127.0.0.1:1" if method == b"CONNECT" else b"/echo"
    head = method + b" " + target + b" HTTP/1.1\r\nHost: a.example\r\nCookie: secret=1\r\nConnection: close\r\n\r\n"
    (response,) = parse_responses(raw_exchange(gp.port, head))
    assert response.status == 405
    assert response.header(b"allow") == b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
    assert b"secret" not in response.body


def test_route_allowed_methods_and_options_asterisk(start_proxy, upstream, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "guardproxy.yaml"
    config.write_text("routes:\n  - name: echo\n    path: /echo/**\n    allowed_methods: [GET]\n")
    gp = start_proxy(upstream.url, "--config", str(config))
    (refused,) = parse_responses(
        raw_exchange(gp.port, b"DELETE /echo/1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    )
    assert (refused.status, refused.header(b"allow")) == (405, b"GET, HEAD")
    (options,) = parse_responses(raw_exchange(gp.port, b"OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"))
    assert (options.status, options.header(b"allow")) == (200, b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
    assert echo_of(gp.port, b"GET /echo/1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")["method"] == "GET"


# --- identity headers --------------------------------------------------------------------------

SPOOFED = (
    b"X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Port: 443\r\nX-Forwarded-Prefix: /admin\r\n"
    b"X-Real-IP: 6.6.6.6\r\nTrue-Client-IP: 6.6.6.6\r\nX-Client-IP: 6.6.6.6\r\nCF-Connecting-IP: 6.6.6.6\r\n"
    b"X-Original-URL: /admin/delete\r\nX-Rewrite-URL: /admin/delete\r\nX-HTTP-Method-Override: DELETE\r\n"
    b"X-Method-Override: DELETE\r\nForwarded: for=6.6.6.6\r\n"
)
SPOOFED_NAMES = {
    "x-forwarded-prefix",
    "true-client-ip",
    "x-client-ip",
    "cf-connecting-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-method-override",
    "forwarded",
}


def test_spoofed_identity_headers_from_an_untrusted_peer_are_removed(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, "--trusted-proxy", "10.0.0.0/8")
    headers = echoed_headers(
        echo_of(gp.port, b"GET /echo HTTP/1.1\r\nHost: a\r\n" + SPOOFED + b"Connection: close\r\n\r\n")
    )
    assert not SPOOFED_NAMES & set(headers)
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["x-real-ip"] == ["127.0.0.1"]
    assert headers["x-forwarded-port"] == [str(gp.port)]


def test_the_same_headers_via_a_trusted_proxy_are_kept(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, *TRUST_ME)
    headers = echoed_headers(
        echo_of(gp.port, b"GET /echo HTTP/1.1\r\nHost: a\r\n" + SPOOFED + b"Connection: close\r\n\r\n")
    )
    assert SPOOFED_NAMES - {"forwarded"} <= set(headers)
    assert headers["x-forwarded-for"] == ["6.6.6.6, 127.0.0.1"]
    assert headers["x-real-ip"] == ["6.6.6.6"]
    assert headers["x-forwarded-port"] == ["443"]


# --- the upstream's response -------------------------------------------------------------------


def scripted(response: bytes):  # type: ignore[no-untyped-def]
    def handler(conn: socket.socket, _: int) -> None:
        while read_request_head(conn):
            conn.sendall(response)

    return handler


@pytest.mark.parametrize("status", [b"999", b"600", b"099"])
def test_a_status_outside_100_599_is_a_502(start_proxy, status: bytes) -> None:  # type: ignore[no-untyped-def]
    with raw_upstream(scripted(b"HTTP/1.1 " + status + b" Odd\r\nContent-Length: 2\r\n\r\nok")) as raw:
        gp = start_proxy(raw.url)
        (response,) = parse_responses(raw_exchange(gp.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"))
    assert response.status == 502
    assert orjson.loads(response.body)["type"] == "urn:guardproxy:problem:upstream-bad-response"


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(201)) + b"Content-Length: 2\r\n\r\nok",
    ],
    ids=["huge-field", "too-many-fields"],
)
def test_a_huge_upstream_head_is_a_502(start_proxy, head: bytes) -> None:  # type: ignore[no-untyped-def]
    with raw_upstream(scripted(head)) as raw:
        gp = start_proxy(raw.url)
        (response,) = parse_responses(raw_exchange(gp.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"))
    assert response.status == 502


def test_the_head_limits_are_configurable(start_proxy) -> None:  # type: ignore[no-untyped-def]
    head = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\nContent-Length: 2\r\n\r\nok"
    with raw_upstream(scripted(head)) as raw:
        gp = start_proxy(raw.url, env={"GUARDPROXY_UPSTREAM__MAX_RESPONSE_HEAD_BYTES": "131072"})
        (response,) = parse_responses(raw_exchange(gp.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"))
    assert (response.status, response.body) == (200, b"ok")


TRAILERED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
    b"5\r\nhello\r\n0\r\nX-Checksum: 42\r\nSet-Cookie: stolen=1\r\nContent-Type: text/html\r\n\r\n"
)


def test_upstream_trailers_never_reach_the_header_section(start_proxy) -> None:  # type: ignore[no-untyped-def]
    with raw_upstream(scripted(TRAILERED)) as raw:
        gp = start_proxy(raw.url)
        data = raw_exchange(gp.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    (response,) = parse_responses(data)
    assert (response.status, response.body, response.complete) == (200, b"hello", True)
    assert b"x-checksum: 42" not in data.lower()  # the Trailer field announcing it may pass
    assert response.header(b"x-checksum") is None
    assert data.endswith(b"0\r\n\r\n")
    assert b"stolen" not in data
    assert response.header_values(b"content-type") == [b"text/plain"]


def test_upstream_trailers_go_on_as_trailers_to_a_client_that_asks(start_proxy) -> None:  # type: ignore[no-untyped-def]
    with raw_upstream(scripted(TRAILERED)) as raw:
        gp = start_proxy(raw.url)
        data = raw_exchange(gp.port, b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nConnection: close\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"x-checksum: 42" not in head.lower()
    assert body.endswith(b"0\r\nx-checksum: 42\r\n\r\n")
    assert b"stolen" not in data
    (response,) = parse_responses(data)
    assert response.complete
    assert response.body == b"hello"


def test_103_early_hints_are_dropped_and_the_final_response_passes(start_proxy) -> None:  # type: ignore[no-untyped-def]
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    with raw_upstream(scripted(hints + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")) as raw:
        gp = start_proxy(raw.url)
        data = raw_exchange(gp.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b"a.css" not in data
