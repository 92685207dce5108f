"""Header rewriting between client and upstream, kept free of I/O so each rule is unit-testable.

RFC 9110 §7.6.1: a proxy removes the hop-by-hop fields, including every field the `Connection`
header names, in both directions. §7.6.3: it adds `Via`.
"""

from __future__ import annotations

from typing import Final

from guardproxy.asgi import Headers

HOP_BY_HOP: Final = frozenset(
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
REWRITTEN_REQUEST_FIELDS: Final = frozenset(
    {
        b"host",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-real-ip",
        b"forwarded",
        b"x-request-id",
        b"traceparent",
        b"tracestate",
        b"expect",
    }
)

# Request fields that claim who the client is, or which scheme, host, port, prefix, URL or
# method it originally used: set by proxies and CDNs in front of an app, and believed by many
# frameworks (Rails, Spring, ASP.NET, Symfony, Express's trust proxy, IIS URL Rewrite). From a
# peer that is not a trusted proxy each is a client's own claim, so the forwarder removes them
# all (trusted_proxies.untrusted_strip) and then sets the ones guardproxy vouches for itself.
# A trailing `*` matches every name with that prefix: the whole X-Forwarded-* family, whatever
# an app reads from it (Port, Prefix, Server, Ssl, Uri, User, Email, Client-Cert, ...).
CLIENT_CLAIM_FIELDS: Final[tuple[str, ...]] = (
    "x-forwarded-*",
    "forwarded",
    "x-real-ip",
    "x-real-port",
    "true-client-ip",
    "x-client-ip",
    "client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "cf-connecting-ipv6",
    "fastly-client-ip",
    "akamai-client-ip",
    "x-azure-clientip",
    "x-azure-socketip",
    "x-appengine-user-ip",
    "x-envoy-external-address",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-proxyuser-ip",
    "remote-user",
    "x-remote-user",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-original-host",
    "x-host",
    "x-original-proto",
    "x-url-scheme",
    "x-scheme",
    "front-end-https",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
)

VIA: Final = b"1.1 guardproxy"
_CONNECTION_OPTIONS: Final = HOP_BY_HOP | {b"close", b""}
# The usual values, which name no field to remove.
PLAIN_CONNECTION: Final = frozenset({b"keep-alive", b"close"})


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
    if connection is not None and not (len(connection) == 1 and connection[0].lower() in PLAIN_CONNECTION):
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
_DROPPED_RESPONSE_FIELDS: Final[tuple[frozenset[bytes], ...]] = (HOP_BY_HOP, HOP_BY_HOP | {b"content-length"})


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


# RFC 9110 §6.5.1: fields whose evaluation is needed before the content, so a trailer carrying
# one is not honoured, and a client that merges trailers into the header section (§6.5.2 says
# it must not, some do) would be misled: framing, routing, request modifiers, authentication,
# response controls, content format, cookies, and the security fields guardproxy decides.
FORBIDDEN_TRAILER_FIELDS: Final = HOP_BY_HOP | frozenset(
    {
        b"content-length",
        b"content-encoding",
        b"content-type",
        b"content-range",
        b"content-location",
        b"content-language",
        b"trailer",
        b"host",
        b"location",
        b"authorization",
        b"proxy-authorization",
        b"www-authenticate",
        b"proxy-authenticate",
        b"authentication-info",
        b"proxy-authentication-info",
        b"set-cookie",
        b"cookie",
        b"cache-control",
        b"expires",
        b"age",
        b"date",
        b"pragma",
        b"vary",
        b"etag",
        b"last-modified",
        b"retry-after",
        b"range",
        b"expect",
        b"max-forwards",
        b"via",
        b"alt-svc",
        b"strict-transport-security",
        b"content-security-policy",
        b"content-security-policy-report-only",
        b"x-frame-options",
        b"x-content-type-options",
        b"referrer-policy",
        b"permissions-policy",
        b"cross-origin-resource-policy",
        b"cross-origin-opener-policy",
        b"cross-origin-embedder-policy",
        b"x-request-id",
    }
)


def trailer_fields(fields: Headers) -> Headers:
    """The trailer fields that may be passed on as trailers (see FORBIDDEN_TRAILER_FIELDS);
    CORS fields (`access-control-*`) are guardproxy's decision too."""
    return [
        field
        for field in fields
        if field[0] not in FORBIDDEN_TRAILER_FIELDS and not field[0].startswith(b"access-control-")
    ]
