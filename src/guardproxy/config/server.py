"""Settings of the listeners and of the upstream guardproxy forwards to."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import (
    Field,
    NonNegativeFloat,
    PositiveFloat,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    NoDecode,
)

from guardproxy.config.base import Address, CommaList, ListenAddress, Section, default_address
from guardproxy.config.resilience import (
    Balance,
    CircuitBreakerSettings,
    Endpoints,
    EndpointSettings,
    RetryOverride,
    RetrySettings,
    check_endpoints,
    check_url_among,
    first_endpoint_url,
)


class ServerSettings(Section):
    listen: ListenAddress = default_address("0.0.0.0:8080")
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    # Seconds an idle keep-alive client connection is kept open.
    keep_alive_timeout: PositiveFloat = 5.0
    # Seconds a client has to deliver a whole request head, counted from the connection opening
    # or the previous response ending; trickling bytes does not extend it (408).
    request_head_timeout: PositiveFloat = 10.0
    # Seconds a request body may go without a byte arriving (408).
    request_body_timeout: PositiveFloat = 30.0
    max_request_head_bytes: Annotated[int, Field(ge=1024)] = 16 * 1024  # 431
    max_header_fields: Annotated[int, Field(ge=8)] = 100  # 431
    max_uri_bytes: Annotated[int, Field(ge=256)] = 8 * 1024  # 414
    # On SIGTERM/SIGINT: /readyz answers 503 at once, the listener keeps accepting for
    # drain_delay seconds (so load balancers take the instance out), then requests in flight
    # get shutdown_timeout seconds to finish before they are cut.
    drain_delay: NonNegativeFloat = 5.0
    shutdown_timeout: PositiveFloat = 30.0
    # Terminate TLS on the proxy listener with this certificate chain and key (PEM files).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # A plain-HTTP listener that only redirects to https:// (the proxy listener, with TLS).
    redirect_listen: Annotated[Address, NoDecode] | None = None
    # The port put in those redirects' Locations (the port clients reach the TLS listener on).
    https_port: Annotated[int, Field(ge=1, le=65535)] = 443

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_cert is not None and self.tls_key is not None:
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(self.tls_cert, self.tls_key)
            except (OSError, ssl.SSLError) as exc:
                reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or "not a certificate and key"
                raise ValueError(f"cannot load tls_cert/tls_key: {reason}") from None
        if self.redirect_listen is not None and self.tls_cert is None:
            raise ValueError("redirect_listen needs tls_cert and tls_key (it redirects to the TLS listener)")
        return self


class AdminSettings(Section):
    # Loopback by default: probes and metrics are for the platform, not for the internet.
    listen: ListenAddress = default_address("127.0.0.1:9090")


class HealthCheckSettings(Section):
    interval: PositiveFloat = 2.0
    timeout: PositiveFloat = 1.0
    # Without a path the probe only opens a TCP connection; with one it sends `GET path` and
    # wants a status below 500.
    path: str | None = None
    # With a path: the statuses that count as healthy (empty: any below 500).
    expected_status: list[Annotated[int, Field(ge=100, le=599)]] = []
    # Probes in a row that take an endpoint out of (unhealthy_after failed) or back into
    # (healthy_after passed) the balancing.
    unhealthy_after: Annotated[int, Field(ge=1)] = 2
    healthy_after: Annotated[int, Field(ge=1)] = 1

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value


def check_origin(value: str) -> str:
    """An http(s) origin only: scheme://host[:port], no path, query or credentials."""
    parts = urlsplit(value)
    if "@" in parts.netloc:
        # Credentials in the URL would be printed by check-config and sent by the probe.
        raise ValueError("must not contain credentials")
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    if not parts.hostname:
        raise ValueError(f"has no host: {value!r}")
    try:
        parts.port  # noqa: B018 - evaluated for its validation
    except ValueError:
        raise ValueError(f"has an invalid port: {value!r}") from None
    if parts.path not in ("", "/") or "?" in value or "#" in value or value.endswith(":"):
        raise ValueError(f"must be an origin only (scheme://host[:port]), got {value!r}")
    return value


class UpstreamSettings(Section):
    # The upstream's origin; with `endpoints` it may be left out (the first endpoint's is used).
    url: str
    # Several instances of the upstream (urls, or {url, name}), balanced and retried across.
    endpoints: Endpoints = []
    balance: Balance = "least_in_flight"
    retries: RetrySettings = RetrySettings()
    circuit_breaker: CircuitBreakerSettings = CircuitBreakerSettings()
    # Seconds between resolutions of url's host name: each address it resolves to becomes an
    # endpoint (a headless Kubernetes Service, compose replicas). None: resolved per connection.
    dns_ttl: PositiveFloat | None = None
    connect_timeout: PositiveFloat = 5.0
    read_timeout: PositiveFloat = 60.0
    # Seconds for the whole exchange, body included; None: no limit, so streams and long
    # downloads are never cut by it. Best set per route.
    total_timeout: PositiveFloat | None = None
    # Send the client's Host header upstream (apps build URLs from it) instead of the upstream's.
    preserve_host: bool = True
    max_connections: Annotated[int, Field(ge=1)] = 1000
    max_idle_connections: Annotated[int, Field(ge=0)] = 100
    # Below the keep-alive timeout of common servers (uvicorn and Node: 5 s) so the upstream is
    # rarely the one to close an idle pooled connection first.
    idle_timeout: PositiveFloat = 4.0
    verify_tls: bool = True
    ca_file: Path | None = None
    health_check: HealthCheckSettings = HealthCheckSettings()
    # The upstream's response head (status line and fields, interim responses included) and its
    # trailer section: bytes and field count. Past either: 502, nothing buffered beyond it.
    max_response_head_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024
    max_response_header_fields: Annotated[int, Field(ge=8)] = 200
    # Pass the upstream's chunked trailer fields on as trailers to clients that can take them
    # (HTTP/1.1, a chunked response, TE: trailers in the request); false drops them always.
    # Never merged into the header section; framing, auth, cookie and similar fields never pass.
    forward_trailers: bool = True

    # Location, Content-Location and Refresh values in the upstream's responses that point at its
    # own origin (url) or at one of internal_origins become the origin the client used (like
    # nginx's proxy_redirect default); see guards/upstream_redirects.py.
    rewrite_redirects: bool = True
    # Other origins the upstream believes it has: the address it binds, an internal name.
    internal_origins: CommaList = []
    # Also turn Set-Cookie Domain=<an internal host> into the host the client used.
    rewrite_cookie_domains: bool = False

    @model_validator(mode="before")
    @classmethod
    def _url_from_endpoints(cls, values: object) -> object:
        if isinstance(values, dict) and values.get("url") is None and values.get("endpoints"):
            url = first_endpoint_url(values["endpoints"])
            if url is not None:
                return {**values, "url": url}
        return values

    @field_validator("url")
    @classmethod
    def _origin_only(cls, value: str) -> str:
        return check_origin(value)

    @field_validator("endpoints")
    @classmethod
    def _endpoint_origins(cls, value: list[EndpointSettings]) -> list[EndpointSettings]:
        return check_endpoints(value, check_origin)

    @model_validator(mode="after")
    def _url_among_endpoints(self) -> UpstreamSettings:
        check_url_among(self.url, self.endpoints)
        if self.dns_ttl is not None and self.endpoints:
            raise ValueError("upstream.dns_ttl makes endpoints of url's addresses: leave upstream.endpoints out")
        return self

    @field_validator("internal_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            try:
                check_origin(origin)
            except ValueError as exc:
                raise ValueError(f"{origin!r}: {exc}") from None
        return value

    @field_validator("ca_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                ssl.create_default_context(cafile=str(value))
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"cannot load CA file {str(value)!r}: {exc.strerror or exc}") from None
        return value


class TimeoutOverrides(Section):
    connect_timeout: PositiveFloat | None = None
    read_timeout: PositiveFloat | None = None
    total_timeout: PositiveFloat | None = None
    retries: RetryOverride = RetryOverride()
