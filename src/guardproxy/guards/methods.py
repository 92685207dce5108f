"""Which methods reach the upstream: 405 with `Allow` for the others (RFC 9110 §15.5.6).

- Refused everywhere (`methods.refused`, TRACE and TRACK by default): TRACE echoes the request,
  so a page that can send one reads the cookies and Authorization it carried (cross-site
  tracing); nginx refuses it too. CONNECT is always refused: guardproxy opens no tunnels.
- A route with `allowed_methods` serves those (GET brings HEAD, RFC 9110 §9.3.2) and refuses the
  rest; `Allow` lists what it serves.
- Elsewhere the RFC 9110 methods and PATCH are forwarded, and so are extension methods (WebDAV,
  PURGE, ...) unless `methods.unknown` is refuse; `Allow` then lists the methods that are always
  forwarded, the best statement guardproxy can make of an upstream it does not know.
- `OPTIONS *` asks about the server as a whole (RFC 9110 §9.3.7): guardproxy answers it here
  with 200 and the same `Allow`, and never forwards it (http1/targets.py says why).

Methods are case-sensitive (RFC 9110 §9.1); llhttp only parses registered ones, upper-case.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from guardproxy import problems
from guardproxy.answer import Answer
from guardproxy.asgi import Scope
from guardproxy.context import RequestContext
from guardproxy.guards.chain import Guard
from guardproxy.outcomes import Outcome

# RFC 9110 §9.3 (TRACE and CONNECT aside) and RFC 5789 PATCH.
STANDARD_METHODS: Final[tuple[str, ...]] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
ALWAYS_REFUSED: Final = frozenset({"CONNECT"})


def _allow(methods: Iterable[str]) -> bytes:
    return ", ".join(methods).encode("ascii")


class MethodGuard(Guard):
    def __init__(
        self,
        *,
        refused: Iterable[str],
        refuse_unknown: bool,
        extensions: Iterable[str] = (),
        route_methods: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self.refused = ALWAYS_REFUSED | frozenset(refused)
        self.refuse_unknown = refuse_unknown
        forwarded = [method for method in (*STANDARD_METHODS, *extensions) if method not in self.refused]
        # Methods forwarded on a route without a list of its own: the usual request's one test.
        self.forwarded = frozenset(forwarded)
        self.allow = _allow(dict.fromkeys(forwarded))
        self.routes: dict[str, tuple[frozenset[str], bytes]] = {}
        for name, methods in (route_methods or {}).items():
            allowed = [method for method in methods if method not in self.refused]
            if "GET" in allowed and "HEAD" not in allowed:
                allowed.append("HEAD")
            self.routes[name] = (frozenset(allowed), _allow(dict.fromkeys(allowed)))

    def on_request(self, scope: Scope, context: RequestContext) -> Answer | None:
        method: str = scope["method"]
        route = self.routes.get(context.route.name) if self.routes else None
        if route is None:
            if method in self.forwarded:
                if method != "OPTIONS" or scope["path"] != "*":
                    return None
                context.outcome = Outcome.SERVER_OPTIONS
                return Answer(200, [(b"allow", self.allow), (b"content-length", b"0")])
            if method not in self.refused and not self.refuse_unknown:
                return None
            return self._refuse(scope, context, method, self.allow)
        allowed, allow = route
        if method in allowed:
            return None
        return self._refuse(scope, context, method, allow)

    @staticmethod
    def _refuse(scope: Scope, context: RequestContext, method: str, allow: bytes) -> Answer:
        context.outcome = Outcome.METHOD_NOT_ALLOWED
        return Answer.problem(
            scope, problems.METHOD_NOT_ALLOWED, f"The method {method} is not allowed here.", [(b"allow", allow)]
        )
