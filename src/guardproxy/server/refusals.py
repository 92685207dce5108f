"""What can be said of a request the server refused before it was whole: the reason the parser
gave, and a scope with its method and path when the request line got that far (for the access
log, the metrics' route and the problem's `instance`)."""

from __future__ import annotations

from typing import Any

import httptools

from guardproxy import problems
from guardproxy.answer import RefusedError
from guardproxy.outcomes import Outcome
from guardproxy.server.limits import ConnectionLimits


def coding_refusal(value: bytes) -> RefusedError:
    """The answer to a Transfer-Encoding other than exactly `chunked`."""
    codings = [coding.strip() for coding in value.lower().split(b",")]
    if codings[-1] == b"chunked":
        # Valid HTTP (RFC 9112 §6.1) but a coding under chunked that guardproxy does not
        # decode; §6.1 says 501.
        return RefusedError(
            problems.NOT_IMPLEMENTED, "Only the 'chunked' transfer coding is supported.", Outcome.UNSUPPORTED_CODING
        )
    return RefusedError(problems.BAD_REQUEST, "Invalid Transfer-Encoding.", Outcome.MALFORMED)


def parser_detail(exc: httptools.HttpParserError) -> str:
    # llhttp's reasons are fixed strings about the request's own bytes ("Invalid character in
    # Content-Length"): safe and useful to the client that sent them.
    reason = str(exc).strip()
    if isinstance(exc, httptools.HttpParserCallbackError) or not reason:
        return "The request is not valid HTTP/1.1."
    return f"The request is not valid HTTP/1.1: {reason}."


def refused_scope(
    parser: httptools.HttpRequestParser,
    url: bytes,
    limits: ConnectionLimits,
    *,
    peers: tuple[tuple[str, int] | None, tuple[str, int] | None],
    scheme: str,
) -> dict[str, Any]:
    """No header is kept: none of them has been vouched for, and no request hook will run."""
    method, path = "-", ""
    if url and len(url) <= limits.max_uri_bytes:
        # The URL callback has fired, so the method before it was parsed.
        method = parser.get_method().decode("latin-1")
        try:
            path = httptools.parse_url(url).path.decode("latin-1")
        except httptools.HttpParserInvalidURLError:
            path = ""
    client, server = peers
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "server": server,
        "client": client,
        "scheme": scheme,
        "method": method,
        "root_path": "",
        "path": path,
        "raw_path": path.encode("latin-1"),
        "query_string": b"",
        "headers": [],
    }
