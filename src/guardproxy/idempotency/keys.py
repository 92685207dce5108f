"""What a request's Idempotency-Key is, whose it is, and what it asked for.

The draft (draft-ietf-httpapi-idempotency-key-header §2.1) makes the field an RFC 8941 String
item: `Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"`. Many clients (Stripe's among
them) send the bare value instead; both are accepted, and both spellings of one value are the same
key. Anything else (parameters, a list, several fields, control characters, an empty or overlong
value) is malformed: a 400, never a guess.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from guardproxy.asgi import Scope
from guardproxy.context import RequestContext
from guardproxy.ratelimit.rules import client_key

HEADER = b"idempotency-key"
# RFC 8941 §3.3.3: a String is DQUOTE *( unescaped / "\" ( DQUOTE / "\" ) ) DQUOTE, unescaped
# being printable ASCII other than DQUOTE and backslash.
_SF_STRING = re.compile(rb'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
_SF_ESCAPE = re.compile(rb'\\(["\\])')
# The bare form: visible ASCII, without the characters that would make it a list, a parameter
# or a quoted string.
_BARE = re.compile(rb"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]+")


class MalformedKeyError(ValueError):
    """The Idempotency-Key field cannot be one key; the message is safe to show the client."""


def key_fields(scope: Scope) -> list[bytes]:
    return [bytes(value) for name, value in scope["headers"] if name == HEADER]


def parse_key(fields: Sequence[bytes], max_length: int) -> bytes:
    """The key a request's Idempotency-Key fields carry (one field, one value)."""
    if len(fields) != 1:
        raise MalformedKeyError("Send exactly one Idempotency-Key field.")
    value = fields[0].strip(b" \t")
    quoted = _SF_STRING.fullmatch(value)
    if quoted is not None:
        key = _SF_ESCAPE.sub(rb"\1", quoted.group(1))
    elif _BARE.fullmatch(value):
        key = value
    else:
        raise MalformedKeyError("The Idempotency-Key must be a quoted string or a token of visible ASCII.")
    if not key:
        raise MalformedKeyError("The Idempotency-Key must not be empty.")
    if len(key) > max_length:
        raise MalformedKeyError(f"The Idempotency-Key must be at most {max_length} characters long.")
    return key


def identity(parts: Sequence[str | bytes], scope: Scope, context: RequestContext) -> bytes:
    """Who the key belongs to: the resolved client address (IPv6 per /64, as rate limits count
    it) and/or header values such as Authorization. A missing header counts as the address, so
    anonymous clients never share one namespace."""
    pieces = []
    for part in parts:
        if part == "client_ip":
            pieces.append(b"ip=" + client_key(context.client_host))
            continue
        value = next((bytes(v) for name, v in scope["headers"] if name == part), None)
        pieces.append(b"h=" + value if value is not None else b"ip=" + client_key(context.client_host))
    return b"\0".join(pieces)


def store_key(prefix: str, who: bytes, method: str, path: str, key: bytes) -> str:
    """The store key of one (client, method, path, Idempotency-Key): hashed, so neither client
    data nor keys are stored in the clear, and one client's key cannot name another's entry.
    The decoded path is used, so `/pay` and `/p%61y` are one resource, as the upstream sees it."""
    digest = hashlib.blake2b(
        b"\0".join((who, method.encode("ascii", "replace"), path.encode("utf-8", "surrogateescape"), key)),
        digest_size=16,
    )
    # Braces: a Redis Cluster hash tag (the one key of every script call decides the slot).
    return f"{prefix}{{{digest.hexdigest()}}}"


def fingerprint_of(scope: Scope) -> hashlib.blake2b:
    """A hash of what the request asks for, to be fed the body as it arrives: the method, the
    raw target (query included) and then the body bytes."""
    target = bytes(scope["raw_path"])
    query = scope["query_string"]
    if query:
        target += b"?" + bytes(query)
    return hashlib.blake2b(scope["method"].encode("ascii", "replace") + b"\0" + target + b"\0", digest_size=16)
