"""The state machine of one key, free of I/O so that it can be tested on its own.

A key is absent, in flight (a lock: who holds it and the fingerprint of what it asked) or done
(the fingerprint and the response to replay). A request meets one of them:

  absent                    -> take the lock, forward             (PROCEED)
  in flight, same request   -> 409, retry later                   (CONFLICT)
  done, same request        -> replay the stored response         (REPLAY)
  either, another request   -> 422, the key was reused            (MISMATCH)

The holder of a lock either swaps it for the response (done) or deletes it (absent again), and
only while it still holds that very lock (compare-and-set on the whole value, token included):
a holder whose lock expired must never overwrite what a later request stored. An expired lock or
record is absent. Values are bytes, as Redis stores them:

  lock:  b"L" + fingerprint (16 bytes) + token (8 bytes)
  done:  b"D" + fingerprint + status and head length (">HI") + head (JSON) + body
"""

from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass

import orjson

from guardproxy.asgi import Headers

FINGERPRINT_BYTES = 16
_TOKEN_BYTES = 8
_LOCK, _DONE = b"L", b"D"
_RESPONSE_HEAD = struct.Struct(">HI")
_DONE_HEADER = 1 + FINGERPRINT_BYTES + _RESPONSE_HEAD.size
# Upstream 4xx answers that say "not now" rather than "no": a retry should reach the upstream
# again (RFC 9110 §15.5.9 408, §15.5.10 409, RFC 8470 425, RFC 6585 429).
TRANSIENT_CLIENT_ERRORS = frozenset({408, 409, 425, 429})


class CorruptEntryError(ValueError):
    """A value under the key prefix that this code did not write."""


class Verdict(enum.Enum):
    PROCEED = "proceed"
    CONFLICT = "conflict"
    MISMATCH = "mismatch"
    REPLAY = "replay"


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    headers: Headers
    body: bytes


def new_lock(fingerprint: bytes) -> bytes:
    if len(fingerprint) != FINGERPRINT_BYTES:
        raise ValueError("a fingerprint is 16 bytes")
    return _LOCK + fingerprint + os.urandom(_TOKEN_BYTES)


def encode_done(fingerprint: bytes, response: StoredResponse) -> bytes:
    head = orjson.dumps([[name.decode("latin-1"), value.decode("latin-1")] for name, value in response.headers])
    return b"".join((_DONE, fingerprint, _RESPONSE_HEAD.pack(response.status, len(head)), head, response.body))


def decode_done(value: bytes) -> StoredResponse:
    if len(value) < _DONE_HEADER or value[:1] != _DONE:
        raise CorruptEntryError("not a stored response")
    status, head_length = _RESPONSE_HEAD.unpack_from(value, 1 + FINGERPRINT_BYTES)
    head_end = _DONE_HEADER + head_length
    if not 200 <= status <= 599 or head_end > len(value):
        raise CorruptEntryError("a stored response with a bad head")
    try:
        fields = orjson.loads(value[_DONE_HEADER:head_end])
        headers = [(name.encode("latin-1"), field.encode("latin-1")) for name, field in fields]
    except (orjson.JSONDecodeError, TypeError, ValueError, UnicodeEncodeError):
        raise CorruptEntryError("a stored response with a bad head") from None
    return StoredResponse(status, headers, value[head_end:])


def decide(existing: bytes | None, fingerprint: bytes) -> tuple[Verdict, StoredResponse | None]:
    """What a request with `fingerprint` meets, given the key's current value (None: absent).
    PROCEED means the caller's lock was just taken: the store does that atomically, and calls
    this only for a value that was already there."""
    if existing is None:
        return Verdict.PROCEED, None
    kind, stored_fingerprint = existing[:1], existing[1 : 1 + FINGERPRINT_BYTES]
    if kind not in (_LOCK, _DONE) or len(stored_fingerprint) != FINGERPRINT_BYTES:
        raise CorruptEntryError("not an idempotency entry")
    if stored_fingerprint != fingerprint:
        return Verdict.MISMATCH, None
    if kind == _LOCK:
        return Verdict.CONFLICT, None
    return Verdict.REPLAY, decode_done(existing)


class Disposition(enum.Enum):
    """What becomes of a locked request's response: stored, or the key released and why."""

    STORED = "stored"
    NOT_UPSTREAM = "not_upstream"  # guardproxy answered (502/503/504): nothing was decided
    SERVER_ERROR = "server_error"  # 5xx: the upstream may succeed on a retry
    TRANSIENT = "transient"  # 408/409/425/429: "not now"
    TOO_LARGE = "too_large"  # over max_response_bytes: forwarded, not stored
    INCOMPLETE = "incomplete"  # cut short (upstream failure, timeout, shutdown)
    LOCK_LOST = "lock_lost"  # the lock expired before the response was complete
    STORE_FAILED = "store_failed"  # the store failed: the lock expires by itself


def disposition(status: int, *, from_upstream: bool, complete: bool, too_large: bool) -> Disposition:
    """Whether a response may be stored for replay. Final upstream answers are: 2xx, 3xx and the
    4xx that refuse for good (400, 404, 422, ...), since a retry of the same request would get
    the same answer and the upstream may have acted before answering (a declined payment)."""
    if not from_upstream:
        return Disposition.NOT_UPSTREAM
    if not complete:
        return Disposition.INCOMPLETE
    if status >= 500 or status < 200:
        return Disposition.SERVER_ERROR
    if status in TRANSIENT_CLIENT_ERRORS:
        return Disposition.TRANSIENT
    if too_large:
        return Disposition.TOO_LARGE
    return Disposition.STORED


def replay_headers(stored: StoredResponse) -> Headers:
    """The stored head for a replay: its own Content-Length (a chunked original has none; a 204
    or 304 never has one, RFC 9110 §8.6), and `Idempotent-Replayed: true` so the client can tell."""
    headers: Headers = [field for field in stored.headers if field[0] != b"content-length"]
    if stored.status not in (204, 304):
        headers.append((b"content-length", b"%d" % len(stored.body)))
    headers.append((b"idempotent-replayed", b"true"))
    return headers
