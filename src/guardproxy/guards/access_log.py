"""The access log: exactly one JSON line per request (checklist items 4, 5, 6, 42).

Written by a guard's `on_complete`, so every request is logged whoever answered it: the
upstream, a guard's refusal, a problem, the server's own refusals. Lines are built with orjson
and copied into the log sink's buffer (no structlog pipeline per request: this is on the hot
path); the sink writes them in blocks, and the guard's close flushes it. Requests that a guard
refused for a security reason also get an audit line of their own.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Final

import orjson

from guardproxy.asgi import Headers, Scope
from guardproxy.context import RequestContext
from guardproxy.guards.chain import Guard
from guardproxy.observability.access_log import Clock, redact_query
from guardproxy.observability.sink import LogSink
from guardproxy.outcomes import SECURITY_OUTCOMES

_NEWLINE: Final = orjson.OPT_APPEND_NEWLINE
_dumps: Final = orjson.dumps  # bound once: it runs for every request


class AccessLogGuard(Guard):
    def __init__(self, *, sink: LogSink, redact_query_params: Iterable[str]) -> None:
        self.sink = sink  # a native class in the compiled build: its write is a direct C call
        self.sensitive = frozenset(name.lower().encode("latin-1") for name in redact_query_params)
        self.clock = Clock()
        # One record, its values replaced for each request: storing 18 values into a dict that
        # exists costs about a third of building and freeing a new one. Safe because on_complete
        # runs on the event loop and does not wait. The keys keep the order of their first
        # store (the constant ones first), and so the line its shape.
        self._record: dict[str, object] = {"timestamp": "", "level": "info", "event": "request"}

    async def aclose(self) -> None:
        # The chain closes its guards at a reload too, while the process's sink keeps serving the
        # new runtime: write what is buffered, give nothing up. At shutdown the worker closes the
        # sink itself (server/process.py), waiting for a slow consumer.
        self.sink.settle()

    def on_complete(self, scope: Scope, context: RequestContext) -> None:
        user_agent = ""
        headers: Headers = scope["headers"]
        for name, value in headers:
            if name == b"user-agent":
                user_agent = value.decode("latin-1")
                break
        query = scope["query_string"]
        timestamp = self.clock.now()
        upstream_seconds = context.upstream_seconds
        record = self._record
        record["timestamp"] = timestamp
        record["request_id"] = context.request_id
        record["trace_id"] = context.traceparent[3:35].decode()  # hex digits; the default codec is the fast one
        record["client"] = context.client_host
        record["method"] = scope["method"]
        record["route"] = context.route.name
        record["path"] = scope["path"]
        record["query"] = redact_query(query, self.sensitive) if query else ""
        record["status"] = context.status
        record["outcome"] = context.outcome
        record["request_bytes"] = context.request_bytes
        record["response_bytes"] = context.response_bytes
        # Whole microseconds, in milliseconds: int() is cheaper than round(x, 3) per request.
        record["duration_ms"] = int((time.perf_counter() - context.started_at) * 1_000_000) / 1000
        record["upstream_ms"] = int(upstream_seconds * 1_000_000) / 1000 if upstream_seconds else None
        record["attempts"] = context.upstream_attempts
        record["endpoint"] = context.upstream_endpoint or None
        record["user_agent"] = user_agent
        record["subject"] = context.subject
        self.sink.write(_dumps(record, option=_NEWLINE))
        if context.outcome in SECURITY_OUTCOMES:
            self.sink.write(
                _dumps(
                    {
                        "timestamp": timestamp,
                        "level": "warning",
                        "event": "security_event",
                        "kind": context.outcome,
                        "request_id": context.request_id,
                        "client": context.client_host,
                        "method": scope["method"],
                        "route": context.route.name,
                        "path": scope["path"],
                        "status": context.status,
                    },
                    option=_NEWLINE,
                )
            )
