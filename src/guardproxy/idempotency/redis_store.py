"""The shared store: keys in Redis, so every replica and worker sees the same locks and replays.

Each step is one Lua script on one key, so it is atomic: taking the lock and recording the
fingerprint are the same write (`SET ... PX`, only if the key is absent), and the swap of a
lock for the response is a compare-and-set on the whole lock value (fingerprint and a random
token), so a holder whose lock has expired cannot overwrite what a later request stored. Every
entry expires on its own (locks after lock_ttl, responses after ttl): a worker that dies
mid-request leaves nothing that lives for ever.

Scripts are called by SHA and loaded again when Redis answers NOSCRIPT (after a restart).
"""

from __future__ import annotations

import hashlib
from typing import Any

from redis.exceptions import NoScriptError

from guardproxy.ratelimit.redis_store import RedisClient, connect

# KEYS[1] the entry; ARGV[1] our lock value, ARGV[2] the lock's TTL in ms.
# Returns nil when the lock was taken, else {value, ms left}.
ACQUIRE = """
local value = redis.call('GET', KEYS[1])
if value then
  return {value, redis.call('PTTL', KEYS[1])}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""
# KEYS[1]; ARGV[1] our lock value, ARGV[2] the response record, ARGV[3] its TTL in ms. 1 if swapped.
COMPLETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""
# KEYS[1]; ARGV[1] our lock value. 1 if deleted.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""
_SHAS = {script: hashlib.sha1(script.encode()).hexdigest() for script in (ACQUIRE, COMPLETE, RELEASE)}  # noqa: S324 - Redis names scripts by SHA-1


class RedisIdempotencyStore:
    backend = "redis"

    def __init__(self, client: RedisClient) -> None:
        self._client = client

    @classmethod
    def from_url(cls, url: str) -> RedisIdempotencyStore:
        return cls(connect(url))

    async def start(self) -> None:
        """Load the scripts now, so the first requests do not pay for it. A Redis that is down
        is the ledger's business (fail_mode), never a reason to fail the start."""
        try:
            for script in _SHAS:
                await self._client.script_load(script)
        except Exception:  # noqa: S110 - the first request reports and counts the trouble
            pass

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _run(self, script: str, key: str, *args: bytes | int) -> Any:
        try:
            return await self._client.evalsha(_SHAS[script], 1, key, *args)
        except NoScriptError:
            await self._client.script_load(script)
            return await self._client.evalsha(_SHAS[script], 1, key, *args)

    async def acquire(self, key: str, lock: bytes, lock_ttl_ms: int) -> tuple[bytes, int] | None:
        reply = await self._run(ACQUIRE, key, lock, lock_ttl_ms)
        if reply is None:
            return None
        value, left = reply
        return bytes(value), max(0, int(left))

    async def complete(self, key: str, lock: bytes, record: bytes, ttl_ms: int) -> bool:
        return bool(await self._run(COMPLETE, key, lock, record, ttl_ms))

    async def release(self, key: str, lock: bytes) -> bool:
        return bool(await self._run(RELEASE, key, lock))
