"""The WebSocket guard (guards/websocket.py): which handshakes get a tunnel slot, and the 400,
403 and 503 answers for the others, with the settings built the way the runtime builds them."""

from __future__ import annotations

from typing import Any

import orjson

from guardproxy.answer import Answer
from guardproxy.guards.websocket import WebSocketGuard, build_websocket_guard
from guardproxy.outcomes import Outcome
from guardproxy.proxy.tunnels import TICKET_KEY, TunnelTicket
from guardproxy.server.limits import Lifecycle
from tests.support.factories import make_context, make_route, make_scope, make_settings

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def handshake_scope(
    *extra: tuple[bytes, bytes], path: str = "/live", method: str = "GET", **kwargs: Any
) -> dict[str, Any]:
    headers = [
        (b"host", b"api.example.com"),
        (b"connection", b"upgrade"),
        (b"upgrade", b"websocket"),
        (b"sec-websocket-key", KEY),
        (b"sec-websocket-version", b"13"),
        *extra,
    ]
    return make_scope("GET", path, headers=headers, **kwargs)


def guard(lifecycle: Lifecycle | None = None, **sections: Any) -> WebSocketGuard:
    built = build_websocket_guard(make_settings(**sections), None, lifecycle or Lifecycle())
    assert built is not None
    return built


def ask(websocket: WebSocketGuard, scope: dict[str, Any], route: str = "default") -> tuple[Answer | None, Any]:
    context = make_context(make_route(route))
    return websocket.on_request(scope, context), context


def test_a_good_handshake_gets_a_ticket_for_its_route() -> None:
    websocket = guard()
    scope = handshake_scope()
    answer, _ = ask(websocket, scope)
    assert answer is None
    ticket: TunnelTicket = scope[TICKET_KEY]
    assert ticket.protocol == b"websocket"
    assert ticket.handshake is not None
    assert ticket.limits.idle_timeout == 300.0
    assert websocket.tunnels.by_route == {"default": 1}


def test_tickets_say_whether_to_send_going_away_at_shutdown() -> None:
    scope = handshake_scope()
    ask(guard(), scope)
    assert scope[TICKET_KEY].going_away is True
    scope = handshake_scope()
    ask(guard(websocket={"going_away_at_shutdown": False}), scope)
    assert scope[TICKET_KEY].going_away is False


def test_an_unopened_ticket_is_given_back_and_an_opened_one_kept() -> None:
    websocket = guard()
    scope = handshake_scope()
    _, context = ask(websocket, scope)
    websocket.on_complete(scope, context)
    assert websocket.tunnels.by_route == {"default": 0}
    scope = handshake_scope()
    _, context = ask(websocket, scope)
    scope[TICKET_KEY].opened = True
    websocket.on_complete(scope, context)
    assert websocket.tunnels.by_route == {"default": 1}


def test_an_origin_from_the_cors_origins_is_allowed() -> None:
    websocket = guard(cors={"origins": ["https://app.example.com", "https://*.example.org"]})
    for origin in (b"https://app.example.com", b"https://live.example.org", b"HTTPS://APP.EXAMPLE.COM"):
        answer, _ = ask(websocket, handshake_scope((b"origin", origin)))
        assert answer is None, origin


def test_no_origin_is_allowed_unless_the_route_requires_one() -> None:
    assert ask(guard(cors={"origins": ["https://app.example.com"]}), handshake_scope())[0] is None


def test_a_protocol_the_route_does_not_tunnel_is_left_alone() -> None:
    websocket = guard()
    scope = handshake_scope()
    scope["headers"] = [(b"host", b"x"), (b"connection", b"upgrade"), (b"upgrade", b"h2c")]
    assert ask(websocket, scope)[0] is None
    assert TICKET_KEY not in scope


def test_a_route_with_websocket_disabled_is_left_alone() -> None:
    websocket = guard(routes=[{"name": "plain", "path": "/plain", "websocket": {"enabled": False}}])
    scope = handshake_scope(path="/plain")
    assert ask(websocket, scope, route="plain")[0] is None
    assert TICKET_KEY not in scope


def test_no_guard_is_built_when_no_route_tunnels() -> None:
    assert build_websocket_guard(make_settings(websocket={"enabled": False}), None, Lifecycle()) is None


# Refusals.


def test_a_malformed_handshake_gets_400_with_the_supported_version() -> None:
    websocket = guard()
    scope = handshake_scope()
    scope["headers"] = [field for field in scope["headers"] if field[0] != b"sec-websocket-key"]
    answer, context = ask(websocket, scope)
    assert answer is not None
    assert answer.status == 400
    assert (b"sec-websocket-version", b"13") in answer.headers
    assert orjson.loads(answer.body)["type"] == "urn:guardproxy:problem:bad-handshake"
    assert context.outcome is Outcome.BAD_HANDSHAKE
    assert TICKET_KEY not in scope


def test_a_foreign_origin_gets_403() -> None:
    websocket = guard(cors={"origins": ["https://app.example.com", "https://*.example.org"]})
    for origin in (
        b"https://evil.example",
        b"null",
        b"https://app.example.com.evil.io",
        b"https://example.org",
        b"http://app.example.com",
        b"https://app.example.com:8443",
        b"not an origin",
    ):
        answer, context = ask(websocket, handshake_scope((b"origin", origin)))
        assert answer is not None, origin
        assert answer.status == 403
        assert context.outcome is Outcome.ORIGIN_REFUSED


def test_explicit_allowed_origins_replace_the_cors_ones() -> None:
    websocket = guard(
        cors={"origins": ["https://app.example.com"]}, websocket={"allowed_origins": ["https://ws.example"]}
    )
    assert ask(websocket, handshake_scope((b"origin", b"https://app.example.com")))[0] is not None
    assert ask(websocket, handshake_scope((b"origin", b"https://ws.example")))[0] is None


def test_a_missing_origin_gets_403_where_the_route_requires_one() -> None:
    websocket = guard(websocket={"allowed_origins": ["https://ws.example"], "allow_missing_origin": False})
    answer, context = ask(websocket, handshake_scope())
    assert answer is not None
    assert answer.status == 403
    assert context.outcome is Outcome.ORIGIN_REFUSED


def test_draining_gets_503_with_retry_after() -> None:
    lifecycle = Lifecycle()
    websocket = guard(lifecycle)
    lifecycle.draining = True
    answer, context = ask(websocket, handshake_scope())
    assert answer is not None
    assert answer.status == 503
    assert (b"retry-after", b"1") in answer.headers
    assert context.outcome is Outcome.DRAINING
    assert websocket.tunnels.by_route == {}


def test_past_the_budget_gets_503_and_a_freed_slot_is_usable_again() -> None:
    websocket = guard(websocket={"max_tunnels": 2})
    scopes = [handshake_scope() for _ in range(3)]
    answers = [ask(websocket, scope) for scope in scopes]
    assert [answer is None for answer, _ in answers] == [True, True, False]
    refused, context = answers[2]
    assert refused is not None
    assert refused.status == 503
    assert context.outcome is Outcome.TUNNEL_LIMIT
    websocket.on_complete(scopes[0], answers[0][1])
    assert ask(websocket, handshake_scope())[0] is None


def test_each_route_has_its_own_budget() -> None:
    websocket = guard(routes=[{"name": "live", "path": "/live", "websocket": {"max_tunnels": 1}}])
    assert ask(websocket, handshake_scope(), route="live")[0] is None
    assert ask(websocket, handshake_scope(), route="live")[0] is not None
    assert ask(websocket, handshake_scope(path="/other"))[0] is None
