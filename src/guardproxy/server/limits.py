"""What a client connection may do, and the switch that tells connections the server is draining."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    # Seconds a client has for a whole request head, from the connection opening or the previous
    # response ending. Bytes trickling in do not extend it (uvicorn's timer restarts on each).
    head_timeout: float = 10.0
    # Seconds an idle keep-alive connection stays open.
    keep_alive_timeout: float = 5.0
    # Seconds a request body may go without a byte arriving before the client gets 408.
    body_timeout: float = 30.0
    # Request line and header fields together, in bytes (431 past it).
    max_head_bytes: int = 16 * 1024
    max_header_fields: int = 100  # 431 past it
    max_uri_bytes: int = 8 * 1024  # 414 past it


class Lifecycle:
    """Shared by every connection of a worker. While draining, each response says
    `Connection: close`, so clients move to other instances as their requests finish."""

    def __init__(self) -> None:
        self.draining = False
