"""How an exchange with the upstream can fail, in the terms the forwarder answers with."""


class UpstreamError(Exception):
    """The upstream could not be used for this request."""

    kind = "error"

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        # What the failed attempt had done, for the retry decision (proxy/retry.py): whether a
        # byte of the request went out, and whether a byte of a response came back.
        self.written = False
        self.received = False


class UpstreamConnectError(UpstreamError):
    """No connection: refused, unreachable, DNS failure or TLS handshake failure (502)."""

    kind = "connect"


class UpstreamClosedError(UpstreamError):
    """The upstream closed or reset the connection before the response was complete (502)."""

    kind = "closed"


class UpstreamProtocolError(UpstreamError):
    """The upstream's response is not valid HTTP/1.1 (502)."""

    kind = "protocol"


class UpstreamTimeoutError(UpstreamError):
    """Connecting, or waiting for the upstream's next bytes, took longer than allowed (504)."""

    kind = "timeout"


class PoolExhaustedError(UpstreamError):
    """Every pooled connection stayed busy for the whole connect timeout (503)."""

    kind = "pool_exhausted"


class NoEndpointError(UpstreamError):
    """Every endpoint of the upstream is out of the balancing (circuit open, held back after a
    503 with Retry-After): 503 at once, with Retry-After."""

    kind = "no_endpoint"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after
