"""Targets for the audit tests: the weak upstream as a real process, and loopback servers that
cannot be audited at all (a black hole that never answers, one that speaks random bytes) or that
stall half-way (answer once, then hold every later connection open without a word)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator

from tests.support.processes import SUPPORT_DIR, UpstreamProcess, start_support_server


def start_weak_upstream() -> UpstreamProcess:
    return start_support_server(SUPPORT_DIR / "weak_upstream.py")


@contextlib.contextmanager
def black_hole() -> Iterator[int]:
    """A port whose kernel completes every handshake (the listen backlog) but where nothing ever
    reads or answers: what a hung server or a stuck load balancer looks like from outside."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


@contextlib.contextmanager
def garbage_server() -> Iterator[int]:
    """A port that answers every connection with random bytes, then closes it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            with conn, contextlib.suppress(OSError):
                conn.sendall(b"\x16\x03\x01" + os.urandom(509))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(sock.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=2)
        sock.close()


@contextlib.contextmanager
def stalls_after_one_answer() -> Iterator[int]:
    """A port that answers the first request with a 200, then accepts every later connection and
    never says anything: an audit gets past its first request and then meets only silence."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    sock.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        answered = False
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            if answered:
                held.append(conn)  # kept open, never read, never answered
                continue
            answered = True
            with conn, contextlib.suppress(OSError):
                conn.settimeout(2)
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(sock.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=2)
        for conn in held:
            conn.close()
        sock.close()
