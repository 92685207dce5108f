"""The guard's hostile and failing paths, in process through the real chain and forwarder: a
client that leaves mid-body, a request cancelled at the upstream, a foreign value under the
prefix; and what routes without idempotency pay (nothing but a lookup)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from guardproxy.asgi import Message
from guardproxy.context import RequestContext
from guardproxy.guards.body_limit import BodyLimitGuard
from guardproxy.guards.chain import Guard, GuardChain
from guardproxy.guards.client_ip import ClientAddressGuard
from guardproxy.guards.idempotency import IdempotencyGuard, IdempotencyPolicy
from guardproxy.guards.request_id import RequestIdGuard
from guardproxy.idempotency.keys import identity, store_key
from guardproxy.idempotency.ledger import Ledger
from guardproxy.idempotency.store import MemoryIdempotencyStore
from guardproxy.proxy.forwarder import Forwarder
from guardproxy.routes import Route, RoutePolicy, RouteTable, compile_path_pattern
from tests.unit.idempotency.test_state_machine import GateTransport

PAY = RoutePolicy(name="pay", connect_timeout=1, read_timeout=1, total_timeout=None, max_body_bytes=1000)
OTHER = RoutePolicy(name="default", connect_timeout=1, read_timeout=1, total_timeout=None, max_body_bytes=1000)


def build(fail_mode: str = "pass") -> tuple[GuardChain, IdempotencyGuard, MemoryIdempotencyStore, GateTransport]:
    store = MemoryIdempotencyStore(max_keys=100)
    transport = GateTransport()
    guard = IdempotencyGuard(
        policies={"pay": IdempotencyPolicy(methods=frozenset({"POST"}), required=False)},
        ledger=Ledger(store, timeout=1.0),
        key_prefix="t:",
        key_parts=["client_ip"],
        ttl=100,
        lock_ttl=10,
        max_response_bytes=1000,
        key_max_length=255,
        fail_mode=fail_mode,
    )
    chain = GuardChain(
        guard.wrap_app(Forwarder(transport, upstream_authority=b"upstream", preserve_host=False)),
        guards=[ClientAddressGuard(trusted=[]), RequestIdGuard(trust_incoming=False), BodyLimitGuard(), guard],
        routes=RouteTable([Route(compile_path_pattern("/pay"), None, PAY)], default=OTHER),
    )
    return chain, guard, store, transport


def scope(path: str = "/pay", key: bytes | None = b"k1", length: int = 4) -> dict[str, Any]:
    headers = [(b"host", b"api"), (b"content-length", b"%d" % length)]
    if key is not None:
        headers.append((b"idempotency-key", key))
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "scheme": "http",
        "http_version": "1.1",
        "client": ("203.0.113.9", 40000),
        "headers": headers,
    }


async def test_a_client_that_leaves_mid_body_takes_no_lock_and_reaches_nothing() -> None:
    chain, _, store, transport = build()
    parts: list[Message] = [
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return parts.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    request = scope()
    await chain(request, receive, send)
    assert sent == []  # nobody to answer; the server cuts the connection (or sends its 408)
    assert request["guardproxy.context"].outcome == "client_closed"
    assert len(store) == 0
    assert not transport.executions


async def test_a_request_cancelled_at_the_upstream_releases_its_key() -> None:
    chain, _, store, transport = build()
    body = [{"type": "http.request", "body": b"abcd", "more_body": False}]

    async def receive() -> Message:
        return body.pop(0) if body else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        return None

    task = asyncio.create_task(chain(scope(), receive, send))
    await transport.arrivals.get()
    assert len(store) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    assert len(store) == 0  # released: a retry may run


@pytest.mark.parametrize(("fail_mode", "status"), [("pass", 201), ("refuse", 503)])
async def test_a_foreign_value_under_the_prefix_is_a_store_failure_not_a_crash(fail_mode: str, status: int) -> None:
    chain, _, store, transport = build(fail_mode)
    context = RequestContext(route=PAY, client_host="203.0.113.9")
    key = store_key("t:", identity(["client_ip"], scope(), context), "POST", "/pay", b"k1")
    await store.acquire(key, b"something else entirely", 60_000)
    body = [{"type": "http.request", "body": b"abcd", "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        return body.pop(0) if body else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    task = asyncio.create_task(chain(scope(), receive, send))
    if fail_mode == "pass":
        (await transport.arrivals.get()).set_result("ok")
    await task
    assert sent[0]["status"] == status


def test_routes_without_idempotency_and_requests_without_a_key_go_straight_to_the_forwarder() -> None:
    _, guard, _, _ = build()
    handed_on = object()
    calls: list[Any] = []

    def forwarder(scope: Any, receive: Any, send: Any) -> Any:
        calls.append((scope, receive, send))
        return handed_on

    app = guard.wrap_app(forwarder)  # type: ignore[arg-type]

    async def send(message: Message) -> None:
        return None

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    for request, route in ((scope("/other"), OTHER), (scope(key=None), PAY), ({**scope(), "method": "PUT"}, PAY)):
        request["guardproxy.context"] = RequestContext(route=route, client_host="203.0.113.9")
        # The forwarder's own awaitable, with the chain's receive and send: no wrapper, no coroutine.
        assert app(request, receive, send) is handed_on
        assert calls.pop() == (request, receive, send)
    # Without a route that opts in, the guard has no per-request hook for the chain to call.
    assert not any(
        getattr(type(guard), hook) is not getattr(Guard, hook)
        for hook in ("on_request", "on_request_async", "on_response_start", "on_complete", "wrap_receive", "wrap_send")
    )
