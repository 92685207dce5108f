"""Signing keys and a real JWKS endpoint for the auth tests.

Keys are generated with `cryptography`, tokens are signed with PyJWT, and the key set is served
by a real HTTP server on a loopback port, in a thread of the test process: a test can change
the set (key rotation), make it fail, and stop it, while guardproxy runs as its own process.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tests.support.processes import free_port

ISSUER = "https://idp.example.test/realms/test"
AUDIENCE = "orders-api"


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    @classmethod
    def rsa(cls, kid: str, alg: str = "RS256", bits: int = 2048) -> SigningKey:
        return cls(kid, alg, rsa.generate_private_key(public_exponent=65537, key_size=bits))

    @classmethod
    def ec(cls, kid: str) -> SigningKey:
        return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def ed25519(cls, kid: str) -> SigningKey:
        return cls(kid, "EdDSA", ed25519.Ed25519PrivateKey.generate())

    def jwk(self, *, with_alg: bool = True) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        data = json.loads(algorithm.to_jwk(self.private.public_key()))
        data.update(kid=self.kid, use="sig")
        if with_alg:
            data["alg"] = self.alg
        return data

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def token(
        self,
        claims: dict[str, Any] | None = None,
        *,
        headers: dict[str, Any] | None = None,
        standard: bool = True,
        **overrides: Any,
    ) -> str:
        """A token with the standard claims (unless `standard` is false), `claims` and `overrides`."""
        return jwt.encode(
            {**(standard_claims() if standard else {}), **(claims or {}), **overrides},
            self.private,
            algorithm=self.alg,
            headers={"kid": self.kid, **(headers or {})},
        )


def standard_claims(lifetime: int = 900) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-42", "iat": now, "nbf": now, "exp": now + lifetime}


def jwks_document(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [key.jwk() for key in keys]}


@dataclass
class JwksServer:
    """What the endpoint serves: change `document`, `status` or `cache_control` at any time."""

    port: int
    document: dict[str, Any]
    status: int = 200
    cache_control: str | None = None
    delay: float = 0.0
    requests: list[float] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks.json"

    def serve(self, *keys: SigningKey) -> None:
        self.document = jwks_document(*keys)


@contextmanager
def jwks_server(*keys: SigningKey, port: int | None = None) -> Iterator[JwksServer]:
    state = JwksServer(port or free_port(), jwks_document(*keys))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(time.monotonic())
            if state.delay:
                time.sleep(state.delay)
            body = json.dumps(state.document).encode() if state.status == 200 else b"{}"
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if state.cache_control:
                self.send_header("Cache-Control", state.cache_control)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", state.port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
