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
    """Keys in a dict, for one process (config refuses it with several workers). Bounded in keys
    and in bytes, since each entry may hold a response of up to max_response_bytes: when either
    bound is reached, expired entries are swept, and if that is not enough the oldest go
    (insertion order is age order: a completed entry is re-inserted)."""

    backend = "memory"

    def __init__(
        self, *, max_keys: int, max_bytes: int = 64 * 1024 * 1024, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._entries: dict[str, tuple[bytes, float]] = {}
        self._max_keys = max_keys
        self._max_bytes = max_bytes
        self._bytes = 0
        self._clock = clock

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def _live(self, key: str, now: float) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            self._drop(key)
            return None
        return entry[0]

    def _drop(self, key: str) -> None:
        value, _ = self._entries.pop(key)
        self._bytes -= len(key) + len(value)

    def _full(self, adding: int) -> bool:
        return len(self._entries) >= self._max_keys or self._bytes + adding > self._max_bytes

    def _put(self, key: str, value: bytes, expires: float, now: float) -> None:
        if key in self._entries:
            self._drop(key)
        size = len(key) + len(value)
        if self._full(size):
            for stale in [k for k, entry in self._entries.items() if entry[1] <= now]:
                self._drop(stale)
            while self._entries and self._full(size):
                self._drop(next(iter(self._entries)))
        self._entries[key] = (value, expires)
        self._bytes += size

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
        self._drop(key)
        return True

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes_held(self) -> int:
        return self._bytes
