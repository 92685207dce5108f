"""A property test of the Idempotency-Key state machine, through the real guard chain and forwarder.

Hypothesis sends requests (three keys, two payloads), lets the upstream finish them with any kind
of answer (stored ones, released ones, a failure before the head), and moves time past locks and
records, in any order and interleaving. A small model says what every request must meet; the
upstream, reached through the test transport, counts what really ran. Whatever the sequence:

  - a request reaches the upstream exactly when the model has no live entry for its key;
  - a repeat in flight gets 409, a reused key with another payload 422;
  - a replay is byte for byte the response stored, marked Idempotent-Replayed: true;
  - a request whose lock expired never overwrites what a later one stored.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from guardproxy.asgi import Headers, Message
from guardproxy.guards.body_limit import BodyLimitGuard
from guardproxy.guards.chain import GuardChain
from guardproxy.guards.client_ip import ClientAddressGuard
from guardproxy.guards.idempotency import IdempotencyGuard, IdempotencyPolicy
from guardproxy.guards.request_id import RequestIdGuard
from guardproxy.idempotency.ledger import Ledger
from guardproxy.idempotency.store import MemoryIdempotencyStore
from guardproxy.proxy.errors import UpstreamConnectError
from guardproxy.proxy.forwarder import Forwarder
from guardproxy.proxy.transport import UpstreamRequest
from guardproxy.routes import Route, RoutePolicy, RouteTable, compile_path_pattern

LOCK_TTL, TTL, MAX_RESPONSE = 10.0, 100.0, 64
# What the upstream answers when a test lets it finish, and whether that answer is kept.
BEHAVIOURS = {"ok": True, "declined": True, "error": False, "busy": False, "huge": False, "unreachable": False}
_STATUS = {"ok": 201, "declined": 402, "error": 500, "busy": 429, "huge": 200}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Response:
    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.headers: Headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        self._body = body
        self._read = False
        self.trailers: Headers = []

    async def read_chunk(self) -> bytes:
        self._read = True
        return self._body

    @property
    def finished(self) -> bool:
        return self._read

    @property
    def chunk_ready(self) -> bool:
        return True

    def close(self) -> None:
        return None


@dataclass
class Pending:
    owner: int
    key: bytes
    payload: bytes
    gate: asyncio.Future[str]
    task: asyncio.Task[tuple[int, Headers, bytes]]


@dataclass
class GateTransport:
    """The upstream: each request waits at its gate until the test decides how it ends."""

    arrivals: asyncio.Queue[asyncio.Future[str]] = field(default_factory=asyncio.Queue)
    executions: Counter[bytes] = field(default_factory=Counter)
    answered: int = 0

    async def send(self, request: UpstreamRequest) -> Response:
        assert request.body is not None
        async for _ in request.body:
            pass
        key = next(value for name, value in request.headers if name == b"idempotency-key")
        self.executions[key] += 1
        gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.arrivals.put_nowait(gate)
        behaviour = await gate
        if behaviour == "unreachable":
            raise UpstreamConnectError("refused")
        self.answered += 1
        body = b"x" * (MAX_RESPONSE + 1) if behaviour == "huge" else b"answer-%d" % self.answered
        return Response(_STATUS[behaviour], body)

    async def aclose(self) -> None:
        return None


async def _request(chain: GuardChain, key: bytes, payload: bytes) -> tuple[int, Headers, bytes]:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/pay",
        "raw_path": b"/pay",
        "query_string": b"",
        "scheme": "http",
        "http_version": "1.1",
        "client": ("203.0.113.9", 40000),
        "headers": [(b"host", b"api"), (b"idempotency-key", key), (b"content-length", b"%d" % len(payload))],
    }
    sent = False
    messages: list[Message] = []

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": payload, "more_body": False}

    async def send(message: Message) -> None:
        messages.append(message)

    await chain(scope, receive, send)
    start = messages[0]
    return start["status"], start["headers"], b"".join(m.get("body", b"") for m in messages[1:])


class IdempotencyMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = Clock()
        self.transport = GateTransport()
        self.guard = IdempotencyGuard(
            policies={"pay": IdempotencyPolicy(methods=frozenset({"POST"}), required=True)},
            ledger=Ledger(MemoryIdempotencyStore(max_keys=1000, clock=self.clock), timeout=5.0),
            key_prefix="t:",
            key_parts=["client_ip"],
            ttl=TTL,
            lock_ttl=LOCK_TTL,
            max_response_bytes=MAX_RESPONSE,
            key_max_length=255,
            fail_mode="refuse",
        )
        policy = RoutePolicy(name="pay", connect_timeout=1, read_timeout=1, total_timeout=None, max_body_bytes=1000)
        default = RoutePolicy(name="default", connect_timeout=1, read_timeout=1, total_timeout=None, max_body_bytes=10)
        self.chain = GuardChain(
            self.guard.wrap_app(Forwarder(self.transport, upstream_authority=b"upstream", preserve_host=False)),
            guards=[ClientAddressGuard(trusted=[]), RequestIdGuard(trust_incoming=False), BodyLimitGuard(), self.guard],
            routes=RouteTable([Route(compile_path_pattern("/pay"), None, policy)], default=default),
        )
        # The model: key -> ("lock", payload, owner, expires) or ("done", payload, status, body, expires).
        self.entries: dict[bytes, tuple[Any, ...]] = {}
        self.pending: list[Pending] = []
        self.expected_executions: Counter[bytes] = Counter()
        self.owners = 0

    def _live(self, key: bytes) -> tuple[Any, ...] | None:
        entry = self.entries.get(key)
        if entry is not None and entry[-1] <= self.clock.now:
            del self.entries[key]
            return None
        return entry

    def _settle(self) -> None:
        # Releases run as background tasks: let them finish.
        for _ in range(5):
            self.loop.run_until_complete(asyncio.sleep(0))

    @rule(key=st.sampled_from([b"a", b"b", b'"c"']), payload=st.sampled_from([b"one", b"two"]))
    def send_request(self, key: bytes, payload: bytes) -> None:
        entry = self._live(key)
        task = self.loop.create_task(_request(self.chain, key, payload))
        arrival = self.loop.create_task(self.transport.arrivals.get())
        self.loop.run_until_complete(asyncio.wait([task, arrival], return_when=asyncio.FIRST_COMPLETED))
        if entry is None:
            assert arrival.done(), "a request with a free key must reach the upstream"
            self.owners += 1
            self.expected_executions[key] += 1
            self.entries[key] = ("lock", payload, self.owners, self.clock.now + LOCK_TTL)
            self.pending.append(Pending(self.owners, key, payload, arrival.result(), task))
            return
        arrival.cancel()
        assert task.done(), "a repeat must be answered without reaching the upstream"
        status, headers, body = task.result()
        if entry[1] != payload:
            assert status == 422
        elif entry[0] == "lock":
            assert status == 409
            assert (b"retry-after", b"1") in headers
        else:
            assert (status, body) == (entry[2], entry[3])
            assert (b"idempotent-replayed", b"true") in headers

    @precondition(lambda self: self.pending)
    @rule(data=st.data(), behaviour=st.sampled_from(sorted(BEHAVIOURS)))
    def upstream_finishes(self, data: st.DataObject, behaviour: str) -> None:
        pending = self.pending.pop(data.draw(st.integers(0, len(self.pending) - 1)))
        pending.gate.set_result(behaviour)
        status, _, body = self.loop.run_until_complete(pending.task)
        self._settle()
        assert status == (_STATUS[behaviour] if behaviour != "unreachable" else 502)
        entry = self._live(pending.key)
        if entry is None or entry[0] != "lock" or entry[2] != pending.owner:
            return  # its lock expired (and maybe another took the key): nothing of it is kept
        if BEHAVIOURS[behaviour]:
            self.entries[pending.key] = ("done", pending.payload, status, body, self.clock.now + TTL)
        else:
            del self.entries[pending.key]

    @rule(seconds=st.sampled_from([1.0, 5.0, LOCK_TTL, TTL]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @invariant()
    def the_upstream_ran_what_the_model_allowed(self) -> None:
        assert self.transport.executions == self.expected_executions

    def teardown(self) -> None:
        for pending in self.pending:
            pending.gate.set_result("ok")
            self.loop.run_until_complete(pending.task)
        self._settle()
        self.loop.close()


IdempotencyMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_idempotency_state_machine = IdempotencyMachine.TestCase
