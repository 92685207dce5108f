"""The HTTP/1.1 upgrade handshake, free of I/O: which protocol a request asks to switch to, whether a
WebSocket opening handshake is well formed (RFC 6455 §4.1, §4.2.1), and whether the upstream's
101 answers the key the client sent (§4.2.2, §4.1 item 4 of the client's checks)."""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from guardproxy.asgi import Headers

WEBSOCKET = b"websocket"
# RFC 6455 §1.3: the GUID appended to the key before hashing.
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SUPPORTED_VERSION = b"13"


class HandshakeError(ValueError):
    """The opening handshake is malformed; the message is safe to show the client."""


def _tokens(value: bytes) -> list[bytes]:
    return [token.strip().lower() for token in value.split(b",") if token.strip()]


def requested_protocols(headers: Headers) -> list[bytes]:
    """The protocol names the request's Upgrade fields list (lower case, versions kept: `h2c`,
    `websocket`), provided Connection names `upgrade` (RFC 9110 §7.8); else none."""
    upgrade: list[bytes] = []
    connection_upgrade = False
    for name, value in headers:
        if name == b"upgrade":
            upgrade += _tokens(value)
        elif name == b"connection":
            connection_upgrade = connection_upgrade or b"upgrade" in _tokens(value)
    return upgrade if connection_upgrade else []


@dataclass(frozen=True, slots=True)
class WebSocketHandshake:
    key: bytes
    origin: bytes | None

    @property
    def expected_accept(self) -> bytes:
        return accept_for(self.key)


def accept_for(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2 item 5.4)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())  # noqa: S324 - the RFC's choice, not a secret


def vet_websocket_request(method: str, http_version: str, headers: Headers) -> WebSocketHandshake:
    """The client's opening handshake, held to RFC 6455 §4.1 / §4.2.1; raises HandshakeError."""
    if http_version != "1.1":
        raise HandshakeError("A WebSocket handshake needs HTTP/1.1.")
    if method != "GET":
        raise HandshakeError("A WebSocket handshake must use GET.")
    keys: list[bytes] = []
    versions: list[bytes] = []
    origins: list[bytes] = []
    for name, value in headers:
        if name == b"sec-websocket-key":
            keys.append(value.strip())
        elif name == b"sec-websocket-version":
            versions.append(value.strip())
        elif name == b"origin":
            origins.append(value.strip())
        elif name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            # llhttp treats what follows an upgrade's head as the new protocol, so a body here
            # would be smuggled into the tunnel; §4.1 gives the handshake none.
            raise HandshakeError("A WebSocket handshake has no body.")
    if len(keys) != 1:
        raise HandshakeError("A WebSocket handshake needs exactly one Sec-WebSocket-Key.")
    try:
        nonce = base64.b64decode(keys[0], validate=True)
    except (binascii.Error, ValueError):
        nonce = b""
    if len(nonce) != 16:
        raise HandshakeError("Sec-WebSocket-Key must be 16 bytes in base64.")
    if versions != [SUPPORTED_VERSION]:
        raise HandshakeError("Sec-WebSocket-Version must be 13.")
    if len(origins) > 1:
        raise HandshakeError("A WebSocket handshake has at most one Origin.")
    return WebSocketHandshake(key=keys[0], origin=origins[0] if origins else None)


def vet_switch(headers: Headers, protocol: bytes, handshake: WebSocketHandshake | None) -> str | None:
    """Why the upstream's 101 cannot be passed on (None when it can): it must switch to the
    protocol asked for, with Connection: upgrade, and for WebSocket answer the client's key."""
    if protocol not in requested_protocols(headers):
        return "the 101 does not switch to the protocol requested"
    if handshake is not None:
        accepts = [value.strip() for name, value in headers if name == b"sec-websocket-accept"]
        if accepts != [handshake.expected_accept]:
            return "Sec-WebSocket-Accept does not match the key"
    return None
