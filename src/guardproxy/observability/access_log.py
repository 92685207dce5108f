"""What the access log's lines are made of (guards/access_log.py writes them): the query string
with sensitive values redacted, and timestamps cheap enough to take once per request.

Nothing secret is logged: no header values except User-Agent, and the values of sensitive
query parameters (token, password, ...) are replaced before the query reaches the line.
"""

from __future__ import annotations

import time
from typing import Final

REDACTED: Final = b"[REDACTED]"


def redact_query(query: bytes, sensitive: frozenset[bytes]) -> str:
    """The query string with the values of sensitive parameters replaced (names compared
    case-insensitively, after percent-decoding the usual suspects' spelling is not attempted:
    a parameter named `%74oken` stays as sent, and so does its value)."""
    if not query:
        return ""
    parts = []
    for pair in query.split(b"&"):
        name, sep, _ = pair.partition(b"=")
        parts.append(name + b"=" + REDACTED if sep and name.lower() in sensitive else pair)
    return b"&".join(parts).decode("latin-1")


class Clock:
    """ISO 8601 UTC timestamps; the formatting of the seconds part is cached per second."""

    def __init__(self) -> None:
        self._second_ns = 0  # the cached second, in ns since the epoch
        self._next_ns = 0  # where the next second begins: the cached prefix is stale from there
        self._prefix = ""

    def now(self) -> str:
        ns = time.time_ns()
        # Comparisons and one subtraction, not a division of the 61-bit nanosecond count per
        # request (a clock stepped back also recomputes, so the fraction is never negative).
        if ns >= self._next_ns or ns < self._second_ns:
            second = ns // 1_000_000_000
            self._second_ns = second * 1_000_000_000
            self._next_ns = self._second_ns + 1_000_000_000
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        # Zero-padded to six digits, cheaper than a format spec; one f-string, one new str.
        return f"{self._prefix}{str(1_000_000 + (ns - self._second_ns) // 1000)[1:]}Z"
