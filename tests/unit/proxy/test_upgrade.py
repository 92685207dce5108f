"""The upgrade chain's endpoint (proxy/upgrade.py) over a mock upstream: what the handshake
looks like upstream, and every answer other than a tunnel. The tunnel itself needs real
transports: tests/unit/proxy/test_tunnel.py and tests/integration/test_websocket.py."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from guardproxy.proxy.errors import UpstreamConnectError
from guardproxy.proxy.tunnels import TICKET_KEY
from guardproxy.runtime import build_proxy_apps
from guardproxy.server.handoff import HANDOFF_KEY, ClientHandoff
from tests.support.factories import call, make_scope, make_settings
from tests.support.mock_transport import MockResponse, MockTransport

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


class Connection:
    """What a handoff needs of the server protocol; the tests here never take it."""

    def __init__(self) -> None:
        self.connections: set[Any] = set()

    def release_transport(self) -> tuple[asyncio.Transport, bool]:
        raise AssertionError("no tunnel opens over a mock transport")


def handshake(*extra: tuple[bytes, bytes], upgrade: bytes = b"websocket") -> dict[str, Any]:
    headers = [
        (b"host", b"api.example.com"),
        (b"connection", b"keep-alive, Upgrade"),
        (b"upgrade", upgrade),
        (b"sec-websocket-key", KEY),
        (b"sec-websocket-version", b"13"),
        (b"sec-websocket-protocol", b"chat"),
        (b"keep-alive", b"timeout=5"),
        *extra,
    ]
    scope = make_scope("GET", "/live", headers=headers)
    scope[HANDOFF_KEY] = ClientHandoff(Connection())
    return scope


def upgrade_chain(transport: MockTransport, **sections: Any) -> Any:
    _, upgrades = build_proxy_apps(make_settings(**sections), transport, None)
    assert upgrades is not None
    return upgrades


def budget(chain: Any) -> dict[str, int]:
    websocket = next(guard for guard in chain.guards if hasattr(guard, "tunnels"))
    return dict(websocket.tunnels.by_route)


async def test_the_handshake_goes_upstream_with_its_upgrade_and_guardproxy_fields() -> None:
    upstream = MockTransport(lambda request: MockResponse(status=404, chunks=(b"no such socket",)))
    reply = await call(upgrade_chain(upstream), handshake())
    (sent,) = upstream.sent
    names = [name for name, _ in sent.headers]
    assert sent.header(b"upgrade") == b"websocket"
    assert sent.header(b"connection") == b"upgrade"
    assert sent.header(b"sec-websocket-key") == KEY
    assert sent.header(b"sec-websocket-protocol") == b"chat"
    assert b"keep-alive" not in names  # every other hop-by-hop rule still applies
    assert sent.header(b"x-forwarded-for") == b"203.0.113.9"
    assert sent.body == b""
    # Not a 101: an ordinary response, and the reserved slot is given back.
    assert reply.status == 404
    assert reply.body == b"no such socket"


async def test_a_non_101_answer_gives_the_tunnel_slot_back() -> None:
    chain = upgrade_chain(MockTransport(lambda request: MockResponse(status=403)))
    await call(chain, handshake())
    assert budget(chain) == {"default": 0}


async def test_an_unreachable_upstream_is_a_502_problem_and_the_slot_is_given_back() -> None:
    def refuse(request: Any) -> MockResponse:
        raise UpstreamConnectError("connect failed: ConnectionRefusedError")

    chain = upgrade_chain(MockTransport(refuse))
    reply = await call(chain, handshake())
    assert reply.status == 502
    assert b"127.0.0.1" not in reply.body
    assert budget(chain) == {"default": 0}


async def test_a_101_without_a_connection_to_switch_is_a_502() -> None:
    switch = [(b"connection", b"upgrade"), (b"upgrade", b"websocket"), (b"sec-websocket-accept", ACCEPT)]
    chain = upgrade_chain(MockTransport(lambda request: MockResponse(status=101, headers=switch, chunks=())))
    reply = await call(chain, handshake())
    assert reply.status == 502
    assert orjson.loads(reply.body)["type"] == "urn:guardproxy:problem:upstream-bad-response"
    assert budget(chain) == {"default": 0}


async def test_an_upgrade_the_route_does_not_tunnel_goes_on_as_a_plain_request() -> None:
    upstream = MockTransport()
    scope = handshake(upgrade=b"h2c")
    reply = await call(upgrade_chain(upstream), scope)
    assert reply.status == 200
    assert TICKET_KEY not in scope
    names = [name for name, _ in upstream.sent[0].headers]
    assert b"upgrade" not in names
    assert b"connection" not in names


async def test_a_refused_handshake_never_reaches_the_upstream() -> None:
    upstream = MockTransport()
    reply = await call(
        upgrade_chain(upstream, cors={"origins": ["https://app.example.com"]}),
        handshake((b"origin", b"https://evil.example")),
    )
    assert reply.status == 403
    assert upstream.sent == []


async def test_the_plain_chain_has_no_websocket_guard_and_none_is_built_when_disabled() -> None:
    plain, upgrades = build_proxy_apps(make_settings(), MockTransport(), None)
    assert not any(hasattr(guard, "tunnels") for guard in plain.guards)
    assert upgrades is not None
    assert build_proxy_apps(make_settings(websocket={"enabled": False}), MockTransport(), None)[1] is None
