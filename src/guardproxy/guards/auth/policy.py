"""What a route's authentication policy says about a verified token, with no I/O: the scopes and
claim matchers it requires, and the identity headers it sends upstream (guards/auth/guard.py
applies it)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from guardproxy.guards.auth.jwt_provider import TokenVerifier, Verified

# Results besides the JWT ones (jwt_provider), for metrics.
INSUFFICIENT_SCOPE: Final = "insufficient_scope"
CLAIM_MISMATCH: Final = "claim_mismatch"
_MAX_HEADER_VALUE: Final = 4096
# Bytes a claim's header value never carries as they are: controls, non-ASCII, and `%` itself.
_UNSAFE_IN_HEADER: Final = re.compile(rb"[^\x20-\x24\x26-\x7e]")


@dataclass(frozen=True, slots=True)
class AuthPolicy:
    """One route's authentication, compiled once."""

    mode: str
    verifiers: tuple[TokenVerifier, ...]
    api_keys: bool
    forward: bool
    scopes: frozenset[str]
    claims: tuple[tuple[str, frozenset[tuple[type, object]]], ...]
    claim_headers: tuple[tuple[str, bytes], ...]
    forward_credentials: bool


def header_value(value: object) -> bytes | None:
    """A claim as a header value: strings as they are, numbers and booleans in JSON spelling,
    lists comma-joined, objects as JSON. Bytes outside printable ASCII (and `%`, and a comma
    inside a list item) are percent-encoded, so no claim can inject a header line or smuggle
    non-ASCII into one."""
    if value is None:
        return None
    if isinstance(value, list):
        items = [header_value(item) for item in value]
        return b",".join(item.replace(b",", b"%2C") for item in items if item is not None)
    raw = value.encode() if isinstance(value, str) else orjson.dumps(value)
    if _UNSAFE_IN_HEADER.search(raw) is not None:
        raw = _UNSAFE_IN_HEADER.sub(_percent_encoded, raw)
    return raw[:_MAX_HEADER_VALUE]


def _percent_encoded(match: re.Match[bytes]) -> bytes:
    return b"%%%02X" % match.group()[0]


def _typed(value: object) -> tuple[type, object]:
    # With its type, so that `true` never matches 1 (True == 1 in Python).
    return (type(value), value)


def _claim_matches(value: object, allowed: frozenset[tuple[type, object]]) -> bool:
    if isinstance(value, list):
        return any(isinstance(item, str | int | bool) and _typed(item) in allowed for item in value)
    return isinstance(value, str | int | bool) and _typed(value) in allowed


def decide(policy: AuthPolicy, verified: Verified) -> tuple[str | None, tuple[tuple[bytes, bytes], ...]]:
    """What a policy says about a verified token: a refusal, or the identity headers."""
    claims = verified.claims
    if policy.scopes - verified.scopes:
        return INSUFFICIENT_SCOPE, ()
    for name, allowed in policy.claims:
        if not _claim_matches(claims.get(name), allowed):
            return CLAIM_MISMATCH, ()
    extra = []
    for claim, header in policy.claim_headers:
        value = header_value(claims.get(claim))
        if value is not None:
            extra.append((header, value))
    return None, tuple(extra)


def compile_claims(claims: Mapping[str, Sequence[Any]]) -> tuple[tuple[str, frozenset[tuple[type, object]]], ...]:
    return tuple((name, frozenset(_typed(value) for value in values)) for name, values in claims.items())
