"""One JWT provider's verification, and the cache that makes a repeated token a dictionary lookup.

PyJWT (with cryptography) does the signature and registered-claim checks; the classic mistakes
are ruled out before it is called: the header's `alg` must be on the provider's allow list
(`none` cannot be: config refuses it) and the key chosen must be bound to that algorithm
(jwks.py), so an HS256 token "signed" with the RSA public key as its secret finds no key.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import jwt
import orjson
from jwt import exceptions as jwt_errors

from guardproxy.guards.auth.jwks import KeySet, RemoteKeySet

# Results, for metrics and logs: a small fixed set.
VALID: Final = "valid"
MISSING: Final = "missing"
MALFORMED: Final = "malformed"
EXPIRED: Final = "expired"
NOT_YET_VALID: Final = "not_yet_valid"
BAD_SIGNATURE: Final = "bad_signature"
BAD_AUDIENCE: Final = "bad_audience"
BAD_ISSUER: Final = "bad_issuer"
BAD_ALGORITHM: Final = "bad_algorithm"
UNKNOWN_KEY: Final = "unknown_key"
MISSING_CLAIM: Final = "missing_claim"
NO_KEYS: Final = "no_keys"
INVALID: Final = "invalid"

# What the client is told (RFC 6750 §3 error_description: printable ASCII, no quote or
# backslash). Fixed texts only: nothing from the token is echoed back.
DESCRIPTIONS: Final = {
    MALFORMED: "The token is malformed",
    EXPIRED: "The token has expired",
    NOT_YET_VALID: "The token is not valid yet",
    BAD_SIGNATURE: "The token signature is invalid",
    BAD_AUDIENCE: "The token is not meant for this service",
    BAD_ISSUER: "The token issuer is not accepted here",
    BAD_ALGORITHM: "The token algorithm is not accepted",
    UNKNOWN_KEY: "The token signing key is unknown",
    MISSING_CLAIM: "The token lacks a required claim",
    INVALID: "The token is invalid",
}

# A JWT longer than this is refused unread (a header field of 8 KiB is already generous).
MAX_TOKEN_BYTES: Final = 8192

_ERRORS: Final[tuple[tuple[type[Exception], str], ...]] = (
    (jwt_errors.ExpiredSignatureError, EXPIRED),
    (jwt_errors.ImmatureSignatureError, NOT_YET_VALID),
    (jwt_errors.InvalidAudienceError, BAD_AUDIENCE),
    (jwt_errors.InvalidIssuerError, BAD_ISSUER),
    (jwt_errors.InvalidSignatureError, BAD_SIGNATURE),
    (jwt_errors.InvalidAlgorithmError, BAD_ALGORITHM),
    (jwt_errors.MissingRequiredClaimError, MISSING_CLAIM),
    (jwt_errors.DecodeError, MALFORMED),
)


@dataclass(frozen=True, slots=True)
class TokenHeader:
    alg: str
    kid: str | None


def token_header(token: str) -> TokenHeader | None:
    """The JOSE header's alg and kid, unverified, or None for anything that is not a compact
    JWS with a usable header. `crit` names extensions we do not implement, so RFC 7515
    §4.1.11 says to refuse the token."""
    if len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
        return None
    encoded = token.partition(".")[0]
    try:
        header = orjson.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(header, dict) or "crit" in header:
        return None
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str) or not (kid is None or isinstance(kid, str)):
        return None
    return TokenHeader(alg, kid)


def scopes_of(claims: dict[str, Any]) -> frozenset[str]:
    """OAuth scopes: `scope` (RFC 8693 §4.2, space-separated) and `scp` (a list, or a string)."""
    scopes: set[str] = set()
    for value in (claims.get("scope"), claims.get("scp")):
        if isinstance(value, str):
            scopes.update(value.split())
        elif isinstance(value, list):
            scopes.update(item for item in value if isinstance(item, str))
    return frozenset(scopes)


@dataclass(frozen=True, slots=True)
class Verified:
    provider: str
    claims: dict[str, Any]
    scopes: frozenset[str]
    subject: str
    # Wall-clock time past which the token is expired, leeway included.
    deadline: float
    # The key set it was verified with: once that set is replaced, verify again.
    keys: KeySet
    # Per route policy (by id): the refusal, or None and the identity headers. A cached token
    # meets the same few policies again and again; what they decide about it never changes.
    decisions: dict[int, tuple[str | None, tuple[tuple[bytes, bytes], ...]]] = field(
        default_factory=dict, compare=False, repr=False
    )


class TokenVerifier:
    """One provider: its issuer, audiences, algorithms and keys (static or remote)."""

    def __init__(
        self,
        *,
        name: str,
        issuer: str,
        audiences: list[str],
        algorithms: list[str],
        leeway: float,
        required_claims: list[str],
        keys: KeySet | None = None,
        remote: RemoteKeySet | None = None,
    ) -> None:
        assert (keys is None) != (remote is None)
        self.name = name
        self.issuer = issuer
        self.audiences = list(audiences)
        self.algorithms = frozenset(algorithms)
        self.leeway = leeway
        self.options: Any = {"require": ["exp", *(claim for claim in required_claims if claim != "exp")]}
        self._keys = keys
        self.remote = remote

    @property
    def keys(self) -> KeySet | None:
        return self._keys if self.remote is None else self.remote.keys

    def may_refresh_for(self, header: TokenHeader) -> bool:
        """Whether fetching the key set now could find this token's key."""
        keys = self.keys
        return (
            self.remote is not None
            and header.alg in self.algorithms
            and (keys is None or not keys.names(header.kid))
            and self.remote.may_refresh_now()
        )

    def verify(self, token: str, header: TokenHeader, now: Callable[[], float] = time.time) -> Verified | str:
        """The verified token, or the result name saying why not."""
        keys = self.keys
        if keys is None:
            return NO_KEYS
        if header.alg not in self.algorithms:
            return BAD_ALGORITHM
        key = keys.find(header.kid, header.alg)
        if key is None:
            return BAD_ALGORITHM if header.kid is not None and header.kid in keys.by_kid else UNKNOWN_KEY
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[header.alg],
                audience=self.audiences,
                issuer=self.issuer,
                leeway=self.leeway,
                options=self.options,
            )
        except jwt_errors.PyJWTError as exc:
            for error, result in _ERRORS:
                if isinstance(exc, error):
                    return result
            return INVALID
        subject = claims.get("sub")
        return Verified(
            provider=self.name,
            claims=claims,
            scopes=scopes_of(claims),
            subject=subject if isinstance(subject, str) else "",
            deadline=float(claims["exp"]) + self.leeway,
            keys=keys,
        )


class VerificationCache:
    """Verified tokens by SHA-256 digest, until they expire; bounded, oldest entry out first.
    Only successes are kept: a failure must be re-examined (the key may have rotated in)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: dict[bytes, Verified] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes, now: float) -> Verified | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if now >= entry.deadline:
            del self._entries[digest]
            return None
        return entry

    def put(self, digest: bytes, verified: Verified) -> None:
        if self.max_entries == 0:
            return
        entries = self._entries
        if len(entries) >= self.max_entries:
            del entries[next(iter(entries))]
        entries[digest] = verified

    def discard(self, digest: bytes) -> None:
        self._entries.pop(digest, None)
