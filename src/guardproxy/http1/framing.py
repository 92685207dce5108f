"""Message framing (RFC 9112 §6, §7): status lines, chunked coding, and how a response body is
delimited. No I/O: callers write what these functions return."""

from __future__ import annotations

import http
from enum import Enum
from typing import Final

STATUS_LINES: Final = {
    status: b"HTTP/1.1 %d %s\r\n" % (status, http.HTTPStatus(status).phrase.encode("ascii"))
    for status in range(100, 600)
    if status in http.HTTPStatus._value2member_map_
}
# RFC 9110 §15.3.5, §15.4.5: never a body, whatever the fields say.
NO_BODY_STATUSES: Final = frozenset({204, 304})
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK: Final = b"0\r\n\r\n"
# The last chunk when a trailer section follows it: `0\r\n`, the fields, then `\r\n` (§7.1.2).
LAST_CHUNK_LINE: Final = b"0\r\n"


def status_line(status: int) -> bytes:
    """The status line; a status without a registered reason phrase gets an empty one
    (RFC 9112 §4: the reason phrase is optional)."""
    return STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (§7.1); empty data is no chunk at all, since a zero-size
    chunk would end the body."""
    return b"%x\r\n%b\r\n" % (len(data), data) if data else b""


class BodyFraming(Enum):
    """How the end of a response body is known to the client (RFC 9112 §6.3)."""

    NONE = "none"  # HEAD, 1xx, 204, 304: the head is the whole response
    LENGTH = "length"  # Content-Length
    CHUNKED = "chunked"  # Transfer-Encoding: chunked, HTTP/1.1 clients only
    CLOSE = "close"  # the connection closing ends it: HTTP/1.0 clients without a length


# As module constants: an enum member read through its class costs ~10x a global on CPython 3.11
# (Final, so the compiled build reads them from C statics, not the module's dict).
NO_BODY: Final = BodyFraming.NONE
LENGTH: Final = BodyFraming.LENGTH
CHUNKED: Final = BodyFraming.CHUNKED
CLOSE_DELIMITED: Final = BodyFraming.CLOSE


def response_framing(method: str, status: int, http_version: str, content_length: int | None) -> BodyFraming:
    if method == "HEAD" or status in NO_BODY_STATUSES or status < 200:
        return NO_BODY
    if content_length is not None:
        return LENGTH
    if http_version == "1.1":
        return CHUNKED
    return CLOSE_DELIMITED
