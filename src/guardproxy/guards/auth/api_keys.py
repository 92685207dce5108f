"""API keys: stored only as SHA-256 digests, each with a name, compared in constant time.

The presented key is hashed and compared against every stored digest with
`hmac.compare_digest`, without stopping at a match, so the time taken says nothing about which
key (or how much of one) matched. The key's name, never the key, is what the upstream, the
access log and the rate limiter see.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Final

_NAME: Final = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_DIGEST: Final = re.compile(r"[0-9a-fA-F]{64}")
# A presented key longer than this is not compared at all.
MAX_KEY_BYTES: Final = 1024


class ApiKeyError(ValueError):
    """A key list that cannot be used, phrased without quoting any digest."""


def parse_api_keys(text: str) -> list[tuple[str, bytes]]:
    """`name digest` pairs, one per line or separated by commas; `#` starts a comment."""
    keys: list[tuple[str, bytes]] = []
    seen: set[bytes] = set()
    for number, raw in enumerate(re.split(r"[\n,]", text), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.replace(":", " ").split()
        if len(parts) != 2 or not _NAME.fullmatch(parts[0]) or not _DIGEST.fullmatch(parts[1]):
            raise ApiKeyError(f"entry {number}: expected `name sha256-hex-digest`")
        digest = bytes.fromhex(parts[1])
        if digest in seen:
            raise ApiKeyError(f"entry {number}: the same digest is listed twice")
        seen.add(digest)
        keys.append((parts[0], digest))
    return keys


class ApiKeyStore:
    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        self._keys = tuple(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def lookup(self, presented: bytes) -> str | None:
        """The name of the key, or None. Every stored digest is compared, match or not."""
        if not presented or len(presented) > MAX_KEY_BYTES:
            return None
        digest = hashlib.sha256(presented).digest()
        found: str | None = None
        for name, stored in self._keys:
            if hmac.compare_digest(digest, stored) and found is None:
                found = name
        return found
