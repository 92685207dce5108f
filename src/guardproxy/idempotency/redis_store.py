"""The shared store: keys in Redis, so every replica and worker sees the same locks and replays.

Each step is one Lua script on one key, so it is atomic: taking the lock and recording the
fingerprint are the same write (`SET ... PX`, only if the key is absent), and the swap of a
lock for the response is a compare-and-set on the whole lock value (fingerprint and a random
token), so a holder whose lock has expired cannot overwrite what a later request stored. Every
entry expires on its own (locks after lock_ttl, responses after ttl): a worker that dies
mid-request leaves nothing that lives for ever.

Scripts are called by SHA and loaded again when Redis answers NOSCRIPT (after a restart). On
one server (or a Sentinel-managed primary) the EVALSHA is packed here, and the calls of
concurrent requests are pipelined: queued during one event-loop turn, written together on one
pooled connection, replies read in order. redis-py's generic command path cost ~60 µs of CPU
per call here, and a keyed request makes two calls (bench/idempotency_cost.py).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

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
# A dead connection must fail well within a worker's patience; requests wait at most the
# ledger's budget (idempotency.timeout), this only bounds the background write.
_SOCKET_TIMEOUT = 1.0
# Pipeline writes in flight at once: calls arriving meanwhile go out together in the next one,
# so a slow Redis makes writes bigger, not connections more numerous.
_MAX_WRITES_IN_FLIGHT = 2
# EVALSHA <sha> 1, in RESP, after the array length: the same for every call of a script.
_SHA_HEADS = {script: b"$7\r\nEVALSHA\r\n$40\r\n%s\r\n$1\r\n1\r\n" % sha.encode() for script, sha in _SHAS.items()}


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _pack(head: bytes, key: str, args: tuple[bytes | int, ...]) -> bytes:
    """EVALSHA in RESP, byte for byte what redis-py packs (tests/unit/idempotency/test_store.py)."""
    parts = [b"*%d\r\n" % (4 + len(args)), head, _bulk(key.encode())]
    parts += [_bulk(arg if isinstance(arg, bytes) else b"%d" % arg) for arg in args]
    return b"".join(parts)


class RedisIdempotencyStore:
    backend = "redis"

    def __init__(self, client: RedisClient) -> None:
        self._client = client
        self._direct = isinstance(client, Redis)
        self._pending: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._scheduled = False
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._loading: dict[str, asyncio.Future[Any]] = {}

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
        for task in list(self._tasks):
            task.cancel()
        await self._client.aclose()

    async def _run(self, script: str, key: str, *args: bytes | int) -> Any:
        try:
            return await self._call(script, key, args)
        except NoScriptError:
            await self._reload(script)
            return await self._call(script, key, args)

    async def _reload(self, script: str) -> None:
        """Load a script again after NOSCRIPT: once, however many calls of a write met it."""
        loading = self._loading.get(script)
        if loading is None:
            loading = self._loading[script] = asyncio.ensure_future(self._client.script_load(script))
            loading.add_done_callback(lambda _: self._loading.pop(script, None))
        await asyncio.shield(loading)

    def _call(self, script: str, key: str, args: tuple[bytes | int, ...]) -> Any:
        if not self._direct:
            # Redis Cluster: redis-py routes the call to the key's node.
            return self._client.evalsha(_SHAS[script], 1, key, *args)
        return self._execute(_pack(_SHA_HEADS[script], key, args))

    def _execute(self, command: bytes) -> asyncio.Future[Any]:
        """Queue the call for the next pipeline write. A future rather than a coroutine: awaited
        under the ledger's time budget, a late reply finds it cancelled and is dropped."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((command, future))
        if not self._scheduled and self._in_flight < _MAX_WRITES_IN_FLIGHT:
            # Sent at the end of this event-loop turn, with every call queued during it.
            self._scheduled = True
            future.get_loop().call_soon(self._send_pending)
        return future

    def _send_pending(self) -> None:
        self._scheduled = False
        if not self._pending or self._in_flight >= _MAX_WRITES_IN_FLIGHT:
            return
        batch, self._pending = self._pending, []
        self._in_flight += 1
        task = asyncio.create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._in_flight -= 1
        if self._pending and not self._scheduled:
            self._send_pending()

    async def _send(self, batch: list[tuple[bytes, asyncio.Future[Any]]]) -> None:
        """One write of every queued call and their replies in order, on one pooled connection
        (RESP pipelining): an error reply fails only its own call."""
        assert isinstance(self._client, Redis)
        pool = self._client.connection_pool
        try:
            async with asyncio.timeout(_SOCKET_TIMEOUT):
                connection = await pool.get_connection()  # type: ignore[no-untyped-call]
                try:
                    await connection.send_packed_command(b"".join(command for command, _ in batch))
                    for _, future in batch:
                        try:
                            reply = await connection.read_response()
                        except ResponseError as exc:  # read whole: the next reply is in step
                            reply = exc
                        if not future.done():
                            if isinstance(reply, Exception):
                                future.set_exception(reply)
                            else:
                                future.set_result(reply)
                except BaseException:
                    # Cut off mid-reply (a dead server, the timeout, shutdown): the connection's
                    # state is unknown, so it goes.
                    await connection.disconnect()
                    raise
                finally:
                    await pool.release(connection)
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else RedisConnectionError("store closing")
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(exc, Exception):
                raise

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
