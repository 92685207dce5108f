"""HTTP to HTTPS behind a trusted TLS-terminating proxy (checklist item 14).

Only when a trusted proxy reported `http`: guardproxy never guesses the outside scheme, which is
how redirect loops behind load balancers happen. The Location is built from the canonical host,
or from a Host the allowed-hosts guard has already vetted; never from an unchecked Host, which
would let anyone aim the redirect (and any cache that stores it) elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from guardproxy.answer import Answer
from guardproxy.asgi import Scope
from guardproxy.context import RequestContext
from guardproxy.guards.chain import Guard
from guardproxy.guards.hosts import split_port
from guardproxy.outcomes import Outcome
from guardproxy.routes import compile_path_pattern

_SAFE_METHODS: Final = frozenset({"GET", "HEAD"})


def redirect_status(configured: int, method: str) -> int:
    """301 is only for GET/HEAD (browsers turn a redirected POST into a GET); keep the method
    otherwise with 307."""
    if configured == 301 and method not in _SAFE_METHODS:
        return 307
    return configured


def https_location(host: bytes, scope: Scope) -> bytes:
    location: bytes = b"https://" + host + scope["raw_path"]
    if scope["query_string"]:
        location += b"?" + scope["query_string"]
    return location


class HttpsRedirectGuard(Guard):
    def __init__(self, *, status: int, exempt_paths: Iterable[str], canonical_host: str | None, hosts_vetted: bool):
        self.status = status
        self.exempt = tuple(compile_path_pattern(pattern) for pattern in exempt_paths)
        self.canonical_host = canonical_host.encode("ascii") if canonical_host else None
        self.hosts_vetted = hosts_vetted

    def on_request(self, scope: Scope, context: RequestContext) -> Answer | None:
        if not context.scheme_from_proxy or context.scheme != "http":
            return None
        if any(pattern.match(scope["path"]) for pattern in self.exempt):
            return None
        host = self.canonical_host or (split_port(context.host) if self.hosts_vetted else None)
        if not host:
            return None  # no host that is safe to put in a Location: serve instead
        context.outcome = Outcome.HTTPS_REDIRECT
        status = redirect_status(self.status, scope["method"])
        return Answer(status, [(b"location", https_location(host, scope)), (b"content-length", b"0")])


class RedirectEverythingGuard(Guard):
    """The redirect listener's last guard: every request that got this far goes to https://."""

    def __init__(self, *, status: int, canonical_host: str | None, https_port: int) -> None:
        self.status = status
        self.canonical_host = canonical_host.encode("ascii") if canonical_host else None
        self.port_suffix = b"" if https_port == 443 else b":%d" % https_port

    def on_request(self, scope: Scope, context: RequestContext) -> Answer:
        # The host guard before this one has vetted the Host (configuration requires it when
        # there is no canonical host).
        host = (self.canonical_host or split_port(context.host)) + self.port_suffix
        context.outcome = Outcome.HTTPS_REDIRECT
        location = https_location(host, scope)
        return Answer(
            redirect_status(self.status, scope["method"]), [(b"location", location), (b"content-length", b"0")]
        )
