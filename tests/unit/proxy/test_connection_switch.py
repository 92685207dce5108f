"""An upstream connection asked to switch protocols (proxy/connection.py, `expect_switch`), byte
by byte: a 101 it asked for ends the exchange and hands the connection over as a tunnel end;
a 101 nobody asked for stays a protocol error."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from guardproxy.proxy.connection import UpstreamConnection
from guardproxy.proxy.errors import UpstreamProtocolError
from tests.support.wire import RecordingTransport

SWITCH = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n"
)


class SwitchableTransport(RecordingTransport):
    def __init__(self) -> None:
        super().__init__()
        self.protocols: list[Any] = []

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocols.append(protocol)

    def get_write_buffer_size(self) -> int:
        return 0


def connection(*, switching: bool) -> tuple[UpstreamConnection, SwitchableTransport]:
    upstream = UpstreamConnection(asyncio.get_running_loop())
    transport = SwitchableTransport()
    upstream.connection_made(transport)
    upstream.begin(head_only=False, idle_timeout=1.0)
    if switching:
        upstream.expect_switch()
    return upstream, transport


async def test_a_101_asked_for_hands_the_connection_over_with_what_followed() -> None:
    upstream, transport = connection(switching=True)
    upstream.data_received(SWITCH + b"\x81\x02hi")
    await upstream.head
    status, headers = upstream.response_head()
    assert status == 101
    assert (b"sec-websocket-accept", b"x") in headers
    end = upstream.switched
    assert end is not None
    assert transport.protocols == [end]
    assert end.take_held() == b"\x81\x02hi"
    assert not upstream.reusable
    assert not transport.closed  # the tunnel owns it now
    upstream.close()
    assert not transport.closed  # closing the HTTP side leaves the tunnel's transport alone


async def test_a_101_in_pieces_is_still_one_switch() -> None:
    upstream, _ = connection(switching=True)
    upstream.data_received(SWITCH[:20])
    assert not upstream.head_received
    upstream.data_received(SWITCH[20:])
    await upstream.head
    assert upstream.switched is not None
    assert upstream.switched.take_held() == b""


async def test_a_101_nobody_asked_for_is_a_protocol_error() -> None:
    upstream, transport = connection(switching=False)
    upstream.data_received(SWITCH + b"\x81\x02hi")
    await upstream.head
    with pytest.raises(UpstreamProtocolError, match="upgrade"):
        upstream.response_head()
    assert upstream.switched is None
    assert transport.protocols == []
    assert transport.closed


async def test_another_answer_to_a_switch_request_is_ordinary_but_the_connection_is_not_reused() -> None:
    upstream, _ = connection(switching=True)
    upstream.data_received(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
    await upstream.head
    assert upstream.response_head()[0] == 403
    assert await upstream.read_chunk() == b"no"
    assert upstream.switched is None
    assert not upstream.reusable
