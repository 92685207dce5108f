"""Raw sockets on both sides of the proxy, for the bytes no HTTP client library will send."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httptools


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send `data`, then read until the server closes the connection (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_until_close(sock, timeout)


def read_until_close(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    with contextlib.suppress(OSError):  # a timeout or a reset ends the reading too
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class ParsedResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    complete: bool

    def header(self, name: bytes) -> bytes | None:
        values = [value for key, value in self.headers if key == name]
        return values[0] if values else None

    def header_values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]


def parse_responses(data: bytes) -> list[ParsedResponse]:
    """Every response in a byte stream (several when requests were pipelined)."""
    responses: list[ParsedResponse] = []

    class Collector:
        def __init__(self) -> None:
            self.current: ParsedResponse | None = None

        def on_message_begin(self) -> None:
            self.current = ParsedResponse(0, [], b"", False)
            responses.append(self.current)

        def on_header(self, name: bytes, value: bytes) -> None:
            assert self.current is not None
            self.current.headers.append((name.lower(), value))

        def on_headers_complete(self) -> None:
            assert self.current is not None
            self.current.status = parser.get_status_code()

        def on_body(self, body: bytes) -> None:
            assert self.current is not None
            self.current.body += body

        def on_message_complete(self) -> None:
            assert self.current is not None
            self.current.complete = True

    parser = httptools.HttpResponseParser(Collector())
    with contextlib.suppress(httptools.HttpParserError):
        parser.feed_data(data)
    return responses


def request_bytes(method: str, target: str, headers: list[tuple[str, str]] | None = None, body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: test.local"]
    lines += [f"{name}: {value}" for name, value in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class RawUpstream:
    """A scripted upstream: each accepted connection is handed to `handler` in its own thread."""

    handler: Callable[[socket.socket, int], None]
    port: int = 0
    connections: int = 0
    received: list[bytes] = field(default_factory=list)
    _server: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def serve(self) -> None:
        assert self._server is not None
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            index = self.connections
            self.connections += 1
            threading.Thread(target=self._run, args=(conn, index), daemon=True).start()

    def _run(self, conn: socket.socket, index: int) -> None:
        with contextlib.suppress(OSError), conn:
            self.handler(conn, index)


@contextlib.contextmanager
def raw_upstream(handler: Callable[[socket.socket, int], None]) -> Iterator[RawUpstream]:
    server = socket.create_server(("127.0.0.1", 0))
    upstream = RawUpstream(handler, port=server.getsockname()[1], _server=server)
    thread = threading.Thread(target=upstream.serve, daemon=True)
    thread.start()
    try:
        yield upstream
    finally:
        server.close()


def read_request_head(conn: socket.socket, timeout: float = 5.0) -> bytes:
    """Read one request head (up to the blank line) from an upstream-side socket."""
    conn.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data
