"""WebSocket tunnels over real sockets: the `websockets` client through guardproxy (started by its
CLI) to uvicorn's `websockets` backend, and raw sockets for the handshakes no client library
would send. The limits, drain and memory tests are in test_websocket_limits.py."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import websockets
from websockets.typing import Subprotocol

from tests.support.processes import SUPPORT_DIR, Guardproxy, UpstreamProcess, free_port, port_open, wait_until
from tests.support.raw import (
    RawUpstream,
    parse_responses,
    raw_exchange,
    raw_upstream,
    read_request_head,
    read_until_close,
)
from tests.support.tls import write_certificate
from tests.support.websocket import (
    SAMPLE_ACCEPT,
    SAMPLE_KEY,
    handshake,
    masked_frame,
    open_raw,
)


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "guardproxy.yaml"
    path.write_text(text)
    return str(path)


def log_events(gp: Guardproxy, event: str) -> list[dict[str, object]]:
    lines = [line for line in gp.log_text().splitlines() if line.startswith("{")]
    return [record for record in map(json.loads, lines) if record.get("event") == event]


@pytest.fixture
def ws_proxy(start_proxy, ws_upstream: UpstreamProcess) -> Guardproxy:  # type: ignore[no-untyped-def]
    gp: Guardproxy = start_proxy(ws_upstream.url)
    return gp


def ws_url(gp: Guardproxy, path: str) -> str:
    return f"ws://127.0.0.1:{gp.port}{path}"


# Happy paths: what an API's WebSocket clients do, through the tunnel.


async def test_text_and_binary_messages_pass_both_ways(ws_proxy: Guardproxy) -> None:
    async with websockets.connect(ws_url(ws_proxy, "/echo")) as ws:
        await ws.send("hello, tunnel")
        assert await ws.recv() == "hello, tunnel"
        await ws.send(b"\x00\x01\xfe\xff")
        assert await ws.recv() == b"\x00\x01\xfe\xff"


async def test_a_1_mib_message_arrives_whole(ws_proxy: Guardproxy) -> None:
    payload = bytes(range(256)) * 4096
    async with websockets.connect(ws_url(ws_proxy, "/echo"), max_size=2**21) as ws:
        await ws.send(payload)
        assert await ws.recv() == payload


async def test_ping_is_answered_by_the_upstream_with_pong(ws_proxy: Guardproxy) -> None:
    async with websockets.connect(ws_url(ws_proxy, "/echo")) as ws:
        latency = await asyncio.wait_for(await ws.ping(b"are-you-there"), 5)
        assert latency >= 0


async def test_close_codes_pass_through_both_ways(ws_proxy: Guardproxy) -> None:
    async with websockets.connect(ws_url(ws_proxy, "/close?code=4001")) as ws:
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 4001
        assert ws.close_reason == "bye"
    ws = await websockets.connect(ws_url(ws_proxy, "/echo"))
    await ws.close(code=4002, reason="client says bye")
    # The upstream echoes the close frame it received (RFC 6455 §5.5.1).
    received = ws.protocol.close_rcvd
    assert received is not None
    assert received.code == 4002


async def test_the_upstream_sees_the_handshake_with_guardproxy_fields(ws_proxy: Guardproxy) -> None:
    async with websockets.connect(
        ws_url(ws_proxy, "/headers"), subprotocols=[Subprotocol("chat")], additional_headers={"X-Real-IP": "6.6.6.6"}
    ) as ws:
        fields: dict[str, list[str]] = {}
        for name, value in orjson.loads(await ws.recv()):
            fields.setdefault(name, []).append(value)
        assert ws.subprotocol == "chat"
    assert fields["upgrade"] == ["websocket"]
    assert fields["connection"] == ["upgrade"]
    assert fields["sec-websocket-protocol"] == ["chat"]
    assert fields["x-forwarded-for"] == ["127.0.0.1"]
    assert fields["x-real-ip"] == ["127.0.0.1"]  # the client's claim replaced
    assert len(fields["x-request-id"][0]) == 32
    assert fields["via"] == ["1.1 guardproxy"]


async def test_the_101_carries_the_request_id_and_no_connection_close(ws_proxy: Guardproxy) -> None:
    async with websockets.connect(ws_url(ws_proxy, "/echo")) as ws:
        assert ws.response is not None
        headers = ws.response.headers
        assert len(headers["x-request-id"]) == 32
        assert headers["connection"].lower() == "upgrade"
        assert "close" not in headers.get_all("connection")


async def test_100_concurrent_tunnels(ws_proxy: Guardproxy) -> None:
    async def one(index: int) -> str:
        async with websockets.connect(ws_url(ws_proxy, "/echo")) as ws:
            for round_ in range(3):
                await ws.send(f"{index}:{round_}")
                assert await ws.recv() == f"{index}:{round_}"
            return f"{index}"

    results = await asyncio.gather(*(one(index) for index in range(100)))
    assert sorted(results, key=int) == [str(index) for index in range(100)]


async def test_bytes_sent_with_the_handshake_reach_the_upstream(ws_proxy: Guardproxy) -> None:
    # A client may pipeline its first frame behind the handshake; it must not be lost.
    sock, head = await asyncio.to_thread(open_raw, ws_proxy.port, handshake("/echo") + masked_frame(b"early", 0x1))
    with sock:
        assert head.startswith(b"HTTP/1.1 101 ")
        rest = head.split(b"\r\n\r\n", 1)[1]
        while len(rest) < 7:
            rest += await asyncio.to_thread(sock.recv, 4096)
        assert rest[:7] == b"\x81\x05early"


async def test_the_handshake_and_the_close_are_logged_and_counted(ws_proxy: Guardproxy) -> None:
    async with websockets.connect(ws_url(ws_proxy, "/echo")) as ws:
        await ws.send(os.urandom(2000))  # incompressible: permessage-deflate is negotiated
        await ws.recv()
        async with httpx.AsyncClient() as client:
            live = (await client.get(f"{ws_proxy.admin_url}/metrics")).text
        # Counted while the tunnel is still open, not only when it closes.
        assert "guardproxy_websocket_tunnels_open 1.0" in live
        sent_so_far = next(line for line in live.splitlines() if 'direction="to_upstream"' in line)
        assert float(sent_so_far.split()[-1]) > 2000
    wait_until(lambda: len(log_events(ws_proxy, "tunnel_closed")) == 1)
    handshake_line = next(line for line in log_events(ws_proxy, "request") if line["path"] == "/echo")
    closed = log_events(ws_proxy, "tunnel_closed")[0]
    assert handshake_line["status"] == 101
    assert closed["request_id"] == handshake_line["request_id"]
    assert closed["closed_by"] in ("client", "upstream")
    assert int(str(closed["bytes_to_upstream"])) > 1000
    assert int(str(closed["bytes_to_client"])) > 1000
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"{ws_proxy.admin_url}/metrics")).text
    assert 'guardproxy_websocket_tunnels_opened_total{route="default"} 1.0' in metrics
    assert "guardproxy_websocket_tunnels_open 0.0" in metrics
    assert "guardproxy_websocket_tunnel_duration_seconds_count 1.0" in metrics


async def test_a_client_that_leaves_closes_the_upstream_side(ws_proxy: Guardproxy) -> None:
    sock, head = await asyncio.to_thread(open_raw, ws_proxy.port, handshake("/echo"))
    assert head.startswith(b"HTTP/1.1 101 ")
    sock.close()  # no close frame: the TCP connection just goes
    wait_until(lambda: len(log_events(ws_proxy, "tunnel_closed")) == 1)
    assert log_events(ws_proxy, "tunnel_closed")[0]["closed_by"] == "client"


def test_plain_requests_on_the_same_proxy_are_unaffected(ws_proxy: Guardproxy) -> None:
    with httpx.Client() as client:
        for _ in range(3):
            response = client.get(f"{ws_proxy.url}/plain")
            assert response.json() == {"path": "/plain", "plain": True}
            assert response.headers.get("connection") != "close"


# Hostile and failing cases.


@contextlib.contextmanager
def counting_upstream(answer: bytes) -> Iterator[RawUpstream]:
    """A raw upstream that records every request head it gets and answers `answer`."""
    received: list[bytes] = []

    def handler(conn: socket.socket, _: int) -> None:
        while True:
            head = read_request_head(conn)
            if not head:
                return
            received.append(head)
            conn.sendall(answer)

    with raw_upstream(handler) as upstream:
        upstream.received = received
        yield upstream


OK_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.mark.parametrize(
    "fields",
    [
        {"Sec-WebSocket-Key": None},
        {"Sec-WebSocket-Key": "dG9vIHNob3J0"},  # "too short": 9 bytes
        {"Sec-WebSocket-Key": "not base64 at all!!!!!=="},
        {"Sec-WebSocket-Version": "8"},
        {"Sec-WebSocket-Version": None},
        {"Content-Length": "5"},
        {"Transfer-Encoding": "chunked"},
    ],
    ids=["no-key", "short-key", "bad-base64", "version-8", "no-version", "body", "chunked-body"],
)
def test_a_malformed_handshake_is_a_400_that_never_reaches_the_upstream(start_proxy, fields) -> None:  # type: ignore[no-untyped-def]
    with counting_upstream(OK_ANSWER) as upstream:
        gp = start_proxy(upstream.url)
        body = (
            b"hello"
            if "Content-Length" in fields
            else b"5\r\nhello\r\n0\r\n\r\n"
            if fields.get("Transfer-Encoding")
            else b""
        )
        answer = parse_responses(raw_exchange(gp.port, handshake("/chat", fields) + body))[0]
        assert answer.status == 400
        assert answer.header(b"content-type") == b"application/problem+json"
        assert answer.header(b"sec-websocket-version") == b"13"
        assert orjson.loads(answer.body)["type"] == "urn:guardproxy:problem:bad-handshake"
        assert not [head for head in upstream.received if b"/chat" in head]
        wait_until(lambda: "bad_handshake" in gp.log_text())


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_a_websocket_handshake_with_another_method_than_get_is_a_400(start_proxy, method: str) -> None:  # type: ignore[no-untyped-def]
    with counting_upstream(OK_ANSWER) as upstream:
        gp = start_proxy(upstream.url)
        answer = parse_responses(raw_exchange(gp.port, handshake("/chat", method=method)))[0]
        assert answer.status == 400
        assert not [head for head in upstream.received if b"/chat" in head]


def test_two_keys_are_a_400(start_proxy) -> None:  # type: ignore[no-untyped-def]
    with counting_upstream(OK_ANSWER) as upstream:
        gp = start_proxy(upstream.url)
        head = handshake("/chat").replace(b"\r\n\r\n", f"\r\nSec-WebSocket-Key: {SAMPLE_KEY}\r\n\r\n".encode())
        assert parse_responses(raw_exchange(gp.port, head))[0].status == 400
        assert not [head for head in upstream.received if b"/chat" in head]


@pytest.mark.parametrize(
    "origin",
    ["https://evil.example", "null", "https://app.example.com.evil.io", "http://app.example.com"],
)
def test_a_foreign_origin_is_a_403_that_never_reaches_the_upstream(start_proxy, origin: str) -> None:  # type: ignore[no-untyped-def]
    with counting_upstream(OK_ANSWER) as upstream:
        gp = start_proxy(upstream.url, "--cors-origin", "https://app.example.com")
        answer = parse_responses(raw_exchange(gp.port, handshake("/chat", {"Origin": origin})))[0]
        assert answer.status == 403
        assert orjson.loads(answer.body)["type"] == "urn:guardproxy:problem:origin-refused"
        assert not [head for head in upstream.received if b"/chat" in head]
        wait_until(lambda: "security_event" in gp.log_text())


async def test_an_allowed_origin_and_a_missing_one_get_their_tunnel(start_proxy, ws_upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(ws_upstream.url, "--cors-origin", "https://app.example.com")
    async with websockets.connect(ws_url(gp, "/echo"), origin="https://app.example.com") as ws:  # type: ignore[arg-type]
        await ws.send("from the app")
        assert await ws.recv() == "from the app"
    async with websockets.connect(ws_url(gp, "/echo")) as ws:  # no Origin: not a browser
        await ws.send("from a script")
        assert await ws.recv() == "from a script"


def test_a_missing_origin_is_refused_where_the_route_requires_one(start_proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = write_config(
        tmp_path,
        "routes:\n  - name: live\n    path: /live/**\n    websocket:\n"
        "      allowed_origins: [https://app.example.com]\n      allow_missing_origin: false\n",
    )
    with counting_upstream(OK_ANSWER) as upstream:
        gp = start_proxy(upstream.url, "--config", config)
        assert parse_responses(raw_exchange(gp.port, handshake("/live/feed")))[0].status == 403
        assert not [head for head in upstream.received if b"/live" in head]


def test_an_upgrade_to_another_protocol_goes_on_as_a_plain_request(start_proxy) -> None:  # type: ignore[no-untyped-def]
    with counting_upstream(OK_ANSWER) as upstream:
        gp = start_proxy(upstream.url)
        head = b"GET /h2 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        head += b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
        answer = parse_responses(raw_exchange(gp.port, head))[0]
        assert answer.status == 200
        assert answer.header(b"connection") == b"close"
        seen = next(head for head in upstream.received if b"/h2" in head).lower()
        assert b"upgrade" not in seen
        assert b"http2-settings" not in seen


def test_an_unasked_101_to_an_ignored_upgrade_is_a_502(start_proxy) -> None:  # type: ignore[no-untyped-def]
    switch = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    with counting_upstream(switch) as upstream:
        gp = start_proxy(upstream.url)
        head = b"GET /h2 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
        answer = parse_responses(raw_exchange(gp.port, head))[0]
        assert answer.status == 502
        assert f"127.0.0.1:{upstream.port}".encode() not in answer.body


def test_a_protocol_the_route_allows_is_tunnelled(start_proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    def handler(conn: socket.socket, _: int) -> None:
        head = read_request_head(conn)
        if b"/h2" not in head:
            conn.sendall(OK_ANSWER)
            return
        upstream.received.append(head)
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
        conn.sendall(conn.recv(100).upper())  # the "new protocol": shouting back

    config = write_config(tmp_path, "websocket:\n  protocols: [websocket, h2c]\n")
    with raw_upstream(handler) as upstream:
        gp = start_proxy(upstream.url, "--config", config)
        head = b"GET /h2 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        sock, head = open_raw(gp.port, head + b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n")
        with sock:
            assert head.startswith(b"HTTP/1.1 101 ")
            sock.sendall(b"quiet words")
            assert sock.recv(100) == b"QUIET WORDS"
        seen = upstream.received[0].lower()
        assert b"upgrade: h2c" in seen
        assert b"http2-settings: aamaaabkaaqcaaaaaaiaaaaa\r\n" in seen
        assert b"connection: upgrade, http2-settings\r\n" in seen


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Sec-WebSocket-Accept: " + SAMPLE_ACCEPT.encode() + b"\r\n\r\n",
    ],
    ids=["wrong-accept", "no-accept", "other-protocol"],
)
def test_a_101_that_does_not_answer_the_handshake_is_a_502(start_proxy, answer: bytes) -> None:  # type: ignore[no-untyped-def]
    with counting_upstream(answer) as upstream:
        gp = start_proxy(upstream.url)
        response = raw_exchange(gp.port, handshake("/chat", {"Sec-WebSocket-Key": SAMPLE_KEY}))
        parsed = parse_responses(response)[0]
        assert parsed.status == 502
        assert orjson.loads(parsed.body)["type"] == "urn:guardproxy:problem:upstream-bad-response"
        metrics = httpx.get(f"{gp.admin_url}/metrics").text
        assert 'guardproxy_websocket_tunnels_refused_total{reason="bad_switch"} 1.0' in metrics
        assert "guardproxy_websocket_tunnels_open 0.0" in metrics


def test_the_right_accept_opens_the_tunnel(start_proxy) -> None:  # type: ignore[no-untyped-def]
    answer = (
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Accept: " + SAMPLE_ACCEPT.encode() + b"\r\n\r\n"
    )
    with counting_upstream(answer) as upstream:
        gp = start_proxy(upstream.url)
        sock, head = open_raw(gp.port, handshake("/chat", {"Sec-WebSocket-Key": SAMPLE_KEY}))
        with sock:
            assert head.startswith(b"HTTP/1.1 101 ")
            assert b"sec-websocket-accept: " + SAMPLE_ACCEPT.encode() in head


async def test_a_handshake_the_upstream_refuses_is_an_ordinary_response(ws_proxy: Guardproxy) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(ws_url(ws_proxy, "/reject"))
    assert refused.value.response.status_code == 403


def test_a_rate_limited_handshake_gets_429(start_proxy, ws_upstream, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # A prefix of its own per run: the Redis at 6379 outlives runs, and other runs share it.
    prefix = f"gp-ws-test-{uuid.uuid4().hex}:"
    config = write_config(
        tmp_path,
        f"rate_limit:\n  per_client_ip: 2/minute\n  redis_url: redis://127.0.0.1:6379/0\n  key_prefix: '{prefix}'\n",
    )
    gp = start_proxy(ws_upstream.url, "--config", config)
    statuses = []
    for _ in range(3):
        sock, head = open_raw(gp.port, handshake("/echo"))
        sock.close()
        statuses.append(int(head.split(b" ")[1]))
    assert statuses == [101, 101, 429]


def test_an_upstream_that_dies_mid_tunnel_closes_the_client_side(start_proxy) -> None:  # type: ignore[no-untyped-def]
    answer = (
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Accept: " + SAMPLE_ACCEPT.encode() + b"\r\n\r\n\x81\x03bye"
    )

    def handler(conn: socket.socket, _: int) -> None:
        read_request_head(conn)
        conn.sendall(answer)  # then the connection closes

    with raw_upstream(handler) as upstream:
        gp = start_proxy(upstream.url)
        sock, head = open_raw(gp.port, handshake("/chat", {"Sec-WebSocket-Key": SAMPLE_KEY}))
        with sock:
            rest = head.split(b"\r\n\r\n", 1)[1] + read_until_close(sock, 5)
        assert rest == b"\x81\x03bye"
        wait_until(lambda: len(log_events(gp, "tunnel_closed")) == 1)
        assert log_events(gp, "tunnel_closed")[0]["closed_by"] == "upstream"


# The handshake meets the same guards as any request.


def test_a_handshake_without_credentials_gets_401_and_never_reaches_the_upstream(start_proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    digest = hashlib.sha256(b"s3cret-key").hexdigest()
    config = write_config(
        tmp_path,
        "auth:\n  api_keys:\n    env: GP_TEST_KEYS\n  default:\n    mode: required\n    providers: [api_keys]\n",
    )
    answer_101 = (
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Accept: " + SAMPLE_ACCEPT.encode() + b"\r\n\r\n"
    )
    with counting_upstream(answer_101) as upstream:
        gp = start_proxy(upstream.url, "--config", config, env={"GP_TEST_KEYS": f"tests {digest}"})
        refused = parse_responses(raw_exchange(gp.port, handshake("/chat", {"Sec-WebSocket-Key": SAMPLE_KEY})))[0]
        assert refused.status == 401
        assert not [head for head in upstream.received if b"/chat" in head]
        sock, head = open_raw(gp.port, handshake("/chat", {"Sec-WebSocket-Key": SAMPLE_KEY, "X-API-Key": "s3cret-key"}))
        sock.close()
        assert head.startswith(b"HTTP/1.1 101 ")
        (seen,) = [head for head in upstream.received if b"/chat" in head]
        assert b"x-auth-key-name: tests\r\n" in seen.lower()  # as for any request the key let in


def test_a_handshake_for_a_foreign_host_is_refused_before_the_upstream(start_proxy) -> None:  # type: ignore[no-untyped-def]
    with counting_upstream(OK_ANSWER) as upstream:
        gp = start_proxy(upstream.url, "--allowed-host", "api.example.com")
        answer = parse_responses(raw_exchange(gp.port, handshake("/chat", {"Host": "evil.example"})))[0]
        assert answer.status in (400, 421)
        assert not [head for head in upstream.received if b"/chat" in head]


async def test_tunnels_work_with_two_workers(start_proxy, ws_upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(ws_upstream.url, "--workers", "2")

    async def one(index: int) -> None:
        async with websockets.connect(ws_url(gp, "/echo")) as ws:
            await ws.send(f"worker test {index}")
            assert await ws.recv() == f"worker test {index}"

    await asyncio.gather(*(one(index) for index in range(10)))


async def test_a_tunnel_through_the_tls_listener(start_proxy, ws_upstream, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ca_file, cert_file, key_file = write_certificate(tmp_path)
    gp = start_proxy(ws_upstream.url, "--tls-cert", str(cert_file), "--tls-key", str(key_file))
    context = ssl.create_default_context(cafile=str(ca_file))
    payload = os.urandom(300_000)
    async with websockets.connect(f"wss://localhost:{gp.port}/echo", ssl=context, compression=None) as ws:
        await ws.send("over tls")
        assert await ws.recv() == "over tls"
        await ws.send(payload)
        assert await ws.recv() == payload
    wait_until(lambda: len(log_events(gp, "tunnel_closed")) == 1)


@pytest.fixture(scope="module")
def https_ws_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The WebSocket upstream over TLS, with a certificate from a throwaway CA."""
    ca_file, cert_file, key_file = write_certificate(tmp_path_factory.mktemp("ws-tls"), "localhost", "127.0.0.1")
    port = free_port()
    script = (
        f"import sys, uvicorn; sys.path.insert(0, {str(SUPPORT_DIR)!r}); from ws_upstream import app; "
        f"uvicorn.run(app, host='127.0.0.1', port={port}, ws='websockets-sansio', log_level='warning', "
        f"ssl_certfile={str(cert_file)!r}, ssl_keyfile={str(key_file)!r})"
    )
    process = subprocess.Popen([sys.executable, "-c", script])
    try:
        wait_until(lambda: port_open(port))
        yield f"https://localhost:{port}", ca_file
    finally:
        process.kill()
        process.wait()


async def test_a_tunnel_to_an_https_upstream(start_proxy, https_ws_upstream) -> None:  # type: ignore[no-untyped-def]
    url, ca_file = https_ws_upstream
    gp = start_proxy(url, env={"GUARDPROXY_UPSTREAM__CA_FILE": str(ca_file)})
    async with websockets.connect(ws_url(gp, "/echo")) as ws:
        await ws.send("to an https upstream")
        assert await ws.recv() == "to an https upstream"
    wait_until(lambda: len(log_events(gp, "tunnel_closed")) == 1)
