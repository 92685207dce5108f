"""WebSocket tunnels under limits and pressure, over real sockets: idle timeout, maximum lifetime,
the per-route tunnel budget, drain with open tunnels, and memory that stays bounded when either
side stops reading or 100 tunnels move 10 MiB each."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest
import websockets

from tests.support.processes import Guardproxy, wait_until
from tests.support.raw import parse_responses, raw_exchange, read_until_close
from tests.support.websocket import handshake, masked_frame, open_raw, rss_bytes

MIB = 1024 * 1024


def config_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "guardproxy.yaml"
    path.write_text(text)
    return str(path)


def closed_tunnels(gp: Guardproxy) -> list[dict[str, object]]:
    lines = [line for line in gp.log_text().splitlines() if line.startswith("{")]
    return [record for record in map(json.loads, lines) if record.get("event") == "tunnel_closed"]


def ws_url(gp: Guardproxy, path: str) -> str:
    return f"ws://127.0.0.1:{gp.port}{path}"


async def echo_until_closed(ws: websockets.ClientConnection, rounds: int) -> None:
    for _ in range(rounds):
        await ws.send("still here")
        await asyncio.wait_for(ws.recv(), 10)
        await asyncio.sleep(0.05)


async def receive_until_closed(ws: websockets.ClientConnection) -> None:
    while True:
        await asyncio.wait_for(ws.recv(), 15)


def send_until_blocked(sock: socket.socket, frame: bytes, limit: int) -> int:
    """Bytes sent before a send blocked for the socket's timeout (or `limit`, if it never did)."""
    sent = 0
    try:
        while sent < limit:
            sock.sendall(frame)
            sent += len(frame)
    except TimeoutError:
        return sent
    return sent


async def test_a_quiet_tunnel_is_closed_at_its_idle_timeout(start_proxy, ws_upstream, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(ws_upstream.url, "--config", config_file(tmp_path, "websocket:\n  idle_timeout: 1.0\n"))
    async with websockets.connect(ws_url(gp, "/quiet"), ping_interval=None) as ws:
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
    wait_until(lambda: len(closed_tunnels(gp)) == 1)
    assert closed_tunnels(gp)[0]["closed_by"] == "idle_timeout"


async def test_traffic_keeps_a_tunnel_open_past_its_idle_timeout(start_proxy, ws_upstream, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(ws_upstream.url, "--config", config_file(tmp_path, "websocket:\n  idle_timeout: 2.0\n"))
    async with websockets.connect(ws_url(gp, "/echo"), ping_interval=None) as ws:
        for index in range(12):  # ~3.6 s of traffic, with gaps well under the idle timeout
            await ws.send(str(index))
            assert await ws.recv() == str(index)
            await asyncio.sleep(0.3)
    wait_until(lambda: len(closed_tunnels(gp)) == 1)
    assert closed_tunnels(gp)[0]["closed_by"] in ("client", "upstream")


async def test_a_busy_tunnel_is_closed_at_its_maximum_lifetime(start_proxy, ws_upstream, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(ws_upstream.url, "--config", config_file(tmp_path, "websocket:\n  max_lifetime: 1.0\n"))
    async with websockets.connect(ws_url(gp, "/echo"), ping_interval=None) as ws:
        with pytest.raises(websockets.ConnectionClosed):
            await echo_until_closed(ws, 200)
    wait_until(lambda: len(closed_tunnels(gp)) == 1)
    assert closed_tunnels(gp)[0]["closed_by"] == "max_lifetime"


def test_past_the_route_budget_a_handshake_gets_503_with_retry_after(start_proxy, ws_upstream, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = "routes:\n  - name: live\n    path: /quiet\n    websocket:\n      max_tunnels: 2\n"
    gp = start_proxy(ws_upstream.url, "--config", config_file(tmp_path, config))
    first, head = open_raw(gp.port, handshake("/quiet"))
    assert b" 101 " in head
    second, head = open_raw(gp.port, handshake("/quiet"))
    assert b" 101 " in head
    refused = parse_responses(raw_exchange(gp.port, handshake("/quiet")))[0]
    assert refused.status == 503
    assert refused.header(b"retry-after") == b"1"
    assert orjson.loads(refused.body)["type"] == "urn:guardproxy:problem:overloaded"
    # Another route has its own budget.
    other, head = open_raw(gp.port, handshake("/echo"))
    assert b" 101 " in head
    # A closed tunnel gives its slot back.
    first.close()
    wait_until(lambda: len(closed_tunnels(gp)) == 1)
    third, head = open_raw(gp.port, handshake("/quiet"))
    assert b" 101 " in head
    for sock in (second, other, third):
        sock.close()
    assert "tunnel_limit" in gp.log_text()


@pytest.mark.parametrize(("going_away", "close_code"), [("true", 1001), ("false", 1006)], ids=["1001", "cut"])
async def test_drain_refuses_handshakes_keeps_open_tunnels_for_the_shutdown_timeout_and_exits_0(  # type: ignore[no-untyped-def]
    start_proxy, ws_upstream, going_away: str, close_code: int
) -> None:
    env = {
        "GUARDPROXY_SERVER__DRAIN_DELAY": "1.5",
        "GUARDPROXY_SERVER__SHUTDOWN_TIMEOUT": "2",
        "GUARDPROXY_WEBSOCKET__GOING_AWAY_AT_SHUTDOWN": going_away,
    }
    gp = start_proxy(ws_upstream.url, env=env)
    async with websockets.connect(ws_url(gp, "/echo"), ping_interval=None) as ws:
        gp.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        # Draining: a new handshake is refused while the listener still accepts...
        refused = parse_responses(await asyncio.to_thread(raw_exchange, gp.port, handshake("/echo")))[0]
        assert refused.status == 503
        assert orjson.loads(refused.body)["type"] == "urn:guardproxy:problem:overloaded"
        # ...and the open tunnel still works.
        await ws.send("during the drain")
        assert await ws.recv() == "during the drain"
        signalled = time.monotonic()
        with pytest.raises(websockets.ConnectionClosed):
            await receive_until_closed(ws)
        # Closed by guardproxy after the shutdown timeout, with 1001 Going Away unless turned off.
        assert ws.close_code == close_code
        assert time.monotonic() - signalled >= 2.0
    assert await asyncio.to_thread(gp.process.wait, 15) == 0
    assert [record["closed_by"] for record in closed_tunnels(gp)] == ["shutdown"]
    assert "draining" in gp.log_text()
    assert "Traceback" not in gp.log_text()


def test_a_client_that_stops_reading_holds_back_the_upstream(start_proxy, ws_upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(ws_upstream.url)
    pid = gp.process.pid
    warm, head = open_raw(gp.port, handshake("/echo"))
    warm.close()
    wait_until(lambda: len(closed_tunnels(gp)) == 1)
    before = rss_bytes(pid)
    sock, head = open_raw(gp.port, handshake("/flood?mib=256"))
    with sock:
        assert b" 101 " in head
        time.sleep(3)  # the upstream floods; this client reads nothing
        growth = rss_bytes(pid) - before
        print(f"\nRSS growth with a client not reading a 256 MiB flood: {growth / MIB:.1f} MiB")
        assert growth < 16 * MIB
        # The tunnel is held back, not broken: bytes still flow once the client reads.
        sock.settimeout(5)
        assert len(sock.recv(65536)) > 0
        assert len(closed_tunnels(gp)) == 1  # the warm-up tunnel only


def test_an_upstream_that_stops_reading_holds_back_the_client(start_proxy, ws_upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(ws_upstream.url)
    pid = gp.process.pid
    before = rss_bytes(pid)
    sock, head = open_raw(gp.port, handshake("/sink"))
    with sock:
        assert b" 101 " in head
        frame = masked_frame(b"\x00" * 65536)
        sock.settimeout(2)
        sent = send_until_blocked(sock, frame, 256 * MIB)
        growth = rss_bytes(pid) - before
        print(f"\nclient sent {sent / MIB:.1f} MiB before blocking; RSS growth {growth / MIB:.1f} MiB")
        assert sent < 128 * MIB
        assert growth < 16 * MIB


def test_memory_stays_bounded_while_100_tunnels_move_10_mib_each(start_proxy, ws_upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(ws_upstream.url)
    pid = gp.process.pid

    async def one() -> int:
        received = 0
        async with websockets.connect(
            ws_url(gp, "/flood?mib=10"), compression=None, ping_interval=None, max_size=2**20
        ) as ws:
            while received < 10 * MIB:
                received += len(await asyncio.wait_for(ws.recv(), 60))
        return received

    async def tunnels(count: int) -> list[int]:
        return await asyncio.gather(*(one() for _ in range(count)))

    asyncio.run(tunnels(2))  # warm up: the first tunnels' allocations are not growth
    before = rss_bytes(pid)
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes(pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    try:
        moved = asyncio.run(tunnels(100))
    finally:
        done.set()
        sampler.join()
    elapsed = time.monotonic() - started
    assert moved == [10 * MIB] * 100
    growth = peak - before
    print(f"\n100 tunnels x 10 MiB in {elapsed:.1f} s; RSS {before / MIB:.1f} MiB, peak growth {growth / MIB:.1f} MiB")
    assert growth < 32 * MIB
    wait_until(lambda: len(closed_tunnels(gp)) == 102, timeout=20)


def test_a_socket_that_sends_garbage_after_the_101_only_reaches_the_upstream(start_proxy, ws_upstream) -> None:  # type: ignore[no-untyped-def]
    # guardproxy pumps bytes; judging frames is the endpoints' business (the upstream closes).
    gp = start_proxy(ws_upstream.url)
    sock, head = open_raw(gp.port, handshake("/echo"))
    with sock:
        assert b" 101 " in head
        sock.sendall(b"\xff" * 64)
        read_until_close(sock, 10)
    wait_until(lambda: len(closed_tunnels(gp)) == 1)
    assert gp.process.poll() is None


def test_a_handshake_cut_before_the_101_leaves_nothing_open(start_proxy, ws_upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(ws_upstream.url)
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", gp.port))
        sock.sendall(handshake("/quiet"))
        sock.close()
    metrics = f"{gp.admin_url}/metrics"
    wait_until(lambda: "guardproxy_websocket_tunnels_open 0.0" in httpx.get(metrics).text)
    sock, head = open_raw(gp.port, handshake("/echo"))
    sock.close()
    assert b" 101 " in head
    assert gp.process.poll() is None
