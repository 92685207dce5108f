"""One error path: every answer guardproxy gives itself, the server's protocol-level refusals
included, carries the request ID (header and body) and the security headers, and gets exactly
one access-log line with the real status and outcome, over real sockets."""

from __future__ import annotations

import socket
import time

import orjson
import pytest

from tests.support.processes import Guardproxy, wait_until
from tests.support.raw import ParsedResponse, parse_responses, raw_exchange, read_until_close

OVERSIZED_HEAD = b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
LONG_URI = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
SMUGGLING = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
BAD_HEADER_NAME = b"GET /echo HTTP/1.1\r\nHo st: x\r\n\r\n"
GZIP_CODING = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
BAD_CHUNK = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"


def access_lines(gp: Guardproxy) -> list[dict]:  # type: ignore[type-arg]
    records = [orjson.loads(line) for line in gp.log_text().splitlines() if line.startswith("{")]
    return [record for record in records if record.get("event") == "request"]


def assert_answered_by_guardproxy(response: ParsedResponse, status: int) -> str:
    assert response.status == status
    assert response.header(b"content-type") == b"application/problem+json"
    request_id = response.header(b"x-request-id")
    assert request_id is not None
    assert len(request_id) == 32
    body = orjson.loads(response.body)
    assert body["status"] == status
    assert body["request_id"] == request_id.decode()
    # The api preset's security headers, as on every other response.
    assert response.header(b"content-security-policy") is not None
    assert response.header(b"x-content-type-options") == b"nosniff"
    assert response.header(b"connection") == b"close"
    return request_id.decode()


def the_line_of(gp: Guardproxy, request_id: str) -> dict:  # type: ignore[type-arg]
    wait_until(lambda: any(line["request_id"] == request_id for line in access_lines(gp)), timeout=5)
    lines = [line for line in access_lines(gp) if line["request_id"] == request_id]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(
    ("raw", "status", "outcome", "path"),
    [
        (OVERSIZED_HEAD, 431, "head_too_large", "/echo"),
        (LONG_URI, 414, "uri_too_long", ""),  # the over-long target itself is never logged
        (SMUGGLING, 400, "malformed", "/echo"),
        (BAD_HEADER_NAME, 400, "malformed", "/echo"),
        (GZIP_CODING, 501, "unsupported_coding", "/echo"),
        (b"GET /x\r\n\r\n", 400, "malformed", "/x"),  # HTTP/0.9
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, 400, "malformed", ""),  # TLS to plain
    ],
)
def test_protocol_refusals_carry_the_request_id_the_security_headers_and_one_log_line(  # type: ignore[no-untyped-def]
    proxy, raw: bytes, status: int, outcome: str, path: str
) -> None:
    (response,) = parse_responses(raw_exchange(proxy.port, raw))
    request_id = assert_answered_by_guardproxy(response, status)
    line = the_line_of(proxy, request_id)
    assert line["status"] == status
    assert line["outcome"] == outcome
    assert line["path"] == path
    assert line["route"] == "default"


def test_a_body_that_stops_arriving_gets_408_with_everything_and_one_log_line(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, env={"GUARDPROXY_SERVER__REQUEST_BODY_TIMEOUT": "0.5"})
    with socket.create_connection(("127.0.0.1", gp.port)) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
        (response,) = parse_responses(read_until_close(sock, timeout=5))
    request_id = assert_answered_by_guardproxy(response, 408)
    line = the_line_of(gp, request_id)
    assert (line["status"], line["outcome"], line["method"], line["path"]) == (408, "body_timeout", "POST", "/echo")
    assert line["request_bytes"] == 5


def test_a_broken_chunk_is_answered_through_the_chain_and_never_reaches_the_upstream(proxy) -> None:  # type: ignore[no-untyped-def]
    (response,) = parse_responses(raw_exchange(proxy.port, BAD_CHUNK))
    request_id = assert_answered_by_guardproxy(response, 400)
    line = the_line_of(proxy, request_id)
    assert (line["status"], line["outcome"], line["path"]) == (400, "malformed", "/echo")
    assert line["upstream_ms"] is None  # the upstream was never asked


def test_a_head_that_never_completes_gets_408_and_one_log_line(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, env={"GUARDPROXY_SERVER__REQUEST_HEAD_TIMEOUT": "0.5"})
    started = time.monotonic()
    (response,) = parse_responses(raw_exchange(gp.port, b"GET /echo HTTP/1.1\r\nHo"))
    assert time.monotonic() - started < 4
    request_id = assert_answered_by_guardproxy(response, 408)
    line = the_line_of(gp, request_id)
    assert (line["status"], line["outcome"]) == (408, "head_timeout")


def test_pipelined_requests_before_a_broken_one_are_answered_first(proxy) -> None:  # type: ignore[no-untyped-def]
    good = b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"
    responses = parse_responses(raw_exchange(proxy.port, good + good + BAD_HEADER_NAME))
    assert [response.status for response in responses] == [200, 200, 400]
    request_id = assert_answered_by_guardproxy(responses[2], 400)
    assert the_line_of(proxy, request_id)["outcome"] == "malformed"


def test_a_client_that_sends_garbage_and_leaves_crashes_nothing(proxy) -> None:  # type: ignore[no-untyped-def]
    for garbage in (b"\x00\xff" * 100, b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200, b"\r\n\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sock.sendall(garbage)
            sock.shutdown(socket.SHUT_RDWR)
    (response,) = parse_responses(
        raw_exchange(proxy.port, b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    )
    assert response.status == 200
