"""The tunnel's byte pump (proxy/tunnel.py) over socket pairs on the running loop: relaying,
counting, half-closes, flow control handed across, and the ways a tunnel ends."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from guardproxy.proxy.tunnel import Tunnel, TunnelEnd, TunnelLimits, TunnelRecord

LIMITS = TunnelLimits(idle_timeout=300.0, max_lifetime=None, shutdown_timeout=30.0)


@dataclass
class Rig:
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter]
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter]
    client_end: TunnelEnd
    upstream_end: TunnelEnd
    records: list[TunnelRecord] = field(default_factory=list)
    connections: set[Any] = field(default_factory=set)

    def tunnel(self, limits: TunnelLimits = LIMITS) -> Tunnel:
        return Tunnel(
            self.client_end,
            self.upstream_end,
            limits=limits,
            describe={
                "route": "live",
                "request_id": "r1",
                "client": "203.0.113.9",
                "path": "/ws",
                "protocol": "websocket",
            },
            on_close=lambda tunnel: self.records.append(tunnel.record()),
            connections=self.connections,
        )


async def end_of(sock: socket.socket, held: bytes = b"") -> TunnelEnd:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=sock)
    end = TunnelEnd(transport, held)
    transport.set_protocol(end)
    return end


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    client_outer, client_inner = socket.socketpair()
    upstream_outer, upstream_inner = socket.socketpair()
    made = Rig(
        client=await asyncio.open_connection(sock=client_outer),
        upstream=await asyncio.open_connection(sock=upstream_outer),
        client_end=await end_of(client_inner, b"early"),
        upstream_end=await end_of(upstream_inner),
    )
    yield made
    for _, writer in (made.client, made.upstream):
        writer.close()
    made.client_end.transport.close()
    made.upstream_end.transport.close()


async def settle(condition: Any, rounds: int = 500) -> None:
    """Let the loop run until `condition()` holds (bounded, no clock involved)."""
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    assert condition()


async def test_bytes_pass_both_ways_held_bytes_first_and_are_counted(rig: Rig) -> None:
    tunnel = rig.tunnel()
    tunnel.start()
    assert tunnel in rig.connections
    rig.client[1].write(b" and more")
    assert await rig.upstream[0].readexactly(14) == b"early and more"
    rig.upstream[1].write(b"answer")
    assert await rig.client[0].readexactly(6) == b"answer"
    assert (tunnel.bytes_to_upstream, tunnel.bytes_to_client) == (14, 6)


async def test_a_half_close_is_passed_on_and_both_ends_close_the_tunnel(rig: Rig) -> None:
    tunnel = rig.tunnel()
    tunnel.start()
    rig.client[1].write_eof()
    assert await rig.upstream[0].read() == b"early"  # EOF reached the upstream
    rig.upstream[1].write(b"last words")
    assert await rig.client[0].readexactly(10) == b"last words"
    assert not tunnel.closed
    rig.upstream[1].write_eof()
    await settle(lambda: tunnel.closed)
    (record,) = rig.records
    assert record.closed_by == "client"  # the side that ended first
    assert (record.bytes_to_upstream, record.bytes_to_client) == (5, 10)
    assert record.route == "live"
    assert tunnel not in rig.connections


async def test_an_upstream_that_goes_away_closes_the_client_side(rig: Rig) -> None:
    tunnel = rig.tunnel()
    tunnel.start()
    rig.upstream[1].transport.abort()
    assert await rig.client[0].read() == b""
    await settle(lambda: tunnel.closed)
    assert rig.records[0].closed_by == "upstream"


async def test_a_full_client_buffer_stops_reading_the_upstream_and_resumes_it(rig: Rig) -> None:
    tunnel = rig.tunnel()
    tunnel.start()
    upstream_transport = rig.upstream_end.transport
    assert upstream_transport.is_reading()
    rig.client_end.pause_writing()  # what asyncio calls past the client's high-water mark
    assert not upstream_transport.is_reading()
    rig.client_end.resume_writing()
    assert upstream_transport.is_reading()
    rig.upstream_end.pause_writing()
    assert not rig.client_end.transport.is_reading()
    rig.upstream_end.resume_writing()
    assert rig.client_end.transport.is_reading()


async def test_an_end_paused_before_the_start_keeps_its_peer_paused(rig: Rig) -> None:
    rig.upstream_end.pause_writing()
    rig.tunnel().start()
    assert not rig.client_end.transport.is_reading()
    assert rig.upstream_end.transport.is_reading()


async def test_bytes_held_past_the_high_water_mark_stop_the_reading(rig: Rig) -> None:
    rig.upstream[1].write(b"u" * (512 * 1024))
    await settle(lambda: rig.upstream_end.read_paused)
    assert not rig.upstream_end.transport.is_reading()
    rig.tunnel().start()
    assert len(await rig.client[0].readexactly(512 * 1024)) == 512 * 1024


async def test_an_end_that_ended_before_the_start_is_passed_on_at_the_start(rig: Rig) -> None:
    rig.client[1].transport.abort()
    await settle(lambda: rig.client_end.lost or rig.client_end.eof)
    tunnel = rig.tunnel()
    tunnel.start()
    assert await rig.upstream[0].read() == b"early"  # what it sent, then its end
    rig.upstream[1].close()
    await settle(lambda: tunnel.closed)
    assert rig.records[0].closed_by == "client"


@pytest.mark.parametrize(
    ("limits", "closed_by"),
    [
        (TunnelLimits(idle_timeout=0.0, max_lifetime=None, shutdown_timeout=30.0), "idle_timeout"),
        (TunnelLimits(idle_timeout=300.0, max_lifetime=0.0, shutdown_timeout=30.0), "max_lifetime"),
    ],
    ids=["idle", "lifetime"],
)
async def test_limits_close_the_tunnel_and_say_which(rig: Rig, limits: TunnelLimits, closed_by: str) -> None:
    tunnel = rig.tunnel(limits)
    tunnel.start()
    await settle(lambda: tunnel.closed)
    assert rig.records[0].closed_by == closed_by
    assert await rig.client[0].read() == b""
    assert await rig.upstream[0].read() == b"early"


async def test_shutdown_closes_the_tunnel_after_the_shutdown_timeout(rig: Rig) -> None:
    tunnel = rig.tunnel(TunnelLimits(idle_timeout=300.0, max_lifetime=None, shutdown_timeout=0.0))
    tunnel.start()
    assert not tunnel.closed
    tunnel.shutdown()
    await settle(lambda: tunnel.closed)
    assert rig.records[0].closed_by == "shutdown"
    assert tunnel not in rig.connections


async def test_closing_twice_reports_once(rig: Rig) -> None:
    tunnel = rig.tunnel()
    tunnel.start()
    tunnel.close("shutdown")
    tunnel.close("client")
    tunnel.shutdown()
    assert [record.closed_by for record in rig.records] == ["shutdown"]


async def test_bytes_are_handed_to_the_metrics_once_each(rig: Rig) -> None:
    tunnel = rig.tunnel()
    tunnel.start()
    assert tunnel.take_bytes() == (5, 0)  # the held bytes
    rig.upstream[1].write(b"abc")
    assert await rig.client[0].readexactly(3) == b"abc"
    assert tunnel.take_bytes() == (0, 3)
    assert tunnel.take_bytes() == (0, 0)


def websocket_tunnel(rig: Rig) -> Tunnel:
    return Tunnel(
        rig.client_end,
        rig.upstream_end,
        limits=TunnelLimits(idle_timeout=300.0, max_lifetime=None, shutdown_timeout=0.0),
        describe={"route": "live", "request_id": "r1", "client": "c", "path": "/ws", "protocol": "websocket"},
        on_close=lambda tunnel: rig.records.append(tunnel.record()),
        connections=rig.connections,
        frames=True,
    )


async def test_at_shutdown_each_side_between_frames_gets_a_going_away_close_frame(rig: Rig) -> None:
    rig.client_end.take_held()  # this test's client sends whole frames only
    tunnel = websocket_tunnel(rig)
    tunnel.start()
    client_frame = b"\x82\x83abcd" + bytes(byte ^ b"abcd"[index] for index, byte in enumerate(b"hey"))
    rig.client[1].write(client_frame)
    assert await rig.upstream[0].readexactly(len(client_frame)) == client_frame
    rig.upstream[1].write(b"\x81\x02hi")
    assert await rig.client[0].readexactly(4) == b"\x81\x02hi"
    tunnel.shutdown()
    await settle(lambda: tunnel.closed)
    assert await rig.client[0].read() == b"\x88\x02\x03\xe9"  # unmasked, from the "server"
    to_upstream = await rig.upstream[0].read()
    assert to_upstream[:2] == b"\x88\x82"  # masked, as a client's
    assert bytes(byte ^ to_upstream[2:6][index] for index, byte in enumerate(to_upstream[6:])) == b"\x03\xe9"
    assert rig.records[0].closed_by == "shutdown"


async def test_at_shutdown_a_side_in_the_middle_of_a_frame_gets_no_frame_of_ours(rig: Rig) -> None:
    tunnel = websocket_tunnel(rig)
    tunnel.start()
    assert await rig.upstream[0].readexactly(5) == b"early"  # to the cursor, a frame begun and unfinished
    tunnel.shutdown()
    await settle(lambda: tunnel.closed)
    assert await rig.upstream[0].read() == b""
    assert await rig.client[0].read() == b"\x88\x02\x03\xe9"


async def test_other_protocols_get_no_close_frame(rig: Rig) -> None:
    tunnel = rig.tunnel(TunnelLimits(idle_timeout=300.0, max_lifetime=None, shutdown_timeout=0.0))
    tunnel.start()
    tunnel.shutdown()
    await settle(lambda: tunnel.closed)
    assert await rig.client[0].read() == b""
