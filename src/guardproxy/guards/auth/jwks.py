"""Verification keys: parsed from a JWKS (RFC 7517) or a PEM file, and kept fresh from a URL.

A key is bound at parse time to the algorithms it may verify (its `alg`, or what its type and
curve allow, intersected with the provider's allow list), so a token's `alg` header can never
make an RSA public key act as an HMAC secret. Symmetric (`oct`) keys in a key set are ignored:
a shared secret comes only from the provider's own secret setting.

The remote key set is fetched with httpx (tooling, not the forwarding path): at start, in the
background on an interval that honours Cache-Control, and when a token names an unknown `kid`
(at most once per `min_refresh_interval`, and concurrent requests share the one fetch). A failed
fetch never replaces the last good key set.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import structlog
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt import PyJWK
from jwt.exceptions import PyJWTError

log = structlog.get_logger(component="guardproxy.auth.jwks")

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_CURVES = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_EC_CURVE_NAMES = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_OKP_CURVES = frozenset({"Ed25519", "Ed448"})
# RSA keys shorter than this are not trusted with anything (NIST SP 800-131A).
MIN_RSA_BITS = 2048
# A key set bigger than this is not a key set.
MAX_JWKS_BYTES = 1 << 20
MAX_KEYS = 64
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d{1,10})\"?\s*(?:,|$)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|,)\s*(?:no-cache|no-store)\s*(?:,|$|=)", re.IGNORECASE)


class KeySetError(ValueError):
    """A key set or key file that yields no usable key."""


@dataclass(frozen=True, slots=True)
class VerificationKey:
    kid: str | None
    algorithms: frozenset[str]
    # A cryptography public key object, or the HMAC secret (bytes).
    key: Any


class KeySet:
    """The keys of one provider at one moment; replaced whole on every successful refresh, so a
    cached verification can tell whether the key set it was made with is still current."""

    def __init__(self, keys: Sequence[VerificationKey], *, ignore_kid: bool = False) -> None:
        self.keys = tuple(keys)
        self.by_kid = {key.kid: key for key in self.keys if key.kid is not None}
        self._kidless = tuple(key for key in self.keys if key.kid is None)
        # A PEM file or a secret has no kid: a token's kid, whatever it is, says nothing.
        self.ignore_kid = ignore_kid

    def __len__(self) -> int:
        return len(self.keys)

    def names(self, kid: str | None) -> bool:
        """Whether a token's kid says which key to use: false for a kid this set has never
        heard of, which is what a refresh may fix (a key rotated in)."""
        return kid is None or self.ignore_kid or kid in self.by_kid

    def find(self, kid: str | None, alg: str) -> VerificationKey | None:
        """The one key that may verify a token with this kid and alg, or None. Without a kid
        (or with one the set does not name), only an unambiguous key is used: trying every key
        would let one token cost a signature check per key."""
        if self.ignore_kid:
            pool = self.keys
        elif kid is not None:
            key = self.by_kid.get(kid)
            if key is not None:
                return key if alg in key.algorithms else None
            pool = self._kidless
        else:
            pool = self.keys
        candidates = [key for key in pool if alg in key.algorithms]
        return candidates[0] if len(candidates) == 1 else None


def _jwk_algorithms(jwk: dict[str, Any], allowed: frozenset[str]) -> frozenset[str]:
    kty = jwk.get("kty")
    if "alg" in jwk:
        algs = frozenset({jwk["alg"]}) if isinstance(jwk["alg"], str) else frozenset()
    elif kty == "RSA":
        algs = RSA_ALGORITHMS
    elif kty == "EC":
        algs = frozenset({_EC_CURVES[jwk["crv"]]}) if jwk.get("crv") in _EC_CURVES else frozenset()
    elif kty == "OKP":
        algs = frozenset({"EdDSA"}) if jwk.get("crv") in _OKP_CURVES else frozenset()
    else:
        algs = frozenset()
    # The algorithm must also fit the key's type: an RSA key with alg ES256 is a broken key.
    fits = {"RSA": RSA_ALGORITHMS, "EC": frozenset(_EC_CURVES.values()), "OKP": frozenset({"EdDSA"})}
    return algs & allowed & fits.get(str(kty), frozenset())


def _usable(key: Any) -> bool:
    return not isinstance(key, rsa.RSAPublicKey) or key.key_size >= MIN_RSA_BITS


def parse_jwks(document: bytes, allowed: Iterable[str]) -> KeySet:
    """A JWKS (or a single JWK) into the keys usable for the allowed algorithms. Keys this
    provider cannot use are skipped, not fatal: an IdP publishes keys for several purposes."""
    allowed_algs = frozenset(allowed)
    try:
        data = orjson.loads(document)
    except orjson.JSONDecodeError:
        raise KeySetError("not JSON") from None
    if isinstance(data, dict) and "keys" not in data and "kty" in data:
        data = {"keys": [data]}
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise KeySetError('not a JWK set (no "keys" list)')
    keys: list[VerificationKey] = []
    skipped = 0
    for jwk in data["keys"][:MAX_KEYS]:
        if not isinstance(jwk, dict):
            skipped += 1
            continue
        # RFC 7517 §4.2/4.3: a key for encryption only is not a signature key.
        use, ops = jwk.get("use"), jwk.get("key_ops")
        if (use is not None and use != "sig") or (isinstance(ops, list) and "verify" not in ops):
            continue
        algorithms = _jwk_algorithms(jwk, allowed_algs)
        if not algorithms:
            skipped += 1
            continue
        kid = jwk.get("kid")
        try:
            key = PyJWK(jwk, algorithm=min(algorithms)).key
        except (PyJWTError, ValueError, TypeError, KeyError):
            skipped += 1
            continue
        if not _usable(key) or "d" in jwk:
            # A private key in a public key set is a leak; do not bless it by using it.
            skipped += 1
            continue
        keys.append(VerificationKey(kid=kid if isinstance(kid, str) else None, algorithms=algorithms, key=key))
    if not keys:
        detail = f" ({skipped} skipped: wrong type, algorithm or size)" if skipped else ""
        raise KeySetError(f"no key usable with {', '.join(sorted(allowed_algs))}{detail}")
    return KeySet(keys)


def parse_pem(document: bytes, allowed: Iterable[str]) -> KeySet:
    allowed_algs = frozenset(allowed)
    try:
        key = load_pem_public_key(document)
    except (ValueError, TypeError):
        raise KeySetError("not a PEM public key") from None
    if isinstance(key, rsa.RSAPublicKey):
        algorithms = RSA_ALGORITHMS
    elif isinstance(key, ec.EllipticCurvePublicKey):
        algorithms = frozenset({_EC_CURVE_NAMES.get(key.curve.name, "")})
    elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        algorithms = frozenset({"EdDSA"})
    else:
        algorithms = frozenset()
    algorithms &= allowed_algs
    if not algorithms or not _usable(key):
        raise KeySetError(f"the key cannot verify any of {', '.join(sorted(allowed_algs))}")
    return KeySet([VerificationKey(kid=None, algorithms=algorithms, key=key)], ignore_kid=True)


def load_key_file(path: Path, allowed: Iterable[str]) -> KeySet:
    try:
        document = path.read_bytes()
    except OSError as exc:
        raise KeySetError(f"cannot read it: {exc.strerror}") from None
    if document.lstrip().startswith(b"-----BEGIN"):
        return parse_pem(document, allowed)
    return parse_jwks(document, allowed)


def secret_key_set(secret: bytes, allowed: Iterable[str]) -> KeySet:
    return KeySet([VerificationKey(kid=None, algorithms=frozenset(allowed), key=secret)], ignore_kid=True)


def refresh_delay(cache_control: str | None, *, default: float, minimum: float, maximum: float) -> float:
    """Seconds until the next fetch: the response's max-age (RFC 9111 §5.2.2.1) within
    [minimum, maximum]; no-cache or no-store mean as soon as allowed; nothing usable, default."""
    if cache_control:
        if _NO_CACHE.search(cache_control):
            return minimum
        match = _MAX_AGE.search(cache_control)
        if match is not None:
            return min(max(float(match.group(1)), minimum), maximum)
    return default


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    interval: float
    minimum: float
    maximum: float
    timeout: float


class RemoteKeySet:
    """One provider's key set from its JWKS URL, with the last good copy kept through failures."""

    def __init__(
        self,
        provider: str,
        url: str,
        allowed: Iterable[str],
        policy: RefreshPolicy,
        *,
        ca_file: Path | None = None,
        count_fetch: Callable[[str, str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = provider
        self.url = url
        self.allowed = frozenset(allowed)
        self.policy = policy
        self.keys: KeySet | None = None
        self._ca_file = ca_file
        self._count_fetch = count_fetch
        self._clock = clock
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._last_attempt = -float("inf")
        self._etag: str | None = None
        self._document: bytes | None = None
        self._next_delay = policy.interval
        self._failures = 0
        self.last_success: float | None = None
        self.last_error = "not fetched yet"

    async def start(self) -> None:
        verify: ssl.SSLContext | bool = True
        if self._ca_file is not None:
            verify = ssl.create_default_context(cafile=str(self._ca_file))
        self._client = httpx.AsyncClient(
            timeout=self.policy.timeout,
            verify=verify,
            follow_redirects=False,
            headers={"accept": "application/jwk-set+json, application/json"},
        )
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name=f"jwks-refresh-{self.provider}")

    async def aclose(self) -> None:
        for task in (self._task, self._inflight):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._client is not None:
            await self._client.aclose()

    def may_refresh_now(self) -> bool:
        """Whether a token with an unknown kid may cause a fetch now (or join one in flight)."""
        return self._inflight is not None or self._clock() - self._last_attempt >= self.policy.minimum

    async def refresh(self) -> bool:
        """Fetch now, or join the fetch already in flight; True when the key set is usable.
        Shielded: a request that gives up waiting does not cancel the fetch others share."""
        task = self._inflight
        if task is None:
            task = self._inflight = asyncio.create_task(self._fetch())
            task.add_done_callback(self._fetched)
        return await asyncio.shield(task)

    def _fetched(self, task: asyncio.Task[bool]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._next_delay)
            try:
                await self.refresh()
            except Exception:
                # The refresher must outlive any surprise: the last good keys stay in use.
                log.exception("key set refresh failed unexpectedly", provider=self.provider)
                self._next_delay = self.policy.minimum

    async def _fetch(self) -> bool:
        assert self._client is not None
        self._last_attempt = self._clock()
        headers = {"if-none-match": self._etag} if self._etag and self.keys is not None else {}
        try:
            async with self._client.stream("GET", self.url, headers=headers) as response:
                if response.status_code == 304:
                    body = None
                elif response.status_code != 200:
                    return self._failed(f"answered {response.status_code}")
                else:
                    body = await _read_limited(response)
                cache_control = response.headers.get("cache-control")
                etag = response.headers.get("etag")
        except httpx.HTTPError as exc:
            return self._failed(f"unreachable ({exc.__class__.__name__})")
        except KeySetError as exc:
            return self._failed(str(exc))
        if body is not None and body == self._document and self.keys is not None:
            # The same document: the same KeySet object, so cached verifications stay valid.
            self._count_fetch(self.provider, "ok")
        elif body is not None:
            try:
                keys = parse_jwks(body, self.allowed)
            except KeySetError as exc:
                return self._failed(str(exc))
            changed = self.keys is None or {k.kid for k in keys.keys} != {k.kid for k in self.keys.keys}
            self.keys = keys
            self._document = body
            if changed:
                log.info("key set loaded", provider=self.provider, keys=len(keys), kids=sorted(keys.by_kid))
            self._count_fetch(self.provider, "ok")
        else:
            self._count_fetch(self.provider, "not_modified")
        self._etag = etag
        self._failures = 0
        self.last_success = time.time()
        self.last_error = ""
        policy = self.policy
        self._next_delay = refresh_delay(
            cache_control, default=policy.interval, minimum=policy.minimum, maximum=policy.maximum
        )
        return True

    def _failed(self, reason: str) -> bool:
        self._count_fetch(self.provider, "error")
        self._failures += 1
        self.last_error = reason
        if self.keys is None:
            # Never loaded: try again soon (1, 2, 4 ... s), the routes are failing closed.
            self._next_delay = min(2.0 ** (self._failures - 1), self.policy.minimum)
            log.error("key set fetch failed; no keys yet", provider=self.provider, reason=reason)
            return False
        self._next_delay = self.policy.minimum
        log.warning("key set refresh failed; keeping the last good keys", provider=self.provider, reason=reason)
        return True

    def report(self) -> dict[str, object]:
        return {
            "ok": self.keys is not None,
            "keys": len(self.keys) if self.keys is not None else 0,
            "last_success": round(self.last_success, 3) if self.last_success is not None else None,
            "last_error": self.last_error or None,
        }


async def _read_limited(response: httpx.Response) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > MAX_JWKS_BYTES:
            raise KeySetError(f"larger than {MAX_JWKS_BYTES} bytes")
    return bytes(body)
