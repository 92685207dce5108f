"""Route matching: which named route a request belongs to, and the policy that route runs under.

Routes are matched in the order they are configured, against the percent-decoded path (the path
the upstream will act on, so `/log%69n` cannot dodge a rule written for `/login`). The matched
route's *name* is what logs and metrics carry, never the raw path, which would let clients create
unbounded label values.

Pattern syntax, segment by segment:
  /users/{id}      `{name}` matches exactly one non-empty segment
  /files/*.json    `*` matches within one segment
  /static/**       a final `**` matches any remainder, including nothing
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

DEFAULT_ROUTE_NAME: Final = "default"

_PLACEHOLDER: Final = re.compile(r"^\{[A-Za-z_][A-Za-z0-9_]*\}$")


class PatternError(ValueError):
    pass


def compile_path_pattern(pattern: str) -> re.Pattern[str]:
    if not pattern.startswith("/"):
        raise PatternError("must start with '/'")
    segments = pattern[1:].split("/")
    parts: list[str] = []
    for index, segment in enumerate(segments):
        if segment == "**":
            if index != len(segments) - 1:
                raise PatternError("'**' is only allowed as the last segment")
            # `/static/**` also matches `/static` itself.
            if parts:
                parts[-1] += "(?:/.*)?"
            else:
                parts.append("(?:/.*)?")
            return re.compile("".join(parts) + r"\Z", re.DOTALL)
        if "**" in segment:
            raise PatternError("'**' must be a whole segment")
        if _PLACEHOLDER.match(segment):
            parts.append("/[^/]+")
        elif "{" in segment or "}" in segment:
            raise PatternError(f"bad placeholder in segment {segment!r}")
        else:
            parts.append("/" + "[^/]*".join(re.escape(piece) for piece in segment.split("*")))
    return re.compile("".join(parts) + r"\Z", re.DOTALL)


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """What the server, the forwarder and the core guards need to know about the route a request
    matched. Built once at start from the global settings and the route's overrides, so no
    request ever merges settings. A guard with per-route settings of its own keeps them in a
    table by route `name` (guards/cors.py, guards/rate_limit.py), so this core type never
    depends on a guard.
    """

    name: str
    connect_timeout: float
    read_timeout: float
    total_timeout: float | None
    max_body_bytes: int


@dataclass(frozen=True, slots=True)
class Route:
    pattern: re.Pattern[str]
    methods: frozenset[str] | None
    policy: RoutePolicy

    def matches(self, method: str, path: str) -> bool:
        return (self.methods is None or method in self.methods) and self.pattern.match(path) is not None


class RouteTable:
    def __init__(self, routes: Iterable[Route], default: RoutePolicy) -> None:
        self._routes = tuple(routes)
        self.default = default

    def match(self, method: str, path: str) -> RoutePolicy:
        for route in self._routes:
            if route.matches(method, path):
                return route.policy
        return self.default

    @property
    def policies(self) -> list[RoutePolicy]:
        return [route.policy for route in self._routes] + [self.default]
