"""Endpoints from one DNS name: every `ttl` seconds the name of `upstream.url` is resolved again
and each address becomes an endpoint (its own pool and breaker), as a headless Kubernetes
Service or docker-compose replicas publish them. Addresses that appear get an endpoint, those
that disappear leave the balancing (their pools close once their exchanges end), the others keep
theirs, with their connections and breaker state. A failed or empty resolution keeps the last
good set: a DNS hiccup must not take every endpoint away.

The resolver is injectable, so a test decides the answers while the sockets stay real.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable

import structlog

from guardproxy.proxy.endpoints import Endpoint
from guardproxy.proxy.resilient import ResilientTransport

log = structlog.get_logger(component="guardproxy.proxy")

Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses the system resolver gives for host, in its order, each once."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class DnsEndpoints:
    def __init__(
        self,
        transport: ResilientTransport,
        *,
        host: str,
        port: int,
        ttl: float,
        make_endpoint: Callable[[str], Endpoint],
        resolver: Resolver = system_resolver,
    ) -> None:
        self._transport = transport
        self._host = host
        self._port = port
        self._ttl = ttl
        self._make_endpoint = make_endpoint
        self._resolver = resolver
        self._task: asyncio.Task[None] | None = None
        self.addresses: list[str] = []

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._run())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def refresh(self) -> None:
        try:
            addresses = await self._resolver(self._host, self._port)
        except OSError as exc:
            log.warning("upstream name did not resolve: keeping the last addresses", error=exc.__class__.__name__)
            return
        if not addresses:
            log.warning("upstream name resolved to nothing: keeping the last addresses")
            return
        if addresses == self.addresses:
            return
        current = {endpoint.url: endpoint for endpoint in self._transport.endpoints}
        kept = [
            current.pop(url) if url in current else self._make_endpoint(address)
            for address, url in self._urls(addresses)
        ]
        self._transport.set_endpoints(kept)
        log.info("upstream name resolved", addresses=addresses, previous=self.addresses)
        self.addresses = addresses
        for gone in current.values():
            await gone.pool.aclose()

    def _urls(self, addresses: list[str]) -> list[tuple[str, str]]:
        scheme = self._transport.scheme
        return [(address, address_url(scheme, address, self._port)) for address in addresses]

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._ttl)
            await self.refresh()


def address_url(scheme: str, address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{scheme}://{host}:{port}"
