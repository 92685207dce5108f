"""The upgrade handshake rules (http1/upgrade.py), byte by byte: RFC 9110 §7.8, RFC 6455 §4."""

from __future__ import annotations

import pytest

from guardproxy.asgi import Headers
from guardproxy.http1.upgrade import (
    WEBSOCKET,
    HandshakeError,
    WebSocketHandshake,
    accept_for,
    requested_protocols,
    vet_switch,
    vet_websocket_request,
)

# RFC 6455 §1.3's worked example.
SAMPLE_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
SAMPLE_ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
HANDSHAKE: Headers = [
    (b"host", b"api.example.com"),
    (b"connection", b"Upgrade"),
    (b"upgrade", b"websocket"),
    (b"sec-websocket-key", SAMPLE_KEY),
    (b"sec-websocket-version", b"13"),
]


def with_fields(*fields: tuple[bytes, bytes], without: tuple[bytes, ...] = ()) -> Headers:
    return [field for field in HANDSHAKE if field[0] not in without] + list(fields)


def test_accept_is_the_rfc_example() -> None:
    assert accept_for(SAMPLE_KEY) == SAMPLE_ACCEPT


def test_a_well_formed_handshake_gives_its_key_and_origin() -> None:
    handshake = vet_websocket_request("GET", "1.1", with_fields((b"origin", b"https://app.example.com")))
    assert handshake == WebSocketHandshake(key=SAMPLE_KEY, origin=b"https://app.example.com")
    assert handshake.expected_accept == SAMPLE_ACCEPT


def test_protocols_need_connection_upgrade_and_are_case_insensitive() -> None:
    assert requested_protocols([(b"connection", b"keep-alive, Upgrade"), (b"upgrade", b"WebSocket")]) == [WEBSOCKET]
    assert requested_protocols([(b"connection", b"upgrade"), (b"upgrade", b"h2c, websocket")]) == [b"h2c", WEBSOCKET]


@pytest.mark.parametrize(
    "headers",
    [
        [(b"upgrade", b"websocket")],
        [(b"connection", b"keep-alive"), (b"upgrade", b"websocket")],
        [(b"connection", b"upgraded"), (b"upgrade", b"websocket")],
        [(b"connection", b"upgrade")],
        [],
    ],
    ids=["no-connection", "connection-without-upgrade", "not-the-token", "no-upgrade-field", "nothing"],
)
def test_no_protocol_is_requested_without_both_fields(headers: Headers) -> None:
    assert requested_protocols(headers) == []


@pytest.mark.parametrize(
    ("method", "version", "headers", "says"),
    [
        ("GET", "1.0", HANDSHAKE, "HTTP/1.1"),
        ("POST", "1.1", HANDSHAKE, "GET"),
        ("GET", "1.1", with_fields(without=(b"sec-websocket-key",)), "exactly one"),
        ("GET", "1.1", with_fields((b"sec-websocket-key", SAMPLE_KEY)), "exactly one"),
        ("GET", "1.1", with_fields((b"sec-websocket-key", b"c2hvcnQ="), without=(b"sec-websocket-key",)), "16 bytes"),
        (
            "GET",
            "1.1",
            with_fields((b"sec-websocket-key", b"MDEyMzQ1Njc4OWFiY2RlZmc="), without=(b"sec-websocket-key",)),
            "16 bytes",
        ),
        ("GET", "1.1", with_fields((b"sec-websocket-key", b"!!!!"), without=(b"sec-websocket-key",)), "16 bytes"),
        ("GET", "1.1", with_fields((b"sec-websocket-key", b""), without=(b"sec-websocket-key",)), "16 bytes"),
        ("GET", "1.1", with_fields(without=(b"sec-websocket-version",)), "13"),
        ("GET", "1.1", with_fields((b"sec-websocket-version", b"8"), without=(b"sec-websocket-version",)), "13"),
        ("GET", "1.1", with_fields((b"sec-websocket-version", b"13")), "13"),
        ("GET", "1.1", with_fields((b"content-length", b"5")), "no body"),
        ("GET", "1.1", with_fields((b"transfer-encoding", b"chunked")), "no body"),
        ("GET", "1.1", with_fields((b"origin", b"https://a.example"), (b"origin", b"https://b.example")), "Origin"),
    ],
    ids=[
        "http-10",
        "post",
        "no-key",
        "two-keys",
        "short-key",
        "long-key",
        "not-base64",
        "empty-key",
        "no-version",
        "version-8",
        "two-versions",
        "content-length",
        "chunked",
        "two-origins",
    ],
)
def test_malformed_handshakes_are_refused_with_a_reason(method: str, version: str, headers: Headers, says: str) -> None:
    with pytest.raises(HandshakeError, match=says):
        vet_websocket_request(method, version, headers)


def test_an_empty_content_length_is_no_body() -> None:
    assert vet_websocket_request("GET", "1.1", with_fields((b"content-length", b"0"))).key == SAMPLE_KEY


SWITCH: Headers = [(b"connection", b"Upgrade"), (b"upgrade", b"websocket"), (b"sec-websocket-accept", SAMPLE_ACCEPT)]
HANDSHAKE_SEEN = WebSocketHandshake(key=SAMPLE_KEY, origin=None)


def test_a_101_answering_the_key_is_accepted() -> None:
    assert vet_switch(SWITCH, WEBSOCKET, HANDSHAKE_SEEN) is None


@pytest.mark.parametrize(
    "headers",
    [
        [field for field in SWITCH if field[0] != b"sec-websocket-accept"],
        [*SWITCH[:2], (b"sec-websocket-accept", accept_for(b"b3RoZXIga2V5IGhlcmUhIQ=="))],
        [*SWITCH, (b"sec-websocket-accept", SAMPLE_ACCEPT)],
        [(b"connection", b"Upgrade"), (b"upgrade", b"h2c"), SWITCH[2]],
        [(b"upgrade", b"websocket"), SWITCH[2]],
    ],
    ids=["no-accept", "another-keys-accept", "two-accepts", "other-protocol", "no-connection-upgrade"],
)
def test_a_101_that_does_not_answer_the_handshake_is_refused(headers: Headers) -> None:
    assert vet_switch(headers, WEBSOCKET, HANDSHAKE_SEEN) is not None


def test_another_protocol_needs_only_the_switch_itself() -> None:
    assert vet_switch([(b"connection", b"upgrade"), (b"upgrade", b"h2c")], b"h2c", None) is None
    assert vet_switch([(b"connection", b"upgrade"), (b"upgrade", b"websocket")], b"h2c", None) is not None
