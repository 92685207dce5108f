"""What a probe saw: one request as sent and the response (or failure) that came back.

Probes keep their I/O and their judgement apart: `gather` records `Exchange`s, `judge` decides
on them alone. Tests build `Exchange`s by hand to check every decision without a network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Enough of a body to find a stack trace or a reflected value; never the whole of a big one.
MAX_BODY_BYTES = 256 * 1024


@dataclass(frozen=True)
class Exchange:
    """One request and its outcome. `status` is None when no response head arrived; then
    `error` says why (timed out, refused, not HTTP...)."""

    request: str  # a short description of what was sent, shown as evidence
    status: int | None = None
    headers: tuple[tuple[str, str], ...] = ()  # names lower-cased, repeated fields kept
    body: bytes = b""  # the first MAX_BODY_BYTES, as they came over the wire
    error: str | None = None
    elapsed: float = 0.0  # seconds from sending to the end of the response (or the failure)
    closed: bool = False  # the server closed the connection (raw exchanges only)

    @property
    def answered(self) -> bool:
        return self.status is not None

    def values(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key == name]

    def header(self, name: str) -> str | None:
        """The field's value; repeated fields combined with ", " (RFC 9110 §5.3)."""
        values = self.values(name)
        return ", ".join(values) if values else None

    def tokens(self, name: str) -> set[str]:
        """A list-valued field (Vary, Cache-Control, Connection) as lower-case tokens."""
        value = self.header(name) or ""
        return {token.strip().lower().split("=", 1)[0] for token in value.split(",") if token.strip()}

    @property
    def media_type(self) -> str:
        return (self.header("content-type") or "").split(";", 1)[0].strip().lower()

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def outcome(self) -> str:
        """The status line or the failure, for evidence strings."""
        if self.status is None:
            return self.error or "no answer"
        return f"{self.status}"


def quote(value: str, limit: int = 80) -> str:
    """A header value or body excerpt safe and short enough for a report cell."""
    value = re.sub(r"\s+", " ", value).strip()
    value = "".join(char if char.isprintable() else "?" for char in value)
    return value if len(value) <= limit else value[: limit - 1] + "…"
