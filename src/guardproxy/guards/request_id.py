"""Request IDs and W3C trace context (checklist items 2 and 3).

A well-formed incoming X-Request-ID is kept so IDs stay the same across services; anything else
is replaced, because the ID lands in logs and problem bodies and must be safe to print there.
A valid `traceparent` is continued with a new span id (guardproxy is a hop of its own); an
invalid or missing one is replaced by a fresh trace (W3C Trace Context §3.2, §4.3).
"""

from __future__ import annotations

import re
from binascii import hexlify
from typing import Final

from guardproxy.asgi import Headers, Scope
from guardproxy.context import RequestContext, new_request_id, random_bits
from guardproxy.guards.chain import Guard

REQUEST_ID_HEADER: Final = b"x-request-id"
_VALID_REQUEST_ID: Final = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
# version, a 32-hex trace id, a 16-hex parent id and 2 hex flags, lower case only; versions
# after 00 may append fields.
_TRACEPARENT: Final = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE_ID: Final = b"0" * 32
_ZERO_SPAN_ID: Final = b"0" * 16


def continue_trace(traceparent: bytes | None) -> tuple[bytes, bool]:
    """The traceparent to send upstream, and whether the incoming one was continued."""
    if traceparent is not None:
        match = _TRACEPARENT.fullmatch(traceparent.strip())
        if match is not None:
            version, trace_id, parent_id, flags, rest = match.groups()
            valid = (
                version != b"ff"
                and (version != b"00" or rest is None)
                and trace_id != _ZERO_TRACE_ID
                and parent_id != _ZERO_SPAN_ID
            )
            if valid:
                span_id = hexlify(random_bits(64).to_bytes(8))
                return b"00-%b-%b-%b" % (trace_id, span_id, flags), True
    # A new trace ID and span ID from one draw: 24 random bytes in hex, a "-" after the first 16
    # (hexlify is a third of "%x" formatting's cost, and this runs for most requests).
    return b"00-" + hexlify(random_bits(192).to_bytes(24), b"-", -16) + b"-00", False


class RequestIdGuard(Guard):
    def __init__(self, *, trust_incoming: bool) -> None:
        self.trust_incoming = trust_incoming

    def on_request(self, scope: Scope, context: RequestContext) -> None:
        incoming_ids = []
        traceparents = []
        tracestate = b""
        headers: Headers = scope["headers"]
        for name, value in headers:
            if name == REQUEST_ID_HEADER:
                incoming_ids.append(value)
            elif name == b"traceparent":
                traceparents.append(value)
            elif name == b"tracestate":
                tracestate = value if not tracestate else tracestate + b"," + value

        # Exactly one well-formed value, or the client does not get to choose.
        if self.trust_incoming and len(incoming_ids) == 1 and _VALID_REQUEST_ID.fullmatch(incoming_ids[0]):
            context.request_id = incoming_ids[0].decode("ascii")
        else:
            context.request_id = new_request_id()
        context.traceparent, continued = continue_trace(traceparents[0] if len(traceparents) == 1 else None)
        # tracestate belongs to the trace it came with; it means nothing for a fresh one.
        context.tracestate = tracestate if continued else b""

    def on_response_start(self, context: RequestContext, headers: Headers) -> None:
        # The upstream may echo the ID (or send its own); the client gets exactly one. Most do
        # not: the list is rebuilt only when there is one to drop.
        for name, _ in headers:
            if name == REQUEST_ID_HEADER:
                headers[:] = [field for field in headers if field[0] != REQUEST_ID_HEADER]
                break
        headers.append((REQUEST_ID_HEADER, context.request_id.encode("ascii")))
