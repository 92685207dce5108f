"""Turns upstream settings into the objects that talk to it: origin, TLS context, pool."""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

from guardproxy.config import UpstreamSettings
from guardproxy.proxy.pool import ConnectionPool, Origin


def upstream_origin(settings: UpstreamSettings) -> Origin:
    parts = urlsplit(settings.url)
    assert parts.hostname is not None  # guaranteed by UpstreamSettings' validation
    default_port = 443 if parts.scheme == "https" else 80
    return Origin(scheme=parts.scheme, host=parts.hostname, port=parts.port or default_port)


def upstream_ssl_context(settings: UpstreamSettings) -> ssl.SSLContext | None:
    if urlsplit(settings.url).scheme != "https":
        return None
    context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    if not settings.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    # The pool speaks HTTP/1.1 only; say so, so an ALPN-aware upstream does not pick h2.
    context.set_alpn_protocols(["http/1.1"])
    return context


def build_pool(settings: UpstreamSettings) -> ConnectionPool:
    return ConnectionPool(
        upstream_origin(settings),
        max_connections=settings.max_connections,
        max_idle_connections=settings.max_idle_connections,
        idle_timeout=settings.idle_timeout,
        ssl_context=upstream_ssl_context(settings),
        max_head_bytes=settings.max_response_head_bytes,
        max_header_fields=settings.max_response_header_fields,
    )
