"""Rules compiled once at start: which requests each counts, what its budgets belong to, and
the header items that advertise it (draft-ietf-httpapi-ratelimit-headers)."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from guardproxy.asgi import Scope
from guardproxy.config import PER_CLIENT_RULE, RateLimitRule, RateLimitSettings
from guardproxy.context import RequestContext
from guardproxy.ratelimit.gcra import Rate, parse_rate
from guardproxy.routes import compile_path_pattern

# Client keys remembered per rule; past it the memory starts over (a client spraying addresses
# only makes us hash again).
_CLIENT_KEY_CACHE = 4096


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    rate: Rate
    enforce: bool
    # Key parts, in order: "client_ip", "route", "api_key", "claim:<name>", or a lower-case
    # header name as bytes.
    key_parts: tuple[str | bytes, ...]
    routes: frozenset[str] | None
    path: re.Pattern[str] | None
    methods: frozenset[str] | None
    # `"per-ip";q=100;w=60`: this rule's item in RateLimit-Policy.
    policy_item: bytes
    # Client address -> store key, for rules keyed by the address alone (see key()).
    _client_keys: dict[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def matches(self, route: str, method: str, path: str) -> bool:
        if self.routes is not None:
            return route in self.routes
        if self.path is None:
            return True
        return (self.methods is None or method in self.methods) and self.path.match(path) is not None

    def status_item(self, remaining: int, reset_seconds: int) -> bytes:
        """This rule's item in the RateLimit field: what is left, and when it is all back."""
        return b'"%s";r=%d;t=%d' % (self.name.encode(), remaining, reset_seconds)

    def key(self, prefix: str, scope: Scope, context: RequestContext) -> str:
        """The store key of this request's budget under this rule. Client data is hashed, so
        neither addresses nor API keys are stored in the clear and keys stay short."""
        if self.key_parts == ("client_ip",):
            # The usual rule: the same few clients ask again and again, so their keys are kept.
            cache = self._client_keys
            key = cache.get(context.client_host)
            if key is None:
                if len(cache) >= _CLIENT_KEY_CACHE:
                    cache.clear()
                key = cache[context.client_host] = self._key(prefix, scope, context)
            return key
        return self._key(prefix, scope, context)

    def _key(self, prefix: str, scope: Scope, context: RequestContext) -> str:
        parts = [self.name.encode()]
        for part in self.key_parts:
            if part == "client_ip":
                parts.append(client_key(context.client_host))
            elif part == "route":
                parts.append(context.route.name.encode())
            elif isinstance(part, str):
                parts.append(_identity_key(part, context))
            else:
                value = _header(scope, part)
                # Without the header, the client's address keys it: a missing API key must not
                # put every anonymous client into one shared budget.
                parts.append(b"h=" + value if value is not None else b"ip=" + client_key(context.client_host))
        digest = hashlib.blake2b(b"\0".join(parts), digest_size=12)
        # The braces are a Redis Cluster hash tag: the key's slot follows rule and digest.
        return f"{prefix}{{{self.name}:{digest.hexdigest()}}}"


def _identity_key(part: str, context: RequestContext) -> bytes:
    """An `api_key` or `claim:<name>` part from the verified identity (guards/auth). Without
    one, the client's address keys it, as for a missing header. A claim is keyed together with
    its issuer: two identity providers may hand out the same `sub`."""
    if part == "api_key":
        if context.api_key_name:
            return b"k=" + context.api_key_name.encode()
    elif context.claims is not None:
        value = context.claims.get(part.removeprefix("claim:"))
        if isinstance(value, str | int) and not isinstance(value, bool):
            issuer = context.claims.get("iss")
            return b"c=" + str(issuer).encode() + b"\0" + str(value).encode()
    return b"ip=" + client_key(context.client_host)


def client_key(host: str) -> bytes:
    """An IPv6 client is keyed by its /64: one subscriber gets a whole /64 and could otherwise
    take a fresh budget from each of its 2**64 addresses. IPv4 (also IPv4-mapped, as a
    dual-stack listener reports it) is keyed by the address."""
    if ":" in host:
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError:
            return host.encode()
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped).encode()
        return str(ipaddress.IPv6Network((address, 64), strict=False).network_address).encode() + b"/64"
    return host.encode()


def _header(scope: Scope, name: bytes) -> bytes | None:
    for header, value in scope["headers"]:
        if header == name:
            return bytes(value)
    return None


def compile_rule(settings: RateLimitRule) -> Rule:
    rate = parse_rate(settings.rate, settings.burst)
    return Rule(
        name=settings.name,
        rate=rate,
        enforce=settings.mode == "enforce",
        key_parts=tuple(
            part.removeprefix("header:").lower().encode() if part.startswith("header:") else part
            for part in settings.key
        ),
        routes=frozenset(settings.routes) if settings.routes else None,
        path=compile_path_pattern(settings.path) if settings.path is not None else None,
        methods=frozenset(settings.methods) if settings.methods is not None else None,
        policy_item=b'"%s";q=%d;w=%d' % (settings.name.encode(), rate.count, rate.period_seconds),
    )


def compile_rules(settings: RateLimitSettings) -> list[Rule]:
    rules = [compile_rule(rule) for rule in settings.rules]
    if settings.per_client_ip is not None:
        rules.insert(0, compile_rule(RateLimitRule(name=PER_CLIENT_RULE, rate=settings.per_client_ip)))
    return rules


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The rules that count one request, with what every decision needs derived once."""

    rules: tuple[Rule, ...]
    rates: tuple[Rate, ...]
    enforce: tuple[bool, ...]
    # RateLimit-Policy: the enforcing rules' items; empty when every rule is a dry run.
    policy: bytes

    @classmethod
    def of(cls, rules: Sequence[Rule]) -> RuleSet:
        return cls(
            rules=tuple(rules),
            rates=tuple(rule.rate for rule in rules),
            enforce=tuple(rule.enforce for rule in rules),
            policy=b", ".join(rule.policy_item for rule in rules if rule.enforce),
        )


class RouteRules:
    """The rules that may count a route's requests. When none of them looks at the path, which
    is the usual case, every request of the route gets the same RuleSet, built at start."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self._rules = tuple(rules)
        self._by_path = any(rule.path is not None for rule in rules)
        self._all = RuleSet.of(rules)
        self._subsets: dict[tuple[int, ...], RuleSet] = {}

    def applicable(self, route: str, method: str, path: str) -> RuleSet | None:
        if not self._by_path:
            return self._all
        matching = tuple(index for index, rule in enumerate(self._rules) if rule.matches(route, method, path))
        if not matching:
            return None
        subset = self._subsets.get(matching)
        if subset is None:
            # At most one entry per combination of rules: bounded by the configuration.
            subset = self._subsets[matching] = RuleSet.of([self._rules[index] for index in matching])
        return subset


def rules_by_route(rules: Sequence[Rule], route_names: Sequence[str]) -> dict[str, RouteRules]:
    """For each route some rule may count, its rules: a route no rule concerns costs one
    dictionary lookup."""
    by_route = {}
    for name in route_names:
        candidates = [rule for rule in rules if rule.routes is None or name in rule.routes]
        if candidates:
            by_route[name] = RouteRules(candidates)
    return by_route
