"""Factories for in-process tests: settings, route policies, request contexts and scopes, a
guard chain over a mock upstream, and an ASGI client that drives one request through it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from guardproxy.asgi import ASGIApp, Headers, Message
from guardproxy.config import Settings
from guardproxy.context import RequestContext
from guardproxy.guards.chain import GuardChain
from guardproxy.observability.metrics import MetricSources
from guardproxy.routes import RoutePolicy
from guardproxy.runtime import build_proxy_app
from tests.support.mock_transport import MockTransport

UPSTREAM_URL = "http://127.0.0.1:9"  # never dialled: a mock transport answers


def make_settings(**sections: Any) -> Settings:
    """Settings as `guardproxy run --upstream ...` would load them, with sections overridden."""
    sections.setdefault("upstream", {"url": UPSTREAM_URL})
    return Settings(**sections)


def make_route(name: str = "default", **overrides: Any) -> RoutePolicy:
    values: dict[str, Any] = {
        "connect_timeout": 5.0,
        "read_timeout": 60.0,
        "total_timeout": None,
        "max_body_bytes": 1024 * 1024,
    }
    values.update(overrides)
    return RoutePolicy(name=name, **values)


def make_context(route: RoutePolicy | None = None, **fields: Any) -> RequestContext:
    context = RequestContext(route=route or make_route(), client_host=fields.pop("client_host", "203.0.113.9"))
    for name, value in fields.items():
        setattr(context, name, value)
    return context


def make_scope(
    method: str = "GET",
    path: str = "/",
    *,
    headers: Sequence[tuple[bytes, bytes]] = ((b"host", b"api.example.com"),),
    query: bytes = b"",
    client: tuple[str, int] = ("203.0.113.9", 40000),
    scheme: str = "http",
    http_version: str = "1.1",
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": http_version,
        "server": ("127.0.0.1", 8080),
        "client": client,
        "scheme": scheme,
        "method": method,
        "root_path": "",
        "path": path,
        "raw_path": path.encode("latin-1"),
        "query_string": query,
        "headers": list(headers),
    }


def make_chain(
    settings: Settings | None = None, transport: MockTransport | None = None, metrics: MetricSources | None = None
) -> tuple[GuardChain, MockTransport]:
    """The real guard chain and forwarder, in the real order, over a mock upstream."""
    transport = transport or MockTransport()
    return build_proxy_app(settings or make_settings(), transport, metrics), transport


@dataclass
class Reply:
    status: int
    headers: Headers
    body: bytes
    messages: list[Message] = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        values = [value for key, value in self.headers if key == name]
        return values[0] if values else None


async def call(app: ASGIApp, scope: dict[str, Any], body: Sequence[bytes] = ()) -> Reply:
    """Drive one request through `app` as the server would: the body in `body`'s chunks, then the
    response collected. A response that never started has status 0."""
    incoming: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": index < len(body) - 1} for index, chunk in enumerate(body)
    ] or [{"type": "http.request", "body": b"", "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next((message for message in sent if message["type"] == "http.response.start"), None)
    content = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    if start is None:
        return Reply(0, [], content, sent)
    return Reply(start["status"], list(start["headers"]), content, sent)
