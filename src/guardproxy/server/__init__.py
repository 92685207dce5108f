"""Serving: processes and listeners (`process`), and the HTTP/1.1 protocol under the proxy
listener (`protocol` for connections, `exchange` for one request and its response)."""

from guardproxy.server.process import StartupError, run

__all__ = ["StartupError", "run"]
