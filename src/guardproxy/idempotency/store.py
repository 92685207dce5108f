"""Where keys live: the interface both stores offer, and the in-memory store for one process.

Every step is one atomic operation on one key (see records.py for the values):
  acquire   take the lock if the key is absent; else hand back what is there and its ms left
  complete  swap our lock for the stored response, only if the lock is still ours
  release   delete our lock, only if it is still ours
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol


class IdempotencyStore(Protocol):
    backend: str

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def acquire(self, key: str, lock: bytes, lock_ttl_ms: int) -> tuple[bytes, int] | None: ...

    async def complete(self, key: str, lock: bytes, record: bytes, ttl_ms: int) -> bool: ...

    async def release(self, key: str, lock: bytes) -> bool: ...


class MemoryIdempotencyStore:
    """Keys in a dict, for one process (config refuses it with several workers). Bounded: at
    `max_keys` expired entries are swept, and if that frees nothing the oldest entry goes
    (insertion order is age order: a completed entry is re-inserted)."""

    backend = "memory"

    def __init__(self, *, max_keys: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: dict[str, tuple[bytes, float]] = {}
        self._max_keys = max_keys
        self._clock = clock

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        self._entries.clear()

    def _live(self, key: str, now: float) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._entries[key]
            return None
        return entry[0]

    def _put(self, key: str, value: bytes, expires: float, now: float) -> None:
        self._entries.pop(key, None)
        if len(self._entries) >= self._max_keys:
            self._entries = {k: entry for k, entry in self._entries.items() if entry[1] > now}
            while len(self._entries) >= self._max_keys:
                del self._entries[next(iter(self._entries))]
        self._entries[key] = (value, expires)

    async def acquire(self, key: str, lock: bytes, lock_ttl_ms: int) -> tuple[bytes, int] | None:
        now = self._clock()
        value = self._live(key, now)
        if value is not None:
            return value, max(0, int((self._entries[key][1] - now) * 1000))
        self._put(key, lock, now + lock_ttl_ms / 1000, now)
        return None

    async def complete(self, key: str, lock: bytes, record: bytes, ttl_ms: int) -> bool:
        now = self._clock()
        if self._live(key, now) != lock:
            return False
        self._put(key, record, now + ttl_ms / 1000, now)
        return True

    async def release(self, key: str, lock: bytes) -> bool:
        if self._live(key, self._clock()) != lock:
            return False
        del self._entries[key]
        return True

    def __len__(self) -> int:
        return len(self._entries)
