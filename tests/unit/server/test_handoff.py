"""Upgrade requests on the server side (server/handoff.py with server/protocol.py), byte by byte:
only upgrade requests reach the upgrade application, what follows their head is held for the
tunnel, and a taken connection is not closed by the end of its exchange."""

from __future__ import annotations

from typing import Any

from guardproxy.answer import RefusedError
from guardproxy.asgi import Receive, Scope, Send
from guardproxy.proxy.tunnel import TunnelEnd
from guardproxy.server.handoff import HANDOFF_KEY, ClientHandoff
from guardproxy.server.limits import ConnectionLimits, Site
from tests.support.wire import Wire

UPGRADE = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
PLAIN = b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n"


class App:
    """An application that answers 200, or takes the connection and answers 101."""

    def __init__(self, *, take: bool = False) -> None:
        self.scopes: list[Scope] = []
        self.take = take
        self.taken: TunnelEnd | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)
        handoff: ClientHandoff | None = scope.get(HANDOFF_KEY)
        if self.take and handoff is not None:
            self.taken = handoff.take()
            await send({"type": "http.response.start", "status": 101, "headers": [(b"connection", b"upgrade")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async def answer_refusal(self, refusal: RefusedError, scope: Scope, send: Send) -> None:
        raise AssertionError("no refusal expected")


def wire_with(plain: App, upgrades: App | None) -> Wire:
    wire = Wire(plain)
    wire.site = Site(plain, ConnectionLimits(), upgrades)
    protocol_set: list[Any] = []
    wire.transport.set_protocol = protocol_set.append  # type: ignore[method-assign,assignment]
    wire.protocol_set = protocol_set  # type: ignore[attr-defined]
    return wire


async def test_plain_requests_never_reach_the_upgrade_application() -> None:
    plain, upgrades = App(), App()
    wire = wire_with(plain, upgrades)
    wire.feed(PLAIN + PLAIN)
    await wire.settle()
    assert [response.status for response in wire.responses()] == [200, 200]
    assert len(plain.scopes) == 2
    assert upgrades.scopes == []
    assert all(HANDOFF_KEY not in scope for scope in plain.scopes)
    assert not wire.transport.closed


async def test_an_upgrade_request_goes_to_the_upgrade_application_with_what_followed_held() -> None:
    plain, upgrades = App(), App()
    wire = wire_with(plain, upgrades)
    wire.feed(UPGRADE + b"\x81\x02hi")
    assert not wire.transport.reading  # nothing more is read until a tunnel takes over
    await wire.settle()
    assert plain.scopes == []
    (scope,) = upgrades.scopes
    assert scope[HANDOFF_KEY].held == b"\x81\x02hi"
    # Not tunnelled (the application answered 200): the connection closes after the answer.
    assert wire.responses()[0].header(b"connection") == b"close"
    assert wire.transport.closed


async def test_bytes_after_the_upgrade_in_later_reads_are_not_parsed_as_http() -> None:
    upgrades = App(take=True)
    wire = wire_with(App(), upgrades)
    wire.feed(UPGRADE)
    wire.feed(b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
    await wire.settle()
    assert [scope["path"] for scope in upgrades.scopes] == ["/ws"]


async def test_a_taken_connection_gets_its_101_and_stays_open() -> None:
    upgrades = App(take=True)
    wire = wire_with(App(), upgrades)
    wire.feed(UPGRADE + b"early")
    await wire.settle()
    written = bytes(wire.transport.written)
    assert written.startswith(b"HTTP/1.1 101 ")
    assert b"connection: close" not in written
    assert not wire.transport.closed
    assert upgrades.taken is not None
    assert wire.protocol_set == [upgrades.taken]  # type: ignore[attr-defined]
    assert upgrades.taken.take_held() == b"early"
    assert wire.protocol not in wire.state.connections
    assert wire.protocol.transport is None


async def test_without_an_upgrade_application_upgrades_are_plain_requests_as_before() -> None:
    plain = App()
    wire = wire_with(plain, None)
    wire.feed(UPGRADE)
    await wire.settle()
    (scope,) = plain.scopes
    assert HANDOFF_KEY not in scope
    assert wire.responses()[0].status == 200
    assert wire.transport.closed
