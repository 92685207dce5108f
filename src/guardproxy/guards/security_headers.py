"""Security headers on every response, and server banners removed (checklist items 13, 15, 16).

The `api` preset is the Mozilla Observatory A+ set for a JSON API (OWASP Secure Headers
Project): nothing may be framed, embedded, submitted or loaded from a response. The `web` preset
loosens it for services that serve their own HTML. HSTS goes only on responses to requests that
arrived over HTTPS: sent over plain HTTP it is ignored at best and, behind a TLS-terminating
proxy that guardproxy cannot see, a lie.

Cache-Control is a default, not a policy: added only to a response that has none (the
upstream's own is never replaced), per route, and never to a 304, whose fields update what a
cache stored (RFC 9111 §4.3.4: an added `no-store` would rewrite the stored 200's policy). The
`api` preset's default is `no-store`: without any Cache-Control a shared cache may store an API
response for a heuristic lifetime of its own choosing (RFC 9111 §4.2.2).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from guardproxy.asgi import Headers
from guardproxy.config import SecurityHeadersSettings
from guardproxy.context import RequestContext
from guardproxy.guards.chain import Guard

_PERMISSIONS: Final = (
    "accelerometer=(), camera=(), display-capture=(), geolocation=(), gyroscope=(), magnetometer=(), "
    "microphone=(), payment=(), usb=()"
)

PRESETS: Final[dict[str, dict[str, str]]] = {
    "api": {
        "content-security-policy": "default-src 'none'; frame-ancestors 'none'; form-action 'none'",
        "x-content-type-options": "nosniff",
        "x-frame-options": "DENY",
        "referrer-policy": "no-referrer",
        "cross-origin-resource-policy": "same-origin",
        "permissions-policy": _PERMISSIONS,
    },
    "web": {
        "content-security-policy": (
            "default-src 'self'; frame-ancestors 'self'; form-action 'self'; object-src 'none'; base-uri 'self'"
        ),
        "x-content-type-options": "nosniff",
        "x-frame-options": "SAMEORIGIN",
        "referrer-policy": "strict-origin-when-cross-origin",
        "cross-origin-opener-policy": "same-origin",
        "cross-origin-resource-policy": "same-site",
        "permissions-policy": _PERMISSIONS,
    },
    "none": {},
}

# Fields an upstream may send that guardproxy turns to a safe value, and never adds itself.
#
# X-XSS-Protection: the OWASP Secure Headers Project lists it as deprecated (the XSS auditors it
# drives have themselves been a source of client-side flaws) and says to send `0`, with CSP as
# the protection (https://owasp.org/www-project-secure-headers/, Response Headers); its list of
# headers to add (ci/headers_add.json in OWASP/www-project-secure-headers) leaves it out, and the
# OWASP HTTP Headers Cheat Sheet says: CSP, and either do not set it or turn it off
# (https://cheatsheetseries.owasp.org/cheatsheets/HTTP_Headers_Cheat_Sheet.html#x-xss-protection).
# No current browser has an auditor left to turn off, and REDbot warns about the field whatever
# its value. So the api preset does not add it (CSP default-src 'none' is on every response), but
# an upstream's `1` or `1; mode=block` becomes `0`, so a legacy browser's auditor stays off.
NEUTRALISED: Final[dict[str, dict[str, str]]] = {
    "api": {"x-xss-protection": "0"},
    "web": {"x-xss-protection": "0"},
    "none": {},
}

HSTS: Final = b"strict-transport-security"
CACHE_CONTROL: Final = b"cache-control"
_NOT_MODIFIED: Final = 304


def hsts_value(max_age: int, *, include_subdomains: bool, preload: bool) -> bytes:
    value = f"max-age={max_age}"
    if include_subdomains:
        value += "; includeSubDomains"
    if preload:
        value += "; preload"
    return value.encode("ascii")


class SecurityHeadersGuard(Guard):
    def __init__(
        self,
        *,
        preset: str,
        set_headers: Mapping[str, str],
        drop: Iterable[str],
        upstream_wins: bool,
        remove: Iterable[str],
        hsts: bytes | None,
        cache_control: str | None = None,
        cache_control_by_route: Mapping[str, str | None] | None = None,
    ) -> None:
        fields = {**PRESETS[preset], **{name.lower(): value for name, value in set_headers.items()}}
        for name in drop:
            fields.pop(name.lower(), None)
        self._fields = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in fields.items()]
        self._neutralised = {
            name.encode("latin-1"): value.encode("latin-1")
            for name, value in NEUTRALISED[preset].items()
            if name not in fields
        }
        self._managed = frozenset({name for name, _ in self._fields} | {HSTS} | self._neutralised.keys())
        self._remove = frozenset(name.lower().encode("latin-1") for name in remove)
        self._upstream_wins = upstream_wins
        self._hsts = hsts
        # The default for responses without Cache-Control, and the routes that differ from it;
        # none when `set` names Cache-Control (then guardproxy's value replaces the upstream's).
        self._cache_control = cache_control.encode("ascii") if cache_control else None
        self._cache_control_by_route = {
            route: value.encode("ascii") if value else None for route, value in (cache_control_by_route or {}).items()
        }
        if CACHE_CONTROL in self._managed:
            self._cache_control, self._cache_control_by_route = None, {}
        # Fields that take the slow path below; every other field costs one set lookup.
        self._special = self._remove | self._managed | {CACHE_CONTROL}

    @classmethod
    def from_settings(
        cls, settings: SecurityHeadersSettings, cache_control_by_route: Mapping[str, str | None] | None = None
    ) -> SecurityHeadersGuard:
        hsts = settings.hsts
        return cls(
            preset=settings.preset,
            set_headers=settings.set,
            drop=settings.drop,
            upstream_wins=settings.upstream_wins,
            remove=settings.remove,
            hsts=hsts_value(hsts.max_age, include_subdomains=hsts.include_subdomains, preload=hsts.preload)
            if hsts.enabled
            else None,
            cache_control=settings.cache_control,
            cache_control_by_route=cache_control_by_route,
        )

    def on_response_start(self, context: RequestContext, headers: Headers) -> None:
        kept: Headers = []
        keep = kept.append
        upstream_set: set[bytes] = set()
        has_cache_control = False
        special = self._special
        for field in headers:
            name = field[0]
            if name not in special:
                keep(field)  # most fields: one set lookup
                continue
            if name in self._remove:
                continue  # banners: Server, X-Powered-By, ...
            if name == CACHE_CONTROL and name not in self._managed:
                has_cache_control = True
                keep(field)
                continue
            neutral = self._neutralised.get(name)
            if neutral is not None:
                keep((name, neutral))
                continue
            if not self._upstream_wins:
                continue
            upstream_set.add(name)
            keep(field)
        kept += [field for field in self._fields if field[0] not in upstream_set] if upstream_set else self._fields
        cache_control = self._cache_control
        if self._cache_control_by_route:
            cache_control = self._cache_control_by_route.get(context.route.name, cache_control)
        if cache_control is not None and not has_cache_control and context.status != _NOT_MODIFIED:
            keep((CACHE_CONTROL, cache_control))
        if context.scheme == "https":
            if self._hsts is not None and HSTS not in upstream_set:
                keep((HSTS, self._hsts))
        elif HSTS in upstream_set:
            # Never over plain HTTP, whoever set it (RFC 6797 §7.2).
            kept = [field for field in kept if field[0] != HSTS]
        headers[:] = kept
