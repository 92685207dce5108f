"""Forwarding to the upstream: the ASGI forwarder and the keep-alive connection pool under it."""
