"""Header rewriting between client and upstream, kept free of I/O so each rule is unit-testable.

RFC 9110 §7.6.1: a proxy removes the hop-by-hop fields, including every field the `Connection`
header names, in both directions. §7.6.3: it adds `Via`.
"""

from __future__ import annotations

from guardproxy.asgi import Headers

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"http2-settings",
    }
)

# Fields guardproxy decides itself for the upstream; whatever the client sent under these names
# is dropped. `expect` because guardproxy answers 100-continue on its own side.
REWRITTEN_REQUEST_FIELDS = frozenset(
    {
        b"host",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"forwarded",
        b"x-request-id",
        b"traceparent",
        b"tracestate",
        b"expect",
    }
)

VIA = b"1.1 guardproxy"
_CONNECTION_OPTIONS = HOP_BY_HOP | {b"close", b""}
# The usual values, which name no field to remove.
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close"})


def end_to_end(headers: Headers, drop: frozenset[bytes]) -> Headers:
    """The headers a proxy may pass on: none named in `drop` (which holds the hop-by-hop names)
    and none that a `Connection` field names."""
    # One pass; the fields a `Connection` header names are removed afterwards, and only when it
    # names more than the usual `keep-alive` / `close` (the common case costs no second pass).
    kept: Headers = []
    connection: list[bytes] | None = None
    for field in headers:
        name = field[0]
        if name == b"connection":
            if connection is None:
                connection = [field[1]]
            else:
                connection.append(field[1])
        if name not in drop:
            kept.append(field)
    if connection is not None and not (len(connection) == 1 and connection[0].lower() in _PLAIN_CONNECTION):
        named = {token.strip().lower() for value in connection for token in value.split(b",")}
        named -= _CONNECTION_OPTIONS
        if named:
            kept = [field for field in kept if field[0] not in named]
    return kept


def strip_response_headers(headers: Headers, status: int) -> Headers:
    kept = end_to_end(headers, _DROPPED_RESPONSE_FIELDS[status in (204, 304)])
    kept.append((b"via", VIA))
    return kept


# 204 has no content at all; a 304's Content-Length describes a body it does not carry, and
# relaying it would make the client wait for bytes that never come.
_DROPPED_RESPONSE_FIELDS = (HOP_BY_HOP, HOP_BY_HOP | {b"content-length"})


def merge_vary(headers: Headers, field: bytes) -> None:
    """Add `field` to Vary, unless the upstream already varies on it (or on everything)."""
    for index, (name, value) in enumerate(headers):
        if name == b"vary":
            tokens = {token.strip().lower() for token in value.split(b",")}
            if field in tokens or b"*" in tokens:
                return
            headers[index] = (name, value + b", " + field)
            return
    headers.append((b"vary", field))
