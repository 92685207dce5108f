"""Limits and slow clients (issue: limits, slow clients, timeouts, load shedding, drain)."""

from __future__ import annotations

import os
import socket
import threading
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
    request_bytes,
)


def problem_of(response: httpx.Response, status: int, slug: str) -> dict:  # type: ignore[type-arg]
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = orjson.loads(response.content)
    assert problem["type"] == f"urn:guardproxy:problem:{slug}"
    return problem  # type: ignore[no-any-return]


@pytest.fixture
def body_recorder() -> Iterator[RawUpstream]:
    """Upstream that records each request's head and everything after it until the close."""

    def handler(conn: socket.socket, _: int) -> None:
        head = read_request_head(conn)
        if not head:
            return
        data = head
        conn.settimeout(5)
        try:
            while chunk := conn.recv(65536):
                data += chunk
                if b"content-length: 10\r\n" in head and data.endswith(b"0123456789"):
                    break
                if data.endswith(b"\r\n0\r\n\r\n"):
                    break
        except OSError:
            pass
        upstream.received.append(data)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    with raw_upstream(handler) as upstream:
        yield upstream


# --- body size ---------------------------------------------------------------------------------


def test_declared_body_over_the_limit_is_refused_before_reading(start_proxy, body_recorder) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(body_recorder.url, env={"GUARDPROXY_BODY_LIMIT__MAX_BYTES": "1000"})
    with socket.create_connection(("127.0.0.1", gp.port), timeout=5) as sock:
        sock.sendall(request_bytes("POST", "/upload", [("Content-Length", "1001"), ("Expect", "100-continue")]))
        sock.settimeout(5)
        data = sock.recv(65536)
    response = parse_responses(data)[0]
    assert response.status == 413  # and no "100 Continue" before it
    assert data.startswith(b"HTTP/1.1 413")
    assert orjson.loads(response.body)["type"] == "urn:guardproxy:problem:content-too-large"
    assert body_recorder.received == []


def test_body_at_the_limit_passes(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, env={"GUARDPROXY_BODY_LIMIT__MAX_BYTES": "1000"})
    assert httpx.post(f"{gp.url}/echo", content=b"x" * 1000).json()["body_size"] == 1000

    def chunks():  # type: ignore[no-untyped-def]
        yield b"x" * 600
        yield b"x" * 400

    assert httpx.post(f"{gp.url}/echo", content=chunks()).json()["body_size"] == 1000


def test_chunked_body_is_cut_the_moment_it_passes_the_limit(start_proxy, body_recorder) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(body_recorder.url, env={"GUARDPROXY_BODY_LIMIT__MAX_BYTES": "100000"})
    sent_after_refusal = []

    with socket.create_connection(("127.0.0.1", gp.port), timeout=5) as sock:
        sock.sendall(request_bytes("POST", "/upload", [("Transfer-Encoding", "chunked")]))
        response = b""
        sock.settimeout(0.2)
        for _ in range(50):
            try:
                sock.sendall(b"4e20\r\n" + os.urandom(20000) + b"\r\n")  # 20000-byte chunks
            except OSError:
                break
            try:
                response += sock.recv(65536)
            except TimeoutError:
                continue
            if response:
                sent_after_refusal.append(1)
                break
        response += read_until_close(sock)
    parsed = parse_responses(response)
    assert parsed[0].status == 413
    assert parsed[0].header(b"connection") == b"close"
    time.sleep(0.5)
    for request in body_recorder.received:
        assert not request.endswith(b"\r\n0\r\n\r\n"), "the upstream received a complete over-limit body"


def test_route_can_raise_the_body_limit(start_proxy, upstream, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "guardproxy.yaml"
    config.write_text(
        "body_limit: {max_bytes: 1000}\n"
        "routes:\n  - name: uploads\n    path: /echo/uploads/**\n    body_limit: {max_bytes: 5000000}\n"
    )
    gp = start_proxy(upstream.url, "--config", str(config))
    body = os.urandom(3_000_000)
    assert httpx.post(f"{gp.url}/echo/uploads/big", content=body).json()["body_size"] == len(body)
    problem_of(httpx.post(f"{gp.url}/echo/other", content=b"x" * 1001), 413, "content-too-large")


# --- request head and URI ------------------------------------------------------------------------


def test_uri_over_the_limit_is_414(proxy: Guardproxy) -> None:
    response = parse_responses(raw_exchange(proxy.port, request_bytes("GET", "/echo?q=" + "a" * 9000)))[0]
    assert response.status == 414
    assert response.header(b"connection") == b"close"


def test_uri_just_under_the_limit_passes(proxy: Guardproxy) -> None:
    target = "/echo?q=" + "a" * 8000
    assert httpx.get(f"{proxy.url}{target}").json()["query_string"] == target.split("?", 1)[1]


def test_header_fields_over_the_size_limit_are_431(proxy: Guardproxy) -> None:
    headers = [(f"X-Filler-{i}", "v" * 1000) for i in range(20)]
    response = parse_responses(raw_exchange(proxy.port, request_bytes("GET", "/echo", headers)))[0]
    assert response.status == 431
    assert orjson.loads(response.body)["type"] == "urn:guardproxy:problem:headers-too-large"


def test_too_many_header_fields_are_431(proxy: Guardproxy) -> None:
    headers = [(f"X-{i}", "1") for i in range(101)]
    response = parse_responses(raw_exchange(proxy.port, request_bytes("GET", "/echo", headers)))[0]
    assert response.status == 431


def test_one_endless_header_line_is_cut_at_the_limit(proxy: Guardproxy) -> None:
    """A single header value streamed without end: llhttp would buffer it forever."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\nX-Endless: ")
        response = b""
        try:
            for _ in range(200):
                sock.sendall(b"v" * 4096)
        except OSError:
            pass
        response += read_until_close(sock)
    assert parse_responses(response)[0].status == 431


def test_a_normal_large_head_passes(proxy: Guardproxy) -> None:
    headers = {f"X-Filler-{i}": "v" * 100 for i in range(90)}
    assert httpx.get(f"{proxy.url}/echo", headers=headers).status_code == 200


# --- slow clients ------------------------------------------------------------------------------


def test_request_body_that_stops_arriving_gets_408(start_proxy, body_recorder) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(body_recorder.url, env={"GUARDPROXY_SERVER__REQUEST_BODY_TIMEOUT": "0.5"})
    with socket.create_connection(("127.0.0.1", gp.port), timeout=5) as sock:
        sock.sendall(request_bytes("POST", "/upload", [("Content-Length", "10")], b"01234"))
        started = time.monotonic()
        response = read_until_close(sock)
        elapsed = time.monotonic() - started
    parsed = parse_responses(response)
    assert parsed[0].status == 408
    assert 0.4 < elapsed < 3
    time.sleep(0.3)
    assert all(not r.endswith(b"0123456789") for r in body_recorder.received)


def test_slowly_flowing_body_is_not_cut(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, env={"GUARDPROXY_SERVER__REQUEST_BODY_TIMEOUT": "0.5"})

    def trickle():  # type: ignore[no-untyped-def]
        for _ in range(6):
            time.sleep(0.3)  # each gap is under the timeout; the whole body takes longer
            yield b"x" * 10

    assert httpx.post(f"{gp.url}/echo", content=trickle(), timeout=10).json()["body_size"] == 60


def test_half_open_connections_do_not_slow_other_clients(proxy: Guardproxy) -> None:
    idle = []
    try:
        for index in range(300):
            sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
            if index % 2:
                sock.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\n")  # a head that never ends
            idle.append(sock)
        started = time.monotonic()
        with httpx.Client(base_url=proxy.url) as client:
            for _ in range(50):
                assert client.get("/echo").status_code == 200
        assert time.monotonic() - started < 5
    finally:
        for sock in idle:
            sock.close()


# --- upstream total timeout ---------------------------------------------------------------------


def test_route_total_timeout_gives_504_and_does_not_touch_other_routes(start_proxy, upstream, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "guardproxy.yaml"
    config.write_text("routes:\n  - name: quick\n    path: /slow\n    upstream: {total_timeout: 0.5}\n")
    gp = start_proxy(upstream.url, "--config", str(config))
    problem_of(httpx.get(f"{gp.url}/slow?delay=2", timeout=10), 504, "upstream-timeout")
    # Server-sent events on another route run longer than that, untouched.
    events = httpx.get(f"{gp.url}/sse?n=4&interval=0.3", timeout=10).text
    assert events.count("data: event") == 4


def test_total_timeout_cuts_a_response_that_has_started(start_proxy, upstream, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "guardproxy.yaml"
    config.write_text("routes:\n  - name: events\n    path: /sse\n    upstream: {total_timeout: 0.5}\n")
    gp = start_proxy(upstream.url, "--config", str(config))
    data = raw_exchange(gp.port, request_bytes("GET", "/sse?n=10&interval=0.2"))
    response = parse_responses(data)[0]
    assert response.status == 200
    assert not response.complete


# --- load shedding ------------------------------------------------------------------------------


def test_requests_beyond_max_in_flight_get_503_at_once(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, env={"GUARDPROXY_CONCURRENCY__MAX_IN_FLIGHT": "2"})
    slow = [
        threading.Thread(target=httpx.get, args=(f"{gp.url}/slow?delay=1.5",), kwargs={"timeout": 10}) for _ in range(2)
    ]
    for thread in slow:
        thread.start()
    time.sleep(0.5)
    started = time.monotonic()
    response = httpx.get(f"{gp.url}/echo")
    assert time.monotonic() - started < 0.5
    problem_of(response, 503, "overloaded")
    assert response.headers["retry-after"] == "1"
    for thread in slow:
        thread.join()
    assert httpx.get(f"{gp.url}/echo").status_code == 200  # capacity is released


# --- paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/a/../b",
        "/a/%2e%2e/b",
        "/a/%2E%2E/b",
        "/..%2fetc/passwd",
        "/a/.%2e/b",
        "/a/%2e/b",
        "/a/..",
        "/a%5c..%5cb",
        "/a\\..\\b",
        "/a/%252e%252e/b",
        "/a%00.json",
    ],
)
def test_traversal_paths_are_refused(proxy: Guardproxy, path: str) -> None:
    response = parse_responses(raw_exchange(proxy.port, request_bytes("GET", path, [("Connection", "close")])))[0]
    assert response.status == 400, path
    assert orjson.loads(response.body)["type"] == "urn:guardproxy:problem:bad-path"


@pytest.mark.parametrize(
    "path", ["/echo/a.b", "/echo/.well-known/x", "/echo/a..b", "/echo/...", "/echo/%41%42", "/echo/v1.2/x"]
)
def test_ordinary_dotted_and_encoded_paths_pass(proxy: Guardproxy, path: str) -> None:
    response = parse_responses(raw_exchange(proxy.port, request_bytes("GET", path, [("Connection", "close")])))[0]
    assert response.status == 200, path
    assert orjson.loads(response.body)["raw_path"] == path


def test_traversal_check_can_be_turned_off(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, env={"GUARDPROXY_PATHS__REFUSE_TRAVERSAL": "false"})
    data = raw_exchange(gp.port, request_bytes("GET", "/echo/%2e%2e/x", [("Connection", "close")]))
    assert orjson.loads(parse_responses(data)[0].body)["raw_path"] == "/echo/%2e%2e/x"
