"""The shared store: GCRA state in Redis, so every replica draws on the same budget.

One Lua script decides a request against all its limits in one round trip, on Redis' own clock
(`TIME`), so replicas with drifting clocks still agree. It is called with EVALSHA (loaded again
when Redis answers NOSCRIPT, e.g. after a restart), and the checks of concurrent requests share
pipelines: redis-py measured here ~5.5k EVALSHA/s one at a time and ~17.6k/s pipelined.

Keys are `<prefix>{<rule>:<digest>}`: the braces are a Redis Cluster hash tag, so each key lives
in one slot and the keys spread over the cluster. A cluster cannot run one script over keys in
different slots, so there each limit of a request is decided by its own call (all in the same
pipeline); a request one limit refuses may then still spend another limit's budget.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any, TypeAlias
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis, RedisCluster, Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from guardproxy.ratelimit.gcra import Rate
from guardproxy.ratelimit.redis_url import parse_host_port

# KEYS: one per limit. ARGV: three per limit: interval and tolerance in µs, 1 if it enforces.
# Returns each limit's backlog (TAT - now, at least 0) before this request, in µs.
# All or nothing: if an enforcing limit refuses, no key changes; otherwise every limit that
# admits the request advances its TAT, which expires when it has passed.
GCRA_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local backlogs, fits, refused = {}, {}, false
for i, key in ipairs(KEYS) do
  local interval, tolerance = tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1])
  local backlog = math.max((tonumber(redis.call('GET', key)) or now) - now, 0)
  backlogs[i] = backlog
  fits[i] = backlog + interval <= tolerance
  if not fits[i] and ARGV[3 * i] == '1' then
    refused = true
  end
end
if not refused then
  for i, key in ipairs(KEYS) do
    if fits[i] then
      local ahead = backlogs[i] + tonumber(ARGV[3 * i - 2])
      redis.call('SET', key, string.format('%.0f', now + ahead), 'PX', math.ceil(ahead / 1000))
    end
  end
end
return backlogs
"""
GCRA_SHA = hashlib.sha1(GCRA_SCRIPT.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1

# A dead connection must fail well within the circuit breaker's patience; the per-check time
# budget (rate_limit.timeout) is what requests wait, this only bounds the background work.
_SOCKET_TIMEOUT = 1.0
# Pipelines in flight at once: checks arriving meanwhile wait and go out together, so a slow
# Redis makes batches bigger, not connections more numerous.
_MAX_PIPELINES_IN_FLIGHT = 2

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


class RedisStore:
    """Batches concurrent checks into pipelines and holds each pipeline to `budget` seconds.

    The budget runs from when a pipeline is sent, so it measures Redis, not the time a busy
    event loop takes to get round to sending: a burst of requests that keeps this process busy
    must not look like a Redis outage, or limits would turn per-instance exactly when they
    matter most.
    """

    def __init__(self, client: RedisClient, *, budget: float) -> None:
        self._client = client
        self.budget = budget
        self._cluster = isinstance(client, RedisCluster)
        self._pending: list[tuple[list[list[Any]], asyncio.Future[list[int]]]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def check(self, keys: Sequence[str], rates: Sequence[Rate], enforce: Sequence[bool]) -> list[int]:
        """Each key's backlog before this request, as MemoryStore.check; raises on Redis trouble."""
        args = [value for rate, enforcing in zip(rates, enforce, strict=True) for value in _arguments(rate, enforcing)]
        if self._cluster:
            calls = [[1, key, *args[3 * index : 3 * index + 3]] for index, key in enumerate(keys)]
        else:
            calls = [[len(keys), *keys, *args]]
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._pending.append((calls, future))
        if self._in_flight < _MAX_PIPELINES_IN_FLIGHT and len(self._pending) == 1:
            # Sent at the end of this event-loop turn, with every check queued during it.
            asyncio.get_running_loop().call_soon(self._send_pending)
        return await future

    def _send_pending(self) -> None:
        if not self._pending or self._in_flight >= _MAX_PIPELINES_IN_FLIGHT:
            return
        batch, self._pending = self._pending, []
        self._in_flight += 1
        task = asyncio.create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._in_flight -= 1
        self._send_pending()

    async def _send(self, batch: list[tuple[list[list[Any]], asyncio.Future[list[int]]]]) -> None:
        calls = [call for call_list, _ in batch for call in call_list]
        try:
            async with asyncio.timeout(self.budget):
                results = await self._evalsha_all(calls)
        except Exception as exc:  # every waiting request must hear about it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        position = 0
        for call_list, future in batch:
            replies = results[position : position + len(call_list)]
            position += len(call_list)
            if future.done():  # its request stopped waiting (time budget)
                continue
            error = next((reply for reply in replies if isinstance(reply, Exception)), None)
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result([int(backlog) for reply in replies for backlog in reply])

    async def _evalsha_all(self, calls: list[list[Any]]) -> list[Any]:
        results = await self._pipeline(calls)
        missing = [index for index, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:
            # Redis restarted or its script cache was flushed: load it again, retry just those.
            await self._client.script_load(GCRA_SCRIPT)
            for index, result in zip(missing, await self._pipeline([calls[i] for i in missing]), strict=True):
                results[index] = result
        return results

    async def _pipeline(self, calls: list[list[Any]]) -> list[Any]:
        if self._cluster:
            # redis-py refuses scripts in cluster pipelines; concurrent calls still cost one
            # round trip per node in parallel, routed by each call's key.
            replies = asyncio.gather(*(self._client.evalsha(GCRA_SHA, *call) for call in calls), return_exceptions=True)
            return list(await replies)
        pipe = self._client.pipeline(transaction=False)
        for call in calls:
            pipe.evalsha(GCRA_SHA, *call)
        return await pipe.execute(raise_on_error=False)

    async def warm_up(self) -> None:
        """Open a connection per pipeline that may be in flight and load the script, before the
        first burst needs them: connecting inside a request's budget under load measured 150 ms
        here. A Redis that is down now is the fallback's business, not a reason to fail the start."""
        try:
            async with asyncio.timeout(_SOCKET_TIMEOUT):
                await asyncio.gather(
                    self._client.script_load(GCRA_SCRIPT),
                    *(self._client.ping() for _ in range(_MAX_PIPELINES_IN_FLIGHT - 1)),
                )
        except Exception:  # noqa: S110 - the first check reports and counts the trouble
            pass

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self._client.aclose()


def _arguments(rate: Rate, enforcing: bool) -> tuple[int, int, int]:
    return rate.interval_us, rate.tolerance_us, 1 if enforcing else 0
