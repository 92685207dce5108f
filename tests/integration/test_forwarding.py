"""Forwarding behaviour over real sockets: guardproxy's CLI in front of a real upstream app."""

from __future__ import annotations

import hashlib
import itertools
import os
import socket
import time

import httpx
import orjson
import pytest

from tests.support.processes import Guardproxy, echoed_headers
from tests.support.raw import parse_responses, raw_exchange, read_until_close, request_bytes


def echo(response: httpx.Response) -> dict:  # type: ignore[type-arg]
    assert response.status_code == 200, response.text
    return orjson.loads(response.content)  # type: ignore[no-any-return]


def test_path_and_query_are_forwarded_byte_for_byte(proxy: Guardproxy) -> None:
    target = "/echo/a%2Fb/%7Euser/caf%C3%A9;p=1?x=%20y&z&q=a+b&e=%2F%3F&empty="
    response = raw_exchange(proxy.port, request_bytes("GET", target, [("Connection", "close")]))
    seen = orjson.loads(parse_responses(response)[0].body)
    assert seen["raw_path"] + "?" + seen["query_string"] == target


def test_large_body_with_content_length_arrives_intact(proxy: Guardproxy) -> None:
    body = os.urandom(700 * 1024)
    seen = echo(httpx.post(f"{proxy.url}/echo", content=body))
    assert seen["body_size"] == len(body)
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert echoed_headers(seen)["content-length"] == [str(len(body))]


def test_chunked_body_arrives_intact_and_chunked(proxy: Guardproxy) -> None:
    pieces = [os.urandom(size) for size in (1, 10, 70_000, 3, 250_000)]

    def generate():  # type: ignore[no-untyped-def]
        yield from pieces

    seen = echo(httpx.post(f"{proxy.url}/echo", content=generate()))
    body = b"".join(pieces)
    assert seen["body_size"] == len(body)
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()
    headers = echoed_headers(seen)
    assert headers["transfer-encoding"] == ["chunked"]
    assert "content-length" not in headers


def test_hop_by_hop_request_headers_are_removed(proxy: Guardproxy) -> None:
    seen = echo(
        httpx.get(
            f"{proxy.url}/echo",
            headers={
                "Connection": "keep-alive, X-Private-Hop",
                "X-Private-Hop": "secret",
                "Keep-Alive": "timeout=5",
                "Proxy-Connection": "keep-alive",
                "TE": "trailers",
                "Upgrade": "websocket",
                "HTTP2-Settings": "AAMAAABkAAQCAAAAAAIAAAAA",
                "X-End-To-End": "kept",
            },
        )
    )
    headers = echoed_headers(seen)
    for name in ("connection", "x-private-hop", "keep-alive", "proxy-connection", "te", "upgrade", "http2-settings"):
        assert name not in headers, name
    assert headers["x-end-to-end"] == ["kept"]


def test_hop_by_hop_response_headers_are_removed(proxy: Guardproxy) -> None:
    response = httpx.get(f"{proxy.url}/hop-by-hop")
    assert response.status_code == 200
    assert "x-upstream-private" not in response.headers
    assert "keep-alive" not in response.headers
    assert response.headers["x-end-to-end"] == "kept"
    assert response.headers.get("connection") is None


def test_forwarding_headers_are_set(proxy: Guardproxy) -> None:
    seen = echo(httpx.get(f"{proxy.url}/echo", headers={"Host": "api.example.com", "Via": "1.0 edge"}))
    headers = echoed_headers(seen)
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-host"] == ["api.example.com"]
    assert headers["host"] == ["api.example.com"]
    assert headers["via"] == ["1.0 edge", "1.1 guardproxy"]


def test_response_carries_via(proxy: Guardproxy) -> None:
    assert httpx.get(f"{proxy.url}/echo").headers["via"] == "1.1 guardproxy"


@pytest.mark.parametrize(
    "spoofed",
    [
        {"X-Forwarded-For": "6.6.6.6"},
        {"X-Forwarded-Proto": "https"},
        {"X-Forwarded-Host": "evil.example"},
        {"Forwarded": "for=6.6.6.6;proto=https"},
    ],
)
def test_client_supplied_forwarding_headers_are_not_believed(proxy: Guardproxy, spoofed: dict[str, str]) -> None:
    seen = echo(httpx.get(f"{proxy.url}/echo", headers=spoofed))
    headers = echoed_headers(seen)
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-host"] == [f"127.0.0.1:{proxy.port}"]
    assert "forwarded" not in headers


def test_repeated_set_cookie_fields_stay_separate(proxy: Guardproxy) -> None:
    response = httpx.get(f"{proxy.url}/cookies")
    assert response.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]


def test_upstream_redirect_is_passed_back_not_followed(proxy: Guardproxy) -> None:
    response = httpx.get(f"{proxy.url}/redirect", follow_redirects=False)
    assert response.status_code == 302
    assert response.headers["location"] == "/echo?redirected=1"


def test_upstream_error_statuses_are_relayed_unchanged(proxy: Guardproxy) -> None:
    response = httpx.get(f"{proxy.url}/status/503")
    assert response.status_code == 503
    assert response.json() == {"status": 503}


def test_head_has_no_body(proxy: Guardproxy) -> None:
    response = raw_exchange(proxy.port, request_bytes("HEAD", "/download?size=5000", [("Connection", "close")]))
    head, _, rest = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-length: 5000" in head.lower()
    assert rest == b""


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_statuses_have_no_body_and_keep_the_connection(proxy: Guardproxy, status: int) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(
            request_bytes("GET", f"/status/{status}") + request_bytes("GET", "/echo", [("Connection", "close")])
        )
        responses = parse_responses(read_until_close(sock))
    assert [r.status for r in responses] == [status, 200]
    assert responses[0].body == b""
    assert responses[0].header(b"content-length") is None
    assert responses[0].header(b"transfer-encoding") is None


def test_keep_alive_serves_many_requests_on_one_connection(proxy: Guardproxy) -> None:
    with httpx.Client(base_url=proxy.url) as client:
        ports = {echo(client.get("/echo"))["client"] for _ in range(20)}
        response = client.get("/echo")
    assert response.status_code == 200
    assert len(ports) == 1


def test_pipelined_requests_are_answered_in_order(proxy: Guardproxy) -> None:
    data = b"".join(request_bytes("GET", f"/echo/{i}") for i in range(5)) + request_bytes(
        "GET", "/echo/last", [("Connection", "close")]
    )
    responses = parse_responses(raw_exchange(proxy.port, data))
    assert [orjson.loads(r.body)["raw_path"] for r in responses] == [f"/echo/{i}" for i in range(5)] + ["/echo/last"]


def test_expect_100_continue(proxy: Guardproxy) -> None:
    body = b"x" * 5000
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(
            request_bytes(
                "POST",
                "/echo",
                [("Content-Length", str(len(body))), ("Expect", "100-continue"), ("Connection", "close")],
            )
        )
        interim = sock.recv(100)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        final = parse_responses(read_until_close(sock))
    seen = orjson.loads(final[0].body)
    assert seen["body_size"] == len(body)
    assert "expect" not in echoed_headers(seen)


def test_server_sent_events_arrive_chunk_by_chunk(proxy: Guardproxy) -> None:
    arrivals = []
    # (identity: this test is about forwarding; compression has its own SSE tests)
    plain = {"Accept-Encoding": "identity"}
    with httpx.stream("GET", f"{proxy.url}/sse?n=4&interval=0.4", headers=plain, timeout=10) as response:
        assert response.headers["content-type"] == "text/event-stream"
        for chunk in response.iter_raw():
            arrivals.append((time.monotonic(), chunk))
    events = [chunk for _, chunk in arrivals if chunk]
    assert events == [b"data: event %d\n\n" % i for i in range(4)]
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(arrivals)]
    # Each event comes when the upstream sends it, ~0.4 s apart, not all at the end.
    assert all(gap > 0.25 for gap in gaps[:3]), gaps


def test_chunked_upstream_response_is_relayed(proxy: Guardproxy) -> None:
    response = httpx.get(f"{proxy.url}/chunked")
    assert response.text == "one,two,three"


def test_request_id_is_generated_echoed_and_forwarded(proxy: Guardproxy) -> None:
    response = httpx.get(f"{proxy.url}/echo")
    request_id = response.headers["x-request-id"]
    headers = echoed_headers(echo(response))
    assert headers["x-request-id"] == [request_id]
    assert len(request_id) == 32


def test_valid_incoming_request_id_is_kept(proxy: Guardproxy) -> None:
    response = httpx.get(f"{proxy.url}/echo", headers={"X-Request-ID": "client-abc_1.2:3"})
    assert response.headers["x-request-id"] == "client-abc_1.2:3"
    assert echoed_headers(echo(response))["x-request-id"] == ["client-abc_1.2:3"]


@pytest.mark.parametrize("hostile", ["a" * 129, "has space", "<script>", "new\\nline", ""])
def test_hostile_incoming_request_id_is_replaced(proxy: Guardproxy, hostile: str) -> None:
    response = httpx.get(f"{proxy.url}/echo", headers={"X-Request-ID": hostile})
    assert response.headers["x-request-id"] != hostile
    assert echoed_headers(echo(response))["x-request-id"] == [response.headers["x-request-id"]]


def test_traceparent_is_continued(proxy: Guardproxy) -> None:
    incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    headers = echoed_headers(
        echo(httpx.get(f"{proxy.url}/echo", headers={"traceparent": incoming, "tracestate": "vendor=1"}))
    )
    version, trace_id, span_id, flags = headers["traceparent"][0].split("-")
    assert (version, trace_id, flags) == ("00", "0af7651916cd43dd8448eb211c80319c", "01")
    assert span_id != "b7ad6b7169203331"
    assert headers["tracestate"] == ["vendor=1"]


def test_invalid_traceparent_starts_a_new_trace(proxy: Guardproxy) -> None:
    headers = echoed_headers(
        echo(httpx.get(f"{proxy.url}/echo", headers={"traceparent": "00-zz-zz-01", "tracestate": "vendor=1"}))
    )
    version, trace_id, span_id, _ = headers["traceparent"][0].split("-")
    assert version == "00"
    assert len(trace_id) == 32
    assert len(span_id) == 16
    assert "tracestate" not in headers


@pytest.mark.slow
def test_300_mib_download_streams_with_bounded_memory(proxy: Guardproxy) -> None:
    import psutil  # noqa: PLC0415 - only this test needs it

    process = psutil.Process(proxy.process.pid)
    before = process.memory_info().rss
    size = 300 * 1024 * 1024
    received = 0
    peak = before
    with httpx.stream("GET", f"{proxy.url}/download?size={size}", timeout=60) as response:
        assert response.headers["content-length"] == str(size)
        for chunk in response.iter_raw(1024 * 1024):
            received += len(chunk)
            if received % (32 * 1024 * 1024) < len(chunk):
                peak = max(peak, process.memory_info().rss)
    peak = max(peak, process.memory_info().rss)
    assert received == size
    assert peak - before < 64 * 1024 * 1024, f"memory grew by {(peak - before) / 2**20:.1f} MiB"


def test_slow_reader_does_not_make_guardproxy_buffer(proxy: Guardproxy) -> None:
    import psutil  # noqa: PLC0415

    process = psutil.Process(proxy.process.pid)
    before = process.memory_info().rss
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(request_bytes("GET", f"/download?size={200 * 1024 * 1024}", [("Connection", "close")]))
        sock.recv(65536)
        time.sleep(1.5)  # the client reads nothing; guardproxy must stop reading the upstream
        grown = process.memory_info().rss - before
    assert grown < 32 * 1024 * 1024, f"memory grew by {grown / 2**20:.1f} MiB while the client did not read"
