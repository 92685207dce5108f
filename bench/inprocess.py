"""guardproxy's whole Python request path in one process, without sockets: repeatable figures.

The real protocol, guard chain, forwarder, pool and upstream connection serve `--requests`
requests over `--connections` client connections, but both transports are fakes: a request's
bytes are fed to the protocol, and every upstream write is answered with nginx's response from
bench/nginx-upstream.conf. No system call is made per request, so the figure is the Python
(and C extension) work alone, the part of a request that code changes move.

Settings come from the environment as for `guardproxy run` (GUARDPROXY_...), with the defaults
otherwise. The access log goes to stdout: send it to /dev/null.

  python bench/inprocess.py > /dev/null                         CPU µs per request (noisy)
  python bench/inprocess.py --client-fields > /dev/null         the same with a browser's dozen fields
  valgrind --tool=callgrind --collect-atstart=no --toggle-collect=uv_run \\
      python bench/inprocess.py --requests 2000 > /dev/null     instructions, exactly repeatable:
                                                                "Collected" / requests
Only the request loop runs inside uv_run; settings and the application are built before it.
Compare two checkouts with PYTHONPATH=/other/checkout/src.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from collections.abc import Callable
from typing import Any

import uvloop
from prometheus_client import CollectorRegistry

from guardproxy.config import Settings
from guardproxy.observability.metrics import ProxyMetrics
from guardproxy.proxy.connection import UpstreamConnection
from guardproxy.runtime import Runtime
from guardproxy.server.limits import Lifecycle
from guardproxy.server.protocol import ProxyHttpProtocol

# What wrk sends, and what the benchmark's upstream answers.
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
# What a browser or an SDK sends besides (--client-fields): a dozen fields is the usual request.
CLIENT_FIELDS = (
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: application/json, text/plain, */*\r\n"
    b"Accept-Language: en-GB,en;q=0.7\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Origin: https://app.example.com\r\n"
    b"Referer: https://app.example.com/orders\r\n"
    b"Cookie: session=4f1c2a9e8b7d6c5f; theme=dark\r\n"
    b"Sec-Fetch-Dest: empty\r\n"
    b"Sec-Fetch-Mode: cors\r\n"
    b"Sec-Fetch-Site: same-site\r\n"
    b"Connection: keep-alive\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 22 Nov 2026 11:00:00 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: 49\r\nConnection: keep-alive\r\n\r\n"
    b'{"id":1,"name":"guardproxy","ok":true,"n":12345}\n'
)


class FakeTransport(asyncio.Transport):
    def __init__(self, loop: asyncio.AbstractEventLoop, on_write: Any) -> None:
        super().__init__()
        self._loop = loop
        self._on_write = on_write

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._on_write(bytes(data))

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        raise AssertionError("a connection was closed: the benchmark expects keep-alive throughout")

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Clients:
    """Keeps every client connection busy until `total` responses have come back."""

    def __init__(self, loop: asyncio.AbstractEventLoop, total: int, request: bytes) -> None:
        self.loop = loop
        self.total = total
        self.request = request
        self.sent = 0
        self.answered = 0
        self.done: asyncio.Future[None] = loop.create_future()

    def connect(self, runtime: Runtime, state: Any, config: Any) -> None:
        protocol = ProxyHttpProtocol(config, state, _loop=self.loop, site=lambda: runtime.proxy, lifecycle=Lifecycle())

        def on_response(data: bytes) -> None:
            if not data.startswith(b"HTTP/1.1 200 "):
                raise AssertionError(f"unexpected response: {data[:200]!r}")
            self.answered += 1
            if self.sent < self.total:
                self.send(protocol)
            elif self.answered == self.total:
                self.done.set_result(None)

        protocol.connection_made(FakeTransport(self.loop, on_response))
        self.send(protocol)

    def send(self, protocol: ProxyHttpProtocol) -> None:
        self.sent += 1
        self.loop.call_soon(protocol.data_received, self.request)


class BenchLoop(uvloop.Loop):
    """uvloop whose outgoing connections are fakes that answer each request at the next loop turn,
    as a fast upstream would. The pool's own protocol factory builds the connection, so the
    compiled build (whose instances cannot be monkeypatched) runs unchanged."""

    async def create_connection(  # type: ignore[override]
        self, protocol_factory: Callable[[], UpstreamConnection], host: str, port: int, **_: Any
    ) -> tuple[asyncio.Transport, UpstreamConnection]:
        connection = protocol_factory()
        transport = FakeTransport(self, lambda _: self.call_soon(connection.data_received, RESPONSE))
        connection.connection_made(transport)
        return transport, connection


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30_000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--client-fields", action="store_true", help="requests carry a browser's dozen header fields, not wrk's one"
    )
    options = parser.parse_args()

    settings = Settings(upstream={"url": "http://127.0.0.1:8000"})
    metrics = ProxyMetrics(CollectorRegistry()) if settings.metrics.enabled else None
    runtime = Runtime(settings, lifecycle=Lifecycle(), metrics=metrics)

    class Config:  # what uvicorn would hand ProxyHttpProtocol (unused: the site gives the app)
        loaded = True

    class ServerState:  # what it reads from uvicorn's server state
        connections: set[Any] = set()  # noqa: RUF012
        tasks: set[Any] = set()  # noqa: RUF012

    async def serve() -> float:
        request = REQUEST[:-2] + CLIENT_FIELDS + b"\r\n" if options.client_fields else REQUEST
        clients = Clients(asyncio.get_running_loop(), options.requests, request)
        started = time.process_time()
        for _ in range(options.connections):
            clients.connect(runtime, ServerState, Config)
        await clients.done
        return time.process_time() - started

    # As the server does (server/process.py).
    gc.freeze()
    gc.set_threshold(20_000, *gc.get_threshold()[1:])
    with asyncio.Runner(loop_factory=BenchLoop) as runner:
        seconds = runner.run(serve())
    print(f"{seconds * 1e6 / options.requests:.1f} µs CPU per request, in process", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
