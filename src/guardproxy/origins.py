"""Web origins (RFC 6454 serialization) and the anchored patterns CORS configuration may use."""

from __future__ import annotations

import re

SERIALIZED_ORIGIN = re.compile(rb"(https?)://([a-z0-9.-]+|\[[0-9a-f:.]+\])(?::([0-9]{1,5}))?")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"


def compile_origin_pattern(pattern: str) -> re.Pattern[bytes] | bytes:
    """An exact origin (bytes), or for `scheme://*.domain[:port]` an anchored regex matching one
    or more labels below the domain, never the domain itself or anything that merely ends like it."""
    pattern = pattern.strip().lower().rstrip("/")
    scheme, sep, rest = pattern.partition("://")
    if "*" not in pattern:
        if pattern != "null" and not (sep and SERIALIZED_ORIGIN.fullmatch(pattern.encode("ascii"))):
            raise ValueError(f"not an origin (scheme://host[:port]): {pattern!r}")
        return pattern.encode("ascii")
    if not sep or scheme not in ("http", "https") or not rest.startswith("*.") or "*" in rest[2:]:
        raise ValueError(f"a pattern looks like https://*.example.com[:port], got {pattern!r}")
    domain = rest[2:]
    if not SERIALIZED_ORIGIN.fullmatch(f"{scheme}://{domain}".encode("ascii")):
        raise ValueError(f"not an origin pattern: {pattern!r}")
    return re.compile(f"{re.escape(scheme)}://(?:{_LABEL}\\.)+{re.escape(domain)}".encode("ascii"))
