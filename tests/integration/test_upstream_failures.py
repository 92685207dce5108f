"""What clients see when the upstream misbehaves: problems for failures before the response,
cut connections for failures during it, and transparent retries only where they are safe."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import orjson
import pytest

from tests.support.processes import free_port, start_upstream_app, wait_until
from tests.support.raw import parse_responses, raw_exchange, raw_upstream, read_request_head, request_bytes

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict:  # type: ignore[type-arg]
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    problem = orjson.loads(response.content)
    assert problem["status"] == status
    assert problem["type"] == f"urn:guardproxy:problem:{slug}"
    assert problem["request_id"] == response.headers["x-request-id"]
    return problem  # type: ignore[no-any-return]


def test_refused_connection_is_a_502_problem_without_internals(start_proxy) -> None:  # type: ignore[no-untyped-def]
    dead_port = free_port()
    gp = start_proxy(f"http://127.0.0.1:{dead_port}")
    response = httpx.get(f"{gp.url}/anything?token=secret")
    problem = assert_problem(response, 502, "upstream-unavailable")
    text = response.text
    assert str(dead_port) not in text
    assert "127.0.0.1" not in text
    assert "Traceback" not in text
    assert "Error" not in problem["detail"]
    assert problem["instance"] == "/anything"
    assert "secret" not in text


def test_unresolvable_upstream_host_is_a_502(start_proxy) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy("http://upstream.invalid:8080")
    assert_problem(httpx.get(gp.url), 502, "upstream-unavailable")


def test_upstream_that_never_answers_is_a_504(start_proxy) -> None:  # type: ignore[no-untyped-def]
    def handler(conn: socket.socket, _: int) -> None:
        read_request_head(conn)
        time.sleep(5)

    with raw_upstream(handler) as upstream:
        gp = start_proxy(upstream.url, env={"GUARDPROXY_UPSTREAM__READ_TIMEOUT": "0.5"})
        started = time.monotonic()
        response = httpx.get(gp.url, timeout=10)
        elapsed = time.monotonic() - started
    assert_problem(response, 504, "upstream-timeout")
    assert 0.4 < elapsed < 2.0


def test_upstream_that_accepts_but_never_reads_is_a_504(start_proxy) -> None:  # type: ignore[no-untyped-def]
    def handler(conn: socket.socket, _: int) -> None:
        time.sleep(5)

    with raw_upstream(handler) as upstream:
        gp = start_proxy(upstream.url, env={"GUARDPROXY_UPSTREAM__READ_TIMEOUT": "0.5"})
        response = httpx.post(gp.url, content=b"x" * (900 * 1024), timeout=10)
    assert_problem(response, 504, "upstream-timeout")


def test_per_route_timeout_overrides_the_default(start_proxy, tmp_path) -> None:  # type: ignore[no-untyped-def]
    def handler(conn: socket.socket, _: int) -> None:
        while read_request_head(conn):
            time.sleep(1.0)
            conn.sendall(OK)

    config = tmp_path / "guardproxy.yaml"
    config.write_text("routes:\n  - name: impatient\n    path: /fast/**\n    upstream: {read_timeout: 0.3}\n")
    with raw_upstream(handler) as upstream:
        gp = start_proxy(upstream.url, "--config", str(config))
        assert_problem(httpx.get(f"{gp.url}/fast/x", timeout=10), 504, "upstream-timeout")
        assert httpx.get(f"{gp.url}/slow-is-fine", timeout=10).text == "ok"


@pytest.mark.parametrize(
    "answer",
    [
        b"THIS IS NOT HTTP\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nxx",
    ],
    ids=["garbage", "unasked-protocol-switch"],
)
def test_an_upstream_answer_that_is_not_a_response_is_a_502(start_proxy, answer: bytes) -> None:  # type: ignore[no-untyped-def]
    def handler(conn: socket.socket, _: int) -> None:
        read_request_head(conn)
        conn.sendall(answer)

    with raw_upstream(handler) as upstream:
        gp = start_proxy(upstream.url)
        assert_problem(httpx.get(gp.url), 502, "upstream-bad-response")


def test_upstream_closing_before_answering_is_a_502_for_post(start_proxy) -> None:  # type: ignore[no-untyped-def]
    def handler(conn: socket.socket, _: int) -> None:
        if head := read_request_head(conn):  # (readiness probes connect without a request)
            upstream.received.append(head)

    with raw_upstream(handler) as upstream:
        gp = start_proxy(upstream.url)
        assert_problem(httpx.post(gp.url, content=b"payload"), 502, "upstream-unavailable")
        assert len(upstream.received) == 1, "a POST must never be sent twice"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_upstream_dying_mid_body_cuts_the_client_connection(start_proxy, framing: str) -> None:  # type: ignore[no-untyped-def]
    def handler(conn: socket.socket, _: int) -> None:
        read_request_head(conn)
        if framing == "content-length":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n" + b"x" * 1000 + b"\r\n")
        time.sleep(0.2)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    with raw_upstream(handler) as upstream:
        gp = start_proxy(upstream.url)
        data = raw_exchange(gp.port, request_bytes("GET", "/big"))
        response = parse_responses(data)[0]
        assert response.status == 200
        assert not response.complete, "a truncated body must not look complete to the client"
        with pytest.raises(httpx.HTTPError):
            httpx.get(gp.url)


def test_interim_responses_from_upstream_are_skipped(start_proxy) -> None:  # type: ignore[no-untyped-def]
    def handler(conn: socket.socket, _: int) -> None:
        read_request_head(conn)
        conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n" + OK)

    with raw_upstream(handler) as upstream:
        gp = start_proxy(upstream.url)
        response = httpx.get(gp.url)
    assert response.status_code == 200
    assert response.text == "ok"
    assert "link" not in response.headers


def test_stale_pooled_connection_is_retried_for_get_only(start_proxy) -> None:  # type: ignore[no-untyped-def]
    """The upstream closes a kept-alive connection just as the next request arrives (the
    keep-alive race). A GET is retried on a fresh connection; a POST with a body is not."""
    seen: list[tuple[int, bytes]] = []

    def handler(conn: socket.socket, index: int) -> None:
        head = read_request_head(conn)
        seen.append((index, head.split(b" ", 2)[0]))
        conn.sendall(OK)
        head = read_request_head(conn)  # the second request on this connection: drop it
        if head:
            seen.append((index, head.split(b" ", 2)[0] + b" dropped"))

    with raw_upstream(handler) as upstream:
        gp = start_proxy(upstream.url)
        with httpx.Client(base_url=gp.url) as client:
            assert client.get("/one").text == "ok"
            assert client.get("/two").text == "ok"  # dropped on the stale connection, retried
            assert client.get("/three").text == "ok"
            response = client.post("/four", content=b"body")
        assert_problem(response, 502, "upstream-unavailable")
    methods = [method for _, method in seen]
    assert methods.count(b"POST") + methods.count(b"POST dropped") == 1


def test_readiness_follows_the_upstream(start_proxy, proxy_log_dir) -> None:  # type: ignore[no-untyped-def]
    app = start_upstream_app()
    try:
        gp = start_proxy(app.url, env={"GUARDPROXY_UPSTREAM__HEALTH_CHECK__INTERVAL": "0.3"}, wait_ready=True)
        ready = httpx.get(f"{gp.admin_url}/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"]["upstream"]["ok"] is True
        app.stop()
        started = time.monotonic()
        wait_until(lambda: httpx.get(f"{gp.admin_url}/readyz").status_code == 503, timeout=5)
        assert time.monotonic() - started < 3
        report = httpx.get(f"{gp.admin_url}/readyz").json()
        assert report["status"] == "not_ready"
        assert report["checks"]["upstream"]["ok"] is False
        assert_problem(httpx.get(gp.url), 502, "upstream-unavailable")
        assert httpx.get(f"{gp.admin_url}/healthz").status_code == 200  # liveness is not readiness
        app = start_upstream_app(app.port)
        wait_until(lambda: httpx.get(f"{gp.admin_url}/readyz").status_code == 200, timeout=5)
        assert httpx.get(f"{gp.url}/echo").status_code == 200
    finally:
        app.stop()


def test_health_check_path_probe_reports_upstream_5xx(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(
        upstream.url,
        env={
            "GUARDPROXY_UPSTREAM__HEALTH_CHECK__PATH": "/status/500",
            "GUARDPROXY_UPSTREAM__HEALTH_CHECK__INTERVAL": "0.3",
        },
    )
    wait_until(lambda: httpx.get(f"{gp.admin_url}/readyz").status_code == 503, timeout=5)
    assert "500" in httpx.get(f"{gp.admin_url}/readyz").json()["checks"]["upstream"]["detail"]


def test_client_disconnect_mid_download_releases_the_upstream(start_proxy) -> None:  # type: ignore[no-untyped-def]
    closed = threading.Event()

    def handler(conn: socket.socket, _: int) -> None:
        read_request_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
        try:
            for _ in range(100000):
                conn.sendall(b"x" * 65536)
        except OSError:
            closed.set()

    with raw_upstream(handler) as upstream:
        gp = start_proxy(upstream.url)
        with socket.create_connection(("127.0.0.1", gp.port), timeout=5) as sock:
            sock.sendall(request_bytes("GET", "/huge"))
            sock.recv(65536)
        assert closed.wait(5), "guardproxy kept reading the upstream after the client left"
        assert httpx.get(f"{gp.admin_url}/healthz").status_code == 200


def test_connection_limit_sheds_with_503_and_retry_after(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(
        upstream.url,
        env={"GUARDPROXY_UPSTREAM__MAX_CONNECTIONS": "1", "GUARDPROXY_UPSTREAM__CONNECT_TIMEOUT": "0.3"},
    )
    results: dict[str, httpx.Response] = {}
    slow = threading.Thread(
        target=lambda: results.setdefault("slow", httpx.get(f"{gp.url}/slow?delay=1.5", timeout=10))
    )
    slow.start()
    time.sleep(0.4)
    response = httpx.get(f"{gp.url}/echo", timeout=10)
    slow.join()
    problem = assert_problem(response, 503, "upstream-busy")
    assert response.headers["retry-after"] == "1"
    assert "connection limit" in problem["detail"]
    assert results["slow"].status_code == 200
    assert httpx.get(f"{gp.url}/echo").status_code == 200  # the slot is free again
