"""The shared store: GCRA state in Redis, so every replica draws on the same budget.

One Lua script decides requests against all their limits, on Redis' own clock (`TIME`), so
replicas with drifting clocks still agree. The checks of concurrent requests are batched, and a
batch is one EVALSHA of that script (loaded again when Redis answers NOSCRIPT, e.g. after a
restart): redis-py measured here ~5.5k EVALSHA/s one at a time and ~17.6k/s pipelined, and one
call per batch is cheaper still, for this process and for Redis (57 -> 20 µs of CPU per check).

Keys are `<prefix>{<rule>:<digest>}`: the braces are a Redis Cluster hash tag, so each key lives
in one slot and the keys spread over the cluster. A cluster cannot run one script over keys in
different slots, so there each limit of a request is decided by its own call (the calls of a
batch run concurrently); a request one limit refuses may then still spend another limit's budget.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Sequence
from typing import Any, TypeAlias
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis, RedisCluster, Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from guardproxy.ratelimit.gcra import Rate
from guardproxy.ratelimit.redis_url import parse_host_port

# One call decides a whole batch of requests, one after another, as if each had its own call.
# KEYS: every limit of every request, request after request.
# ARGV: per request, its number of limits, then three per limit: interval and tolerance in µs,
# 1 if it enforces.
# Returns per request each limit's backlog (TAT - now, at least 0) before it, in µs.
# All or nothing per request: if an enforcing limit refuses, none of its keys changes; otherwise
# every limit that admits it advances its TAT, which expires when it has passed.
# A key that cannot be read (a foreign value under the prefix) fails only its own request; a
# write that fails (a read-only replica after a failover, out of memory) fails the call, as the
# first write of the batch, before anything changed.
GCRA_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local results, key, arg = {}, 0, 1
while arg <= #ARGV do
  local count = tonumber(ARGV[arg])
  local backlogs, fits, refused, failed = {}, {}, false, nil
  for i = 1, count do
    local tat = redis.pcall('GET', KEYS[key + i])
    if type(tat) == 'table' then
      failed = tat
      break
    end
    local interval, tolerance = tonumber(ARGV[arg + 3 * i - 2]), tonumber(ARGV[arg + 3 * i - 1])
    local backlog = math.max((tonumber(tat) or now) - now, 0)
    backlogs[i] = backlog
    fits[i] = backlog + interval <= tolerance
    if not fits[i] and ARGV[arg + 3 * i] == '1' then
      refused = true
    end
  end
  if not failed and not refused then
    for i = 1, count do
      if fits[i] then
        local ahead = backlogs[i] + tonumber(ARGV[arg + 3 * i - 2])
        redis.call('SET', KEYS[key + i], string.format('%.0f', now + ahead), 'PX', math.ceil(ahead / 1000))
      end
    end
  end
  results[#results + 1] = failed or backlogs
  key, arg = key + count, arg + 1 + 3 * count
end
return results
"""
GCRA_SHA = hashlib.sha1(GCRA_SCRIPT.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1

# A dead connection must fail well within the circuit breaker's patience; the per-check time
# budget (rate_limit.timeout) is what requests wait, this only bounds the background work.
_SOCKET_TIMEOUT = 1.0
# Calls in flight at once: checks arriving meanwhile wait and go out together, so a slow
# Redis makes batches bigger, not connections more numerous.
_MAX_CALLS_IN_FLIGHT = 2
# How long a check may wait at most, in budgets: it may queue behind the calls in flight before
# its own is sent.
_WAIT_BOUND_BUDGETS = 4

RedisClient: TypeAlias = Redis | RedisCluster


def connect(url: str) -> RedisClient:
    """A client for `url`: redis://, rediss:// or unix:// for one server;
    redis+sentinel://[user:password@]host[:port][,host[:port]...]/service[/db] to follow a
    Sentinel-managed primary; redis+cluster://host[:port] for Redis Cluster (rediss+ for TLS)."""
    scheme, _, rest = url.partition("://")
    options: dict[str, Any] = {
        "socket_timeout": _SOCKET_TIMEOUT,
        "socket_connect_timeout": _SOCKET_TIMEOUT,
        # guardproxy has its own fallback; redis-py's retries would only hold requests longer.
        "retry": Retry(NoBackoff(), 0),
    }
    if scheme.endswith("+cluster"):
        return RedisCluster.from_url(scheme.removesuffix("+cluster") + "://" + rest, **options)
    if scheme.endswith("+sentinel"):
        return _sentinel_primary(url, tls=scheme.startswith("rediss"), options=options)
    return Redis.from_url(url, **options)


def _sentinel_primary(url: str, *, tls: bool, options: dict[str, Any]) -> Redis:
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    sentinels = [parse_host_port(host, default_port=26379) for host in hosts.split(",")]
    path = [segment for segment in parts.path.split("/") if segment]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("a Sentinel URL names its service and optionally a db: redis+sentinel://host/service[/db]")
    sentinel_options = {key: options[key] for key in ("socket_timeout", "socket_connect_timeout")}
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        sentinels,
        sentinel_kwargs={**sentinel_options, "ssl": tls},
        username=unquote(username) or None,
        password=unquote(password) or None,
        db=int(path[1]) if len(path) == 2 else 0,
        ssl=tls,
        **options,
    )
    primary: Redis = sentinel.master_for(path[0])
    return primary


class _Batch:
    """Checks that go to Redis together, in the order they were asked."""

    __slots__ = ("deadline", "futures", "requests")

    def __init__(self) -> None:
        self.requests: list[tuple[Sequence[str], Sequence[Rate], Sequence[bool]]] = []
        self.futures: list[asyncio.Future[list[int]]] = []
        self.deadline: asyncio.TimerHandle | None = None


class RedisStore:
    """Batches concurrent checks into one script call each and holds each call to `budget` seconds.

    The budget runs from when a batch is sent, so it measures Redis, not the time a busy
    event loop takes to get round to sending: a burst of requests that keeps this process busy
    must not look like a Redis outage, or limits would turn per-instance exactly when they
    matter most.

    Whatever happens inside redis-py, no check waits without bound: a batch may wait for the
    calls in flight, each held to its budget, before its own is sent, so one timer per batch
    fails whatever still waits `_WAIT_BOUND_BUDGETS` budgets after the batch began.
    """

    def __init__(self, client: RedisClient, *, budget: float) -> None:
        self._client = client
        self.budget = budget
        self._cluster = isinstance(client, RedisCluster)
        encoder = client.get_encoder()
        self._encoding: str = encoder.encoding
        self._encoding_errors: str = encoder.encoding_errors
        self._pending: _Batch | None = None
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def check(self, keys: Sequence[str], rates: Sequence[Rate], enforce: Sequence[bool]) -> asyncio.Future[list[int]]:
        """To await: each key's backlog before this request, as MemoryStore.check; raises on
        Redis trouble. A future rather than a coroutine: one object fewer per request."""
        if not len(keys) == len(rates) == len(enforce):
            raise ValueError("a check needs one rate and one enforce flag per key")
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        batch = self._pending
        if batch is None:
            loop = future.get_loop()
            batch = self._pending = _Batch()
            batch.deadline = loop.call_later(_WAIT_BOUND_BUDGETS * self.budget, self._expire, batch)
            if self._in_flight < _MAX_CALLS_IN_FLIGHT:
                # Sent at the end of this event-loop turn, with every check queued during it.
                loop.call_soon(self._send_pending)
        batch.requests.append((keys, rates, enforce))
        batch.futures.append(future)
        return future

    def _send_pending(self) -> None:
        batch = self._pending
        if batch is None or self._in_flight >= _MAX_CALLS_IN_FLIGHT:
            return
        self._pending = None
        self._in_flight += 1
        task = asyncio.create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._in_flight -= 1
        self._send_pending()

    def _expire(self, batch: _Batch) -> None:
        if self._pending is batch:  # never sent: its requests are decided elsewhere now
            self._pending = None
        _fail_waiting(batch, TimeoutError("the rate limit store kept a check waiting too long"))

    async def _send(self, batch: _Batch) -> None:
        try:
            async with asyncio.timeout(self.budget):
                replies = await (self._decide_in_cluster(batch) if self._cluster else self._decide(batch))
            for future, reply in zip(batch.futures, replies, strict=True):
                if future.done():  # its request stopped waiting (time budget)
                    continue
                if isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except Exception as exc:  # every waiting request must hear about it
            _fail_waiting(batch, exc)
        finally:
            if batch.deadline is not None:
                batch.deadline.cancel()

    async def _decide(self, batch: _Batch) -> list[Any]:
        command = self._pack(batch)
        try:
            replies: list[Any] = await self._execute(command)
        except NoScriptError:
            # Redis restarted or its script cache was flushed: load it again and retry.
            await self._client.script_load(GCRA_SCRIPT)
            replies = await self._execute(command)
        return replies

    def _pack(self, batch: _Batch) -> bytes:
        """EVALSHA for the whole batch in RESP, the way redis-py would pack it, without its
        per-argument work: each limit's arguments are packed once per rate."""
        encoding, errors = self._encoding, self._encoding_errors
        keys: list[bytes] = []
        arguments: list[bytes] = []
        for request_keys, rates, enforce in batch.requests:
            arguments.append(_bulk_int(len(request_keys)))
            for key in request_keys:
                data = key.encode(encoding, errors)
                keys.append(b"$%d\r\n%s\r\n" % (len(data), data))
            for rate, enforcing in zip(rates, enforce, strict=True):
                arguments.append(_limit_arguments(rate.interval_us, rate.tolerance_us, enforcing))
        # EVALSHA, the SHA, the key count, the keys, each request's limit count and 3 per limit.
        length = 3 + len(keys) + len(batch.requests) + 3 * len(keys)
        head = b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n%s" % (length, _SHA_BYTES, _bulk_int(len(keys)))
        return b"".join([head, *keys, *arguments])

    async def _execute(self, command: bytes) -> Any:
        """One packed command on a connection of the client's pool (which connects, authenticates
        and follows Sentinel as for any command of redis-py's own)."""
        assert isinstance(self._client, Redis)
        pool = self._client.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_packed_command(command)
            return await connection.read_response()
        except (RedisConnectionError, RedisTimeoutError):
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)

    async def _decide_in_cluster(self, batch: _Batch) -> list[Any]:
        # A script's keys must share a slot: each limit is decided by its own call, the calls
        # running concurrently, one round trip per node in parallel, routed by each call's key.
        calls = [
            (key, *_arguments(rate, enforcing))
            for keys, rates, enforce in batch.requests
            for key, rate, enforcing in zip(keys, rates, enforce, strict=True)
        ]
        replies = await self._evalsha_each(calls)
        missing = [index for index, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            await self._client.script_load(GCRA_SCRIPT)
            for index, reply in zip(missing, await self._evalsha_each([calls[i] for i in missing]), strict=True):
                replies[index] = reply
        results: list[Any] = []
        position = 0
        for keys, _, _ in batch.requests:
            # Each call's reply holds one result, its limit's backlog or an error.
            own: list[Any] = [
                reply if isinstance(reply, Exception) else reply[0]
                for reply in replies[position : position + len(keys)]
            ]
            position += len(keys)
            error = next((reply for reply in own if isinstance(reply, Exception)), None)
            results.append(error if error is not None else [backlogs[0] for backlogs in own])
        return results

    async def _evalsha_each(self, calls: list[tuple[str, int, int, int]]) -> list[Any]:
        replies = asyncio.gather(
            *(self._client.evalsha(GCRA_SHA, 1, key, 1, *args) for key, *args in calls), return_exceptions=True
        )
        return list(await replies)

    async def warm_up(self) -> None:
        """Open a connection per call that may be in flight and load the script, before the
        first burst needs them: connecting inside a request's budget under load measured 150 ms
        here. A Redis that is down now is the fallback's business, not a reason to fail the start."""
        try:
            async with asyncio.timeout(_SOCKET_TIMEOUT):
                await asyncio.gather(
                    self._client.script_load(GCRA_SCRIPT),
                    *(self._client.ping() for _ in range(_MAX_CALLS_IN_FLIGHT - 1)),
                )
        except Exception:  # noqa: S110 - the first check reports and counts the trouble
            pass

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self._client.aclose()


_SHA_BYTES = GCRA_SHA.encode()


def _fail_waiting(batch: _Batch, error: Exception) -> None:
    for future in batch.futures:
        if not future.done():
            future.set_exception(error)


def _arguments(rate: Rate, enforcing: bool) -> tuple[int, int, int]:
    return rate.interval_us, rate.tolerance_us, 1 if enforcing else 0


@functools.lru_cache(maxsize=1024)
def _bulk_int(value: int) -> bytes:
    digits = b"%d" % value
    return b"$%d\r\n%s\r\n" % (len(digits), digits)


@functools.lru_cache(maxsize=256)
def _limit_arguments(interval_us: int, tolerance_us: int, enforcing: bool) -> bytes:
    """A limit's three script arguments in RESP: the same few for every request of a rule."""
    return b"".join(_bulk_int(value) for value in (interval_us, tolerance_us, 1 if enforcing else 0))
