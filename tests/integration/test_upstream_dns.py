"""Endpoints from DNS (proxy/dns.py) over real sockets: a resolver the test controls answers
with loopback addresses (127.0.0.2, 127.0.0.3) where real upstreams listen on one port, and the
real transport balances over them, follows changes, and keeps the last answer through failures."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from guardproxy.config import Settings
from guardproxy.proxy.dns import DnsEndpoints
from guardproxy.proxy.errors import NoEndpointError
from guardproxy.proxy.resilient import ResilientTransport
from guardproxy.proxy.transport import UpstreamRequest
from guardproxy.upstream import build_transport
from tests.support.raw import RawUpstream, read_request_head

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def serve_on(address: str, port: int, seen: Counter[str]) -> RawUpstream:
    def handler(conn: socket.socket, _: int) -> None:
        while read_request_head(conn):
            seen[address] += 1
            conn.sendall(OK)

    server = socket.create_server((address, port))
    upstream = RawUpstream(handler, port=port, _server=server)
    threading.Thread(target=upstream.serve, daemon=True).start()
    return upstream


@pytest.fixture
def upstreams() -> Iterator[tuple[int, Counter[str]]]:
    probe = socket.create_server(("127.0.0.2", 0))
    port = probe.getsockname()[1]
    probe.close()
    seen: Counter[str] = Counter()
    servers = [serve_on(address, port, seen) for address in ("127.0.0.2", "127.0.0.3")]
    yield port, seen
    for server in servers:
        assert server._server is not None
        server._server.close()


class Answers:
    """The resolver under the test's control."""

    def __init__(self, *addresses: str) -> None:
        self.addresses: list[str] | OSError = list(addresses)
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        if isinstance(self.addresses, OSError):
            raise self.addresses
        return list(self.addresses)


def request() -> UpstreamRequest:
    return UpstreamRequest(
        method=b"GET",
        target=b"/",
        headers=[(b"host", b"api.test")],
        body=None,
        content_length=None,
        connect_timeout=1.0,
        read_timeout=1.0,
    )


async def send(transport: ResilientTransport, count: int) -> list[int]:
    statuses = []
    for _ in range(count):
        response = await transport.send(request())
        while await response.read_chunk():
            pass
        response.close()
        statuses.append(response.status)
    return statuses


async def started(port: int, answers: Answers) -> tuple[ResilientTransport, DnsEndpoints]:
    settings = Settings(upstream={"url": f"http://api.test:{port}", "dns_ttl": 3600})  # type: ignore[arg-type]
    transport = build_transport(settings, resolver=answers)
    assert isinstance(transport, ResilientTransport)
    await transport.start()
    assert isinstance(transport.refresher, DnsEndpoints)
    return transport, transport.refresher


async def test_each_address_is_an_endpoint_with_traffic(upstreams: tuple[int, Counter[str]]) -> None:
    port, seen = upstreams
    answers = Answers("127.0.0.2", "127.0.0.3")
    transport, _ = await started(port, answers)
    try:
        assert await send(transport, 40) == [200] * 40
        assert answers.asked == [("api.test", port)]
        assert [endpoint.name for endpoint in transport.endpoints] == [f"127.0.0.2:{port}", f"127.0.0.3:{port}"]
        assert seen["127.0.0.2"] > 5
        assert seen["127.0.0.3"] > 5
    finally:
        await transport.aclose()


async def test_an_address_that_goes_away_gets_no_more_traffic(upstreams: tuple[int, Counter[str]]) -> None:
    port, seen = upstreams
    answers = Answers("127.0.0.2", "127.0.0.3")
    transport, dns = await started(port, answers)
    try:
        await send(transport, 10)
        kept = transport.endpoints[1]
        answers.addresses = ["127.0.0.3"]
        await dns.refresh()
        before = Counter(seen)
        assert await send(transport, 20) == [200] * 20
        assert seen["127.0.0.2"] == before["127.0.0.2"]
        assert seen["127.0.0.3"] == before["127.0.0.3"] + 20
        assert transport.endpoints == [kept]  # the same endpoint, its pool and breaker kept
        answers.addresses = ["127.0.0.3", "127.0.0.2"]
        await dns.refresh()
        await send(transport, 20)
        assert seen["127.0.0.2"] > before["127.0.0.2"]
    finally:
        await transport.aclose()


@pytest.mark.parametrize("failure", [OSError("no such host"), []], ids=["error", "empty"])
async def test_a_failed_lookup_keeps_the_last_addresses(
    upstreams: tuple[int, Counter[str]], failure: OSError | list[str]
) -> None:
    port, _ = upstreams
    answers = Answers("127.0.0.2", "127.0.0.3")
    transport, dns = await started(port, answers)
    try:
        answers.addresses = failure
        await dns.refresh()
        assert len(transport.endpoints) == 2
        assert await send(transport, 4) == [200] * 4
    finally:
        await transport.aclose()


async def test_no_address_yet_fails_fast_instead_of_hanging(upstreams: tuple[int, Counter[str]]) -> None:
    port, _ = upstreams
    answers = Answers()
    answers.addresses = OSError("no such host")
    transport, _ = await started(port, answers)
    try:
        with pytest.raises(NoEndpointError):
            await asyncio.wait_for(transport.send(request()), timeout=5)
    finally:
        await transport.aclose()


async def test_the_name_is_resolved_again_every_ttl(upstreams: tuple[int, Counter[str]]) -> None:
    port, _ = upstreams
    answers = Answers("127.0.0.2")
    settings = Settings(upstream={"url": f"http://api.test:{port}", "dns_ttl": 0.05})  # type: ignore[arg-type]
    transport = build_transport(settings, resolver=answers)
    assert isinstance(transport, ResilientTransport)
    await transport.start()
    try:
        answers.addresses = ["127.0.0.3"]
        for _ in range(100):  # bounded: up to 5 s
            if [endpoint.name for endpoint in transport.endpoints] == [f"127.0.0.3:{port}"]:
                break
            await asyncio.sleep(0.05)
        assert [endpoint.name for endpoint in transport.endpoints] == [f"127.0.0.3:{port}"]
    finally:
        await transport.aclose()
