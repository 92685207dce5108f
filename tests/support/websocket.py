"""Helpers for the WebSocket tunnel tests: the WebSocket upstream process, raw handshakes, and
the resident memory of a process."""

from __future__ import annotations

import base64
import socket

from tests.support.processes import SUPPORT_DIR, UpstreamProcess, start_support_server

KEY = base64.b64encode(b"0123456789abcdef").decode()
# RFC 6455 §1.3's example: this key's accept value.
SAMPLE_KEY, SAMPLE_ACCEPT = "dGhlIHNhbXBsZSBub25jZQ==", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def start_ws_upstream() -> UpstreamProcess:
    return start_support_server(SUPPORT_DIR / "ws_upstream.py")


def handshake(path: str = "/echo", fields: dict[str, str] | None = None, *, method: str = "GET") -> bytes:
    """A WebSocket opening handshake's head; `fields` adds to or replaces (None values drop)
    the usual fields."""
    usual: dict[str, str | None] = {
        "Host": "127.0.0.1",
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Key": KEY,
        "Sec-WebSocket-Version": "13",
    }
    usual.update(fields or {})
    lines = [f"{method} {path} HTTP/1.1"] + [f"{name}: {value}" for name, value in usual.items() if value is not None]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def open_raw(port: int, head: bytes, timeout: float = 5.0) -> tuple[socket.socket, bytes]:
    """Send a handshake; return the socket and the response head (with whatever followed it)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(head)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return sock, data


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def masked_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """A client frame (masked, as RFC 6455 §5.3 requires), final, with a zero mask."""
    header = bytes([0x80 | opcode])
    size = len(payload)
    if size < 126:
        header += bytes([0x80 | size])
    elif size < 65536:
        header += bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        header += bytes([0x80 | 127]) + size.to_bytes(8, "big")
    return header + b"\0\0\0\0" + payload
