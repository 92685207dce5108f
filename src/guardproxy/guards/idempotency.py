"""Idempotency-Key for unsafe requests (checklist item 39, draft-ietf-httpapi-idempotency-key-header).

On a route that opts in, a request carrying `Idempotency-Key` is answered at most once by the
upstream per (client, method, path, key): the first takes a lock and is forwarded; a repeat while
it runs gets 409, a repeat after it gets the stored response replayed (`Idempotent-Replayed:
true`) without reaching the upstream, a repeat with another method/target/body gets 422. The
state machine is guardproxy.idempotency.records; this module puts it on the wire.

Why the body is read before forwarding: a repeat can only be told from a new request by its
fingerprint, and the fingerprint covers the body, so the decision needs the whole body before
anything goes upstream. The body is hashed chunk by chunk as it arrives and held (bounded by the
route's body limit, which is what the upstream would have to accept anyway), then handed on
unchanged. Only requests that carry a key on an enabled route pay for it.

Why the response is stored before its last chunk goes out: a client that has the response and
sends its next retry at once must meet the replay, never a 409 from a store write still on its
way. A client that leaves mid-response does not lose the result either: the rest of the response
is still read and stored (up to max_response_bytes), so its retry gets the replay.

Only a complete, final answer of the upstream itself is stored (see records.disposition); else
the key is released so that a retry can succeed. The lock expires after lock_ttl whatever
happens to this worker. A store that fails is counted and logged, and fail_mode decides:
`pass` forwards without protection, `refuse` answers 503. Never a 500.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from guardproxy import problems
from guardproxy.answer import Answer
from guardproxy.asgi import Headers, Message, Receive, Scope, Send
from guardproxy.context import RequestContext
from guardproxy.guards.chain import Guard
from guardproxy.idempotency.keys import MalformedKeyError, fingerprint_of, identity, key_fields, parse_key, store_key
from guardproxy.idempotency.ledger import Ledger, StoreUnavailableError
from guardproxy.idempotency.records import (
    CorruptEntryError,
    Disposition,
    StoredResponse,
    Verdict,
    decide,
    disposition,
    encode_done,
    new_lock,
    replay_headers,
)

log = structlog.get_logger(component="guardproxy.idempotency")

_STATE = "guardproxy.idempotency"
_TOO_LARGE = "The request body is larger than this endpoint accepts."
# Decision labels for metrics: a small fixed set.
DECISIONS = ("executed", "replayed", "conflict", "mismatch", "missing_key", "malformed_key", "unprotected", "refused")
RESULTS = tuple(d.value for d in Disposition)


@dataclass(frozen=True, slots=True)
class IdempotencyPolicy:
    methods: frozenset[str]
    required: bool


class ClientGoneError(OSError):
    """The client left (or its body stalled) before its request body was complete."""


class IdempotencyGuard(Guard):
    def __init__(
        self,
        *,
        policies: Mapping[str, IdempotencyPolicy],
        ledger: Ledger,
        key_prefix: str,
        key_parts: Sequence[str],
        ttl: float,
        lock_ttl: float,
        max_response_bytes: int,
        key_max_length: int,
        fail_mode: str,
        count_decision: Callable[[str, str], None] = lambda route, decision: None,
        count_result: Callable[[str, str], None] = lambda route, result: None,
    ) -> None:
        self._policies = dict(policies)
        self.ledger = ledger
        self.key_prefix = key_prefix
        self.key_parts: tuple[str | bytes, ...] = tuple(
            part.removeprefix("header:").lower().encode() if part.startswith("header:") else part for part in key_parts
        )
        self.ttl_ms = math.ceil(ttl * 1000)
        self.lock_ttl_ms = math.ceil(lock_ttl * 1000)
        self.max_response_bytes = max_response_bytes
        self.key_max_length = key_max_length
        self.refuse_on_failure = fail_mode == "refuse"
        self.count_decision = count_decision
        self.count_result = count_result
        self._tasks: set[asyncio.Task[None]] = set()
        # Exchanges holding a lock, by their context's id, for on_response_start (which gets no
        # scope). An entry lives from the lock until the request settles: bounded by the
        # requests in flight.
        self.locked: dict[int, _Exchange] = {}

    async def start(self) -> None:
        await self.ledger.store.start()

    async def aclose(self) -> None:
        # Releases still on their way: they are quick, and a lock left behind expires anyway.
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.ledger.timeout * 2)
        await self.ledger.store.aclose()

    # --- the hooks ---------------------------------------------------------------------------------
    # The chain calls wrap_send first, so that is where a request is sorted: on a route without
    # idempotency, or without a key where none is required, it costs one dict lookup here and a
    # scope lookup in each other hook.

    def wrap_send(self, scope: Scope, context: RequestContext, send: Send) -> Send:
        policy = self._policies.get(context.route.name)
        if policy is None or scope["method"] not in policy.methods:
            return send
        fields = key_fields(scope)
        if not fields and not policy.required:
            return send
        exchange = _Exchange(self, scope, context, send, fields)
        scope[_STATE] = exchange
        return exchange.send

    def wrap_receive(self, scope: Scope, context: RequestContext, receive: Receive) -> Receive:
        exchange: _Exchange | None = scope.get(_STATE)
        if exchange is None:
            return receive
        exchange.raw_receive = receive
        return exchange.receive

    def on_request(self, scope: Scope, context: RequestContext) -> Answer | None:
        # Syntax is free to check: a 400 comes before any wait (the rate limit's, the store's).
        exchange: _Exchange | None = scope.get(_STATE)
        if exchange is None:
            return None
        if not exchange.fields:
            return self._refuse(scope, context, "missing_key", problems.IDEMPOTENCY_KEY_MISSING, None)
        try:
            exchange.key = parse_key(exchange.fields, self.key_max_length)
        except MalformedKeyError as exc:
            return self._refuse(scope, context, "malformed_key", problems.IDEMPOTENCY_KEY_MALFORMED, str(exc))
        return None

    async def on_request_async(self, scope: Scope, context: RequestContext) -> Answer | None:
        exchange: _Exchange | None = scope.get(_STATE)
        if exchange is None or exchange.key is None:
            return None
        return await exchange.begin()

    def on_response_start(self, context: RequestContext, headers: Headers) -> None:
        # This guard sits after every guard that adds response headers, so its hook runs first:
        # what it copies is the upstream's head, without the fields guardproxy adds per response.
        # A replay gets those added afresh, as every Answer does.
        exchange = self.locked.get(id(context))
        if exchange is not None:
            exchange.head = list(headers)

    def on_complete(self, scope: Scope, context: RequestContext) -> None:
        exchange: _Exchange | None = scope.get(_STATE)
        if exchange is None or exchange.lock is None or exchange.settled:
            return
        exchange.settle()

    # --- helpers -----------------------------------------------------------------------------------

    def _refuse(
        self, scope: Scope, context: RequestContext, decision: str, problem: problems.ProblemType, detail: str | None
    ) -> Answer:
        context.outcome = "idempotency_" + decision
        self.count_decision(context.route.name, decision)
        audit(scope, context, decision)
        return Answer.problem(
            scope, problem, detail or "This endpoint requires an Idempotency-Key header for this method."
        )

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def audit(scope: Scope, context: RequestContext, kind: str) -> None:
    """An audit line in the access log's security_event shape."""
    log.warning(
        "security_event",
        kind="idempotency_" + kind,
        request_id=context.request_id,
        client=context.client_host,
        method=scope["method"],
        route=context.route.name,
        path=scope["path"],
    )


class _Exchange:
    """One keyed request on its way: the body it held back, the lock it took, and the response it
    is capturing."""

    __slots__ = (
        "body",
        "body_size",
        "chunks",
        "client_gone",
        "complete",
        "context",
        "fields",
        "fingerprint",
        "from_upstream",
        "guard",
        "head",
        "key",
        "lock",
        "raw_receive",
        "scope",
        "settled",
        "size",
        "status",
        "store_key",
        "too_large",
        "wire_send",
    )

    def __init__(self, guard: IdempotencyGuard, scope: Scope, context: RequestContext, send: Send, fields: list[bytes]):
        self.guard = guard
        self.scope = scope
        self.context = context
        self.wire_send = send
        self.raw_receive: Receive | None = None
        self.fields = fields
        self.key: bytes | None = None
        self.body: bytes | None = None
        self.body_size = 0
        self.fingerprint = b""
        self.store_key = ""
        self.lock: bytes | None = None
        self.head: Headers = []
        self.status = 0
        self.chunks: list[bytes] = []
        self.size = 0
        self.too_large = False
        self.complete = False
        self.from_upstream = False
        self.client_gone = False
        self.settled = False

    # --- the request side ----------------------------------------------------------------------------

    async def receive(self) -> Message:
        body, self.body = self.body, None
        if body is not None:
            return {"type": "http.request", "body": body, "more_body": False}
        assert self.raw_receive is not None
        return await self.raw_receive()

    async def _read_body(self) -> Answer | None:
        """The whole body, hashed as it arrives and kept to hand on: an Answer if it is too large."""
        assert self.raw_receive is not None
        digest = fingerprint_of(self.scope)
        limit = self.context.route.max_body_bytes
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.raw_receive()
            if message["type"] == "http.disconnect":
                raise ClientGoneError("client left before its request body was complete")
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                # The body limit guard wraps what the forwarder reads; what is read here must
                # keep the same promise.
                self.context.outcome = "too_large"
                return Answer.problem(self.scope, problems.CONTENT_TOO_LARGE, _TOO_LARGE)
            if chunk:
                digest.update(chunk)
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        self.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.body_size = size
        self.fingerprint = digest.digest()
        return None

    async def begin(self) -> Answer | None:
        answer = await self._decide()
        if answer is not None:
            # Read here and never forwarded: the forwarder would have counted it for the logs.
            self.context.request_bytes += self.body_size
        return answer

    async def _decide(self) -> Answer | None:
        too_large = await self._read_body()
        if too_large is not None:
            return too_large
        guard, scope, context = self.guard, self.scope, self.context
        assert self.key is not None
        self.store_key = store_key(
            guard.key_prefix, identity(guard.key_parts, scope, context), scope["method"], scope["path"], self.key
        )
        lock = new_lock(self.fingerprint)
        try:
            found = await guard.ledger.acquire(self.store_key, lock, guard.lock_ttl_ms)
            verdict, stored = decide(found[0] if found is not None else None, self.fingerprint)
        except (StoreUnavailableError, CorruptEntryError) as exc:
            return self._store_failed(exc)
        route = context.route.name
        if verdict is Verdict.PROCEED:
            self.lock = lock
            guard.locked[id(context)] = self
            guard.count_decision(route, "executed")
            return None
        if verdict is Verdict.REPLAY:
            assert stored is not None
            context.outcome = "idempotent_replay"
            guard.count_decision(route, "replayed")
            return Answer(stored.status, replay_headers(stored.headers, len(stored.body)), stored.body)
        if verdict is Verdict.CONFLICT:
            assert found is not None
            context.outcome = "idempotency_conflict"
            guard.count_decision(route, "conflict")
            audit(scope, context, "conflict")
            # The first request usually finishes within a second; its lock (found[1] ms left)
            # is only the worst case, after a crash.
            return Answer.problem(
                scope,
                problems.IDEMPOTENCY_CONFLICT,
                "A request with this Idempotency-Key is still being processed; retry later.",
                [(b"retry-after", b"1")],
            )
        context.outcome = "idempotency_mismatch"
        guard.count_decision(route, "mismatch")
        audit(scope, context, "mismatch")
        return Answer.problem(
            scope,
            problems.IDEMPOTENCY_MISMATCH,
            "This Idempotency-Key was already used for a different request.",
        )

    def _store_failed(self, exc: Exception) -> Answer | None:
        guard, context = self.guard, self.context
        route = context.route.name
        if isinstance(exc, CorruptEntryError):
            guard.ledger.count_error("corrupt")
        if guard.refuse_on_failure:
            context.outcome = "idempotency_unavailable"
            guard.count_decision(route, "refused")
            log.warning("idempotency store unavailable: request refused", request_id=context.request_id, route=route)
            return Answer.problem(
                self.scope,
                problems.IDEMPOTENCY_UNAVAILABLE,
                "Duplicate protection is unavailable right now; retry shortly.",
                [(b"retry-after", b"1")],
            )
        guard.count_decision(route, "unprotected")
        log.warning(
            "idempotency store unavailable: forwarded without duplicate protection",
            request_id=context.request_id,
            route=route,
        )
        return None

    # --- the response side ---------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        if self.lock is None or self.settled:
            if not self.client_gone:
                await self.wire_send(message)
            return
        if message["type"] == "http.response.start":
            self.status = message["status"]
            # The forwarder notes the upstream's time to answer just before relaying its head;
            # guardproxy's own answers (502/503/504) leave it at zero.
            self.from_upstream = self.context.upstream_seconds > 0
            await self._relay(message)
            return
        body: bytes = message.get("body", b"")
        if not self.too_large:
            self.size += len(body)
            if self.size > self.guard.max_response_bytes:
                self.too_large = True
                self.chunks = []
            elif body:
                self.chunks.append(body)
        if not message.get("more_body", False):
            self.complete = True
            await self._store()
        elif self.client_gone and self.too_large:
            raise ClientGoneError("client left and the response is too large to keep")
        await self._relay(message)

    async def _relay(self, message: Message) -> None:
        if self.client_gone:
            return
        try:
            await self.wire_send(message)
        except OSError:
            if not self._storable_so_far():
                raise
            # Keep reading the upstream's answer for the retry that will come.
            self.client_gone = True
            self.context.outcome = "client_closed"

    def _storable_so_far(self) -> bool:
        return (
            disposition(self.status, from_upstream=self.from_upstream, complete=True, too_large=self.too_large)
            is Disposition.STORED
        )

    async def _store(self) -> None:
        """The response is complete: store it (or release the key) before its last chunk goes out."""
        verdict = disposition(
            self.status, from_upstream=self.from_upstream, complete=self.complete, too_large=self.too_large
        )
        if verdict is not Disposition.STORED:
            self.settle(verdict)
            return
        self.settled = True
        self.guard.locked.pop(id(self.context), None)
        guard, lock = self.guard, self.lock
        assert lock is not None
        record = encode_done(self.fingerprint, StoredResponse(self.status, self.head, b"".join(self.chunks)))
        stored = await guard.ledger.complete(self.store_key, lock, record, guard.ttl_ms)
        if stored is None:
            result = Disposition.STORE_FAILED
            log.warning(
                "idempotency store failed to keep a response: its lock expires by itself",
                request_id=self.context.request_id,
                route=self.context.route.name,
            )
        elif not stored:
            result = Disposition.LOCK_LOST
            log.warning(
                "idempotency lock expired before the response was complete: not stored",
                request_id=self.context.request_id,
                route=self.context.route.name,
            )
        else:
            result = Disposition.STORED
        guard.count_result(self.context.route.name, result.value)

    def settle(self, verdict: Disposition | None = None) -> None:
        """Not stored: release the key (in the background) so that a retry can succeed."""
        self.settled = True
        self.guard.locked.pop(id(self.context), None)
        if verdict is None:
            verdict = disposition(
                self.status, from_upstream=self.from_upstream, complete=self.complete, too_large=self.too_large
            )
        guard, context = self.guard, self.context
        guard.count_result(context.route.name, verdict.value)
        if verdict is Disposition.TOO_LARGE:
            log.warning(
                "response too large to store for replay: forwarded, key released",
                request_id=context.request_id,
                route=context.route.name,
                max_response_bytes=guard.max_response_bytes,
            )
        self.chunks = []
        assert self.lock is not None
        guard.spawn(guard.ledger.release(self.store_key, self.lock))
