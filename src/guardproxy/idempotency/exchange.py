"""One keyed request on its way through guards/idempotency.py: its body held back and hashed, the
lock it took, the response it captures for replay, and what becomes of the key at the end."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import structlog

from guardproxy import problems
from guardproxy.answer import Answer
from guardproxy.asgi import ASGIApp, Headers, Message, Receive, Scope, Send
from guardproxy.context import RequestContext
from guardproxy.idempotency.keys import MalformedKeyError, fingerprint_of, identity, parse_key, store_key
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
from guardproxy.outcomes import Outcome

log = structlog.get_logger(component="guardproxy.idempotency")

_TOO_LARGE = "The request body is larger than this endpoint accepts."


class KeyedGuard(Protocol):
    """What a keyed exchange needs of its guard (guards/idempotency.py IdempotencyGuard)."""

    ledger: Ledger
    key_prefix: str
    key_parts: tuple[str | bytes, ...]
    ttl_ms: int
    lock_ttl_ms: int
    max_response_bytes: int
    key_max_length: int
    refuse_on_failure: bool
    count_decision: Callable[[str, str], None]
    count_result: Callable[[str, str], None]

    def refuse(
        self, scope: Scope, context: RequestContext, decision: str, problem: problems.ProblemType, detail: str | None
    ) -> Answer: ...

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None: ...


class ClientGoneError(OSError):
    """The client left (or its body stalled) before its request body was complete."""


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


class KeyedExchange:
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

    def __init__(self, guard: KeyedGuard, scope: Scope, context: RequestContext, fields: list[bytes]) -> None:
        self.guard = guard
        self.scope = scope
        self.context = context
        self.fields = fields
        self.raw_receive: Receive | None = None
        self.wire_send: Send | None = None
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

    async def run(self, app: ASGIApp, receive: Receive, send: Send) -> None:
        self.raw_receive, self.wire_send = receive, send
        answer = self._check_key()
        if answer is None:
            answer = await self._begin()
            if answer is not None:
                # Read here and never forwarded: the forwarder would have counted it for the logs.
                self.context.request_bytes += self.body_size
        if answer is not None:
            await answer.send(send)
            return
        if self.lock is None:  # the store failed and fail_mode is pass: forwarded unprotected
            await app(self.scope, self.receive, send)
            return
        try:
            await app(self.scope, self.receive, self.send)
        finally:
            # Whatever ended it (an upstream failure mid-body, the total timeout, a shutdown),
            # a lock not swapped for a response is released.
            if not self.settled:
                self.settle()

    # --- the request side ----------------------------------------------------------------------------

    def _check_key(self) -> Answer | None:
        guard, scope, context = self.guard, self.scope, self.context
        if not self.fields:
            return guard.refuse(scope, context, "missing_key", problems.IDEMPOTENCY_KEY_MISSING, None)
        try:
            key = parse_key(self.fields, guard.key_max_length)
        except MalformedKeyError as exc:
            return guard.refuse(scope, context, "malformed_key", problems.IDEMPOTENCY_KEY_MALFORMED, str(exc))
        self.store_key = store_key(
            guard.key_prefix, identity(guard.key_parts, scope, context), scope["method"], scope["path"], key
        )
        return None

    async def receive(self) -> Message:
        body, self.body = self.body, None
        if body is not None:
            return {"type": "http.request", "body": body, "more_body": False}
        assert self.raw_receive is not None
        return await self.raw_receive()

    async def _read_body(self) -> Answer | None:
        """The whole body, hashed as it arrives and kept to hand on: an Answer if it is too large.
        The body limit guard's wrapper already sits in `receive` and refuses first; this check
        keeps the promise whatever the chain holds."""
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
                self.context.outcome = Outcome.TOO_LARGE
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

    async def _begin(self) -> Answer | None:
        too_large = await self._read_body()
        if too_large is not None:
            return too_large
        guard, scope, context = self.guard, self.scope, self.context
        lock = new_lock(self.fingerprint)
        try:
            found = await guard.ledger.acquire(self.store_key, lock, guard.lock_ttl_ms)
            verdict, stored = decide(found[0] if found is not None else None, self.fingerprint)
        except (StoreUnavailableError, CorruptEntryError) as exc:
            return self._store_failed(exc)
        route = context.route.name
        if verdict is Verdict.PROCEED:
            self.lock = lock
            guard.count_decision(route, "executed")
            return None
        if verdict is Verdict.REPLAY:
            assert stored is not None
            context.outcome = Outcome.IDEMPOTENT_REPLAY
            guard.count_decision(route, "replayed")
            return Answer(stored.status, replay_headers(stored), stored.body)
        if verdict is Verdict.CONFLICT:
            context.outcome = Outcome.IDEMPOTENCY_CONFLICT
            guard.count_decision(route, "conflict")
            audit(scope, context, "conflict")
            # The first request usually finishes within a second; its lock is only the worst
            # case, after a crash.
            return Answer.problem(
                scope,
                problems.IDEMPOTENCY_CONFLICT,
                "A request with this Idempotency-Key is still being processed; retry later.",
                [(b"retry-after", b"1")],
            )
        context.outcome = Outcome.IDEMPOTENCY_MISMATCH
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
            context.outcome = Outcome.IDEMPOTENCY_UNAVAILABLE
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
        if self.settled:
            await self._relay(message)
            return
        if message["type"] == "http.response.start":
            self.status = message["status"]
            # The upstream's own head, before the chain's response hooks add guardproxy's
            # per-response fields (they mutate this list once it is sent on): a replay gets
            # those afresh, as every Answer does.
            self.head = list(message["headers"])
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
        assert self.wire_send is not None
        try:
            await self.wire_send(message)
        except OSError:
            if self.settled or not self._storable_so_far():
                raise
            # Keep reading the upstream's answer for the retry that will come.
            self.client_gone = True
            self.context.outcome = Outcome.CLIENT_CLOSED

    def _storable_so_far(self) -> bool:
        return (
            disposition(self.status, from_upstream=self.from_upstream, complete=True, too_large=self.too_large)
            is Disposition.STORED
        )

    def _disposition(self) -> Disposition:
        return disposition(
            self.status, from_upstream=self.from_upstream, complete=self.complete, too_large=self.too_large
        )

    async def _store(self) -> None:
        """The response is complete: store it (or release the key) before its last chunk goes out."""
        verdict = self._disposition()
        if verdict is not Disposition.STORED:
            self.settle(verdict)
            return
        self.settled = True
        guard, lock, context = self.guard, self.lock, self.context
        assert lock is not None
        record = encode_done(self.fingerprint, StoredResponse(self.status, self.head, b"".join(self.chunks)))
        self.chunks = []
        stored = await guard.ledger.complete(self.store_key, lock, record, guard.ttl_ms)
        if stored is None:
            result = Disposition.STORE_FAILED
            log.warning(
                "idempotency store failed to keep a response: its lock expires by itself",
                request_id=context.request_id,
                route=context.route.name,
            )
        elif not stored:
            result = Disposition.LOCK_LOST
            log.warning(
                "idempotency lock expired before the response was complete: not stored",
                request_id=context.request_id,
                route=context.route.name,
            )
        else:
            result = Disposition.STORED
        guard.count_result(context.route.name, result.value)

    def settle(self, verdict: Disposition | None = None) -> None:
        """Not stored: release the key (in the background) so that a retry can succeed."""
        self.settled = True
        verdict = verdict or self._disposition()
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
