"""How an exchange with the upstream can fail, in the terms the forwarder answers with."""


class UpstreamError(Exception):
    """The upstream could not be used for this request."""

    kind = "error"


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
