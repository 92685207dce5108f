"""Allowed Host names (checklist item 17): a request for a name this service does not answer to
is refused, so it can never reach the upstream's URL building, caches or redirects."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from guardproxy import problems
from guardproxy.answer import Answer
from guardproxy.asgi import Scope
from guardproxy.context import RequestContext
from guardproxy.guards.chain import Guard
from guardproxy.outcomes import Outcome

_VALID_HOST: Final = re.compile(rb"[a-z0-9.-]{1,253}|\[[0-9a-f:.]{2,45}\]")


def split_port(host: bytes) -> bytes:
    """The name part of a Host value, without `:port` (IPv6 literals keep their brackets)."""
    if host.startswith(b"["):
        return host[: host.find(b"]") + 1]
    name, sep, port = host.rpartition(b":")
    return name if sep and port.isdigit() else host


class HostGuard(Guard):
    def __init__(self, *, allowed: Iterable[str]) -> None:
        names = [name.lower().encode("ascii") for name in allowed]
        self.exact = frozenset(name for name in names if not name.startswith(b"*."))
        # `*.example.com` matches below example.com only, never example.com itself.
        self.suffixes = tuple(name[1:] for name in names if name.startswith(b"*."))

    def allows(self, name: bytes) -> bool:
        return name in self.exact or any(name.endswith(suffix) and len(name) > len(suffix) for suffix in self.suffixes)

    def on_request(self, scope: Scope, context: RequestContext) -> Answer | None:
        name = split_port(context.host)
        if not _VALID_HOST.fullmatch(name):
            context.outcome = Outcome.REFUSED_HOST
            detail = "The request has no valid Host." if name else "The request has no Host."
            return Answer.problem(scope, problems.BAD_REQUEST, detail)
        if not self.allows(name.rstrip(b".")):
            context.outcome = Outcome.REFUSED_HOST
            return Answer.problem(scope, problems.MISDIRECTED, "This service does not answer to that host name.")
        return None
