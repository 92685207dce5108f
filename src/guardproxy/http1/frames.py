"""Where a WebSocket byte stream is between frames (RFC 6455 §5.2), without keeping any payload:
enough to know when a frame of guardproxy's own (a close frame at shutdown) can be put in
between, and nothing more. Frames are never parsed for their content or checked."""

from __future__ import annotations

import os

# RFC 6455 §7.4.1: 1001, the endpoint is going away (a server going down).
GOING_AWAY = (1001).to_bytes(2, "big")
# A close frame from the server's side: unmasked (§5.1).
CLOSE_TO_CLIENT = b"\x88\x02" + GOING_AWAY


def close_to_server() -> bytes:
    """A close frame as a client sends it: masked, with a fresh key (§5.3)."""
    key = os.urandom(4)
    return b"\x88\x82" + key + bytes(byte ^ key[index] for index, byte in enumerate(GOING_AWAY))


def _header_size(header: bytes) -> int | None:
    """The size of the frame header that begins `header`, or None with fewer than 2 bytes."""
    if len(header) < 2:
        return None
    length = header[1] & 0x7F
    extended = 2 if length == 126 else 8 if length == 127 else 0
    return 2 + extended + (4 if header[1] & 0x80 else 0)


def _payload_size(header: bytes) -> int:
    length = header[1] & 0x7F
    if length == 126:
        return int.from_bytes(header[2:4], "big")
    if length == 127:
        return int.from_bytes(header[2:10], "big")
    return length


class FrameCursor:
    __slots__ = ("_header", "_remaining")

    def __init__(self) -> None:
        self._header = b""  # the start of a frame header split across reads
        self._remaining = 0  # payload bytes of the current frame still to come

    @property
    def at_boundary(self) -> bool:
        return not self._remaining and not self._header

    def feed(self, data: bytes) -> None:
        size = len(data)
        if self._remaining >= size:  # the usual case with large frames: all payload
            self._remaining -= size
            return
        index, self._remaining = self._remaining, 0
        pending = self._header
        while index < size:
            header = pending + data[index : index + 14] if pending else data[index : index + 14]
            header_size = _header_size(header)
            if header_size is None or len(header) < header_size:
                self._header = header  # the rest of the header is in a later read
                return
            index += header_size - len(pending)
            pending = b""
            payload = _payload_size(header)
            if payload >= size - index:
                self._remaining = payload - (size - index)
                self._header = b""
                return
            index += payload
        self._header = pending
