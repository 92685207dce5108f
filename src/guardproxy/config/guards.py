"""Settings of the guards, one section each."""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    field_validator,
    model_validator,
)

from guardproxy.config.base import CommaList, MethodList, Section
from guardproxy.http1.fields import CLIENT_CLAIM_FIELDS
from guardproxy.origins import compile_origin_pattern
from guardproxy.routes import PatternError, compile_path_pattern

# RFC 9111 §5.2: a list of directives, each a token with an optional token or quoted value.
_TCHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_DIRECTIVE = rf'{_TCHARS}(?:=(?:{_TCHARS}|"[^"\\\x00-\x1f\x7f]*"))?'
CACHE_CONTROL_PATTERN = re.compile(rf"{_DIRECTIVE}(?:[ \t]*,[ \t]*{_DIRECTIVE})*")
# The Cache-Control each security-headers preset adds to responses without one.
PRESET_CACHE_CONTROL: dict[str, str | None] = {"api": "no-store", "web": None, "none": None}


def _cache_control(value: str | None) -> str | None:
    """A Cache-Control value to add, or None; "" also means none."""
    if value is None or value == "":
        return None
    value = value.strip()
    if not CACHE_CONTROL_PATTERN.fullmatch(value):
        raise ValueError(f"not a Cache-Control value (directives such as no-store, max-age=60): {value!r}")
    return value


def _route_cache_control(value: str | None) -> str | None:
    """A route's Cache-Control default: None inherits the global one, "" adds none."""
    return "" if value is not None and not value.strip() else _cache_control(value)


# A Cache-Control default; null or "" for none.
CacheControl = Annotated[str | None, AfterValidator(_cache_control)]
# A route's: null inherits, "" adds none.
RouteCacheControl = Annotated[str | None, AfterValidator(_route_cache_control)]


_STRIPPABLE = re.compile(r"[a-z0-9!#$%&'+.^_`|~-]{2,64}\*?")
# Framing and routing fields: removing them would change what the request is, not who sent it.
_NEVER_STRIPPED = ("host", "content-length", "transfer-encoding", "content-type", "connection", "te", "expect")
HOST_PATTERN = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


class HstsSettings(Section):
    # Sent only on responses to requests that arrived over HTTPS (directly or per a trusted proxy).
    enabled: bool = True
    max_age: Annotated[int, Field(ge=0)] = 31_536_000  # one year
    include_subdomains: bool = False
    preload: bool = False


class SecurityHeadersSettings(Section):
    enabled: bool = True
    # api: nothing may be framed, embedded or loaded (JSON APIs); web: for services serving HTML;
    # none: only what `set` adds.
    preset: Literal["api", "web", "none"] = "api"
    # Headers to add or override, e.g. {"Content-Security-Policy": "default-src 'self'"}.
    set: dict[str, str] = {}
    # Preset headers not to send.
    drop: list[str] = []
    # When the upstream sends one of these headers itself: keep its value (true) or replace it
    # with guardproxy's (false).
    upstream_wins: bool = False
    # Response headers removed: version banners that help attackers pick exploits.
    remove: list[str] = [
        "server",
        "x-powered-by",
        "x-aspnet-version",
        "x-aspnetmvc-version",
        "x-runtime",
        "x-generator",
        "x-drupal-cache",
        "x-varnish",
    ]
    hsts: HstsSettings = HstsSettings()
    # Added to responses that carry no Cache-Control (never replacing the upstream's own, never on
    # a 304). Unset: the preset's (api: no-store; web, none: nothing); null or "": nothing.
    cache_control: CacheControl = None

    @model_validator(mode="before")
    @classmethod
    def _preset_cache_control(cls, data: Any) -> Any:
        if isinstance(data, dict) and "cache_control" not in data:
            preset = data.get("preset", "api")
            return {**data, "cache_control": PRESET_CACHE_CONTROL.get(preset) if isinstance(preset, str) else None}
        return data

    @field_validator("set")
    @classmethod
    def _valid_fields(cls, value: dict[str, str]) -> dict[str, str]:
        for name, field_value in value.items():
            if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", name):
                raise ValueError(f"not a header name: {name!r}")
            if not field_value.isprintable() or not field_value.isascii():
                raise ValueError(f"header {name!r}: value must be printable ASCII")
        return value


class TrustedProxySettings(Section):
    # Peers (CIDRs) whose X-Forwarded-For/-Proto/-Host and Forwarded headers are believed.
    # None by default: then those headers are ignored and not passed on as the client's claim.
    cidrs: CommaList = []
    # Request fields removed when the peer is not a trusted proxy: claims of client identity,
    # original scheme/host/port/prefix or original URL/method. Lower-case names; a trailing `*`
    # matches a prefix. Here rather than in a section of its own because it is the other half
    # of the same decision: what is believed from a trusted peer is stripped from anyone else.
    untrusted_strip: CommaList = list(CLIENT_CLAIM_FIELDS)

    @field_validator("cidrs")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"not an IP address or CIDR: {cidr!r}") from None
        return value

    @field_validator("untrusted_strip")
    @classmethod
    def _field_names(cls, value: list[str]) -> list[str]:
        names = [name.lower() for name in value]
        for name in names:
            if not _STRIPPABLE.fullmatch(name):
                raise ValueError(f"not a header name, or a name prefix followed by '*': {name!r}")
            prefix = name.removesuffix("*")
            if any(kept == name or (name.endswith("*") and kept.startswith(prefix)) for kept in _NEVER_STRIPPED):
                raise ValueError(f"{name!r} would remove a field the request cannot do without")
        return names


class HostSettings(Section):
    # Host names this service answers to; `*.example.com` matches subdomains only. Empty: any.
    allowed: CommaList = []
    # The host used in redirect Locations; without it only an allowed Host is ever used.
    canonical: str | None = None

    @field_validator("allowed")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        hosts = [host.lower() for host in value]
        for host in hosts:
            if not HOST_PATTERN.fullmatch(host):
                raise ValueError(f"not a host name or *.domain pattern: {host!r}")
        return hosts

    @field_validator("canonical")
    @classmethod
    def _canonical(cls, value: str | None) -> str | None:
        if value is not None and (value.startswith("*") or not HOST_PATTERN.fullmatch(value.lower())):
            raise ValueError(f"not a host name: {value!r}")
        return value.lower() if value else value


class HttpsRedirectSettings(Section):
    # Behind a trusted TLS-terminating proxy that reports X-Forwarded-Proto: http, redirect to
    # https:// with the same path and query. Never when the outside scheme is unknown.
    enabled: bool = True
    # 308 keeps the method for every request; 301 (GET/HEAD only) or 307 may be chosen instead.
    status: Literal[301, 307, 308] = 308
    # Path patterns (route syntax) that are never redirected, e.g. /.well-known/acme-challenge/**.
    exempt_paths: list[str] = []

    @field_validator("exempt_paths")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                compile_path_pattern(pattern)
            except PatternError as exc:
                raise ValueError(f"bad path pattern {pattern!r}: {exc}") from None
        return value


class CorsSettings(Section):
    # Origins allowed to read responses: exact (https://app.example.com), anchored patterns
    # (https://*.example.com: subdomains only), "null" only if you mean it, or "*" (never with
    # credentials). Empty: guardproxy leaves CORS to the upstream. Flag --cors-origin.
    origins: CommaList = []
    methods: list[str] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    allow_headers: list[str] = ["Content-Type", "Authorization", "X-Request-ID"]
    expose_headers: list[str] = ["X-Request-ID", "RateLimit", "RateLimit-Policy", "Retry-After"]
    allow_credentials: bool = False
    # Seconds browsers may cache a preflight answer.
    max_age: Annotated[int, Field(ge=0, le=86400)] = 600

    @model_validator(mode="after")
    def _valid(self) -> CorsSettings:
        check_cors(self.origins, self.allow_credentials)
        return self


class CorsOverride(Section):
    """Per-route CORS; unset fields inherit the global `cors` section."""

    origins: CommaList | None = None
    methods: list[str] | None = None
    allow_headers: list[str] | None = None
    expose_headers: list[str] | None = None
    allow_credentials: bool | None = None
    max_age: Annotated[int, Field(ge=0, le=86400)] | None = None


def check_cors(origins: list[str], allow_credentials: bool) -> None:
    if "*" in origins and allow_credentials:
        raise ValueError("origins '*' cannot be combined with allow_credentials")
    for origin in origins:
        if origin != "*":
            compile_origin_pattern(origin)


class RequestIdSettings(Section):
    # Keep a well-formed incoming X-Request-ID (set False when clients are not trusted to choose
    # the ID that appears in your logs).
    trust_incoming: bool = True


class CompressionSettings(Section):
    enabled: bool = True
    # Codings offered, in the server's order of preference (used when the client's q-values tie).
    algorithms: list[Literal["br", "zstd", "gzip"]] = ["br", "zstd", "gzip"]
    # Bodies of known length below this many bytes are sent as they are.
    min_size: Annotated[int, Field(ge=0)] = 1024
    # Media types worth compressing; `*` matches within a type part (text/*, application/*+json).
    media_types: list[str] = [
        "application/json",
        "application/*+json",
        "application/problem+json",
        "application/javascript",
        "application/xml",
        "application/*+xml",
        "application/x-ndjson",
        "image/svg+xml",
        "text/*",
    ]
    gzip_level: Annotated[int, Field(ge=1, le=9)] = 5
    brotli_quality: Annotated[int, Field(ge=0, le=11)] = 4
    zstd_level: Annotated[int, Field(ge=1, le=19)] = 3

    @field_validator("algorithms")
    @classmethod
    def _some(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError("list each of br, zstd, gzip at most once, and at least one")
        return value


class BodyLimitSettings(Section):
    # Largest request body accepted, in bytes: a larger declared Content-Length gets 413 before
    # any byte is read, a chunked body is cut with 413 the moment it passes the limit.
    max_bytes: Annotated[int, Field(ge=0)] = 1024 * 1024


class BodyLimitOverride(Section):
    max_bytes: Annotated[int, Field(ge=0)] | None = None


class PathSettings(Section):
    # Refuse (400) paths with dot-segments, also percent-encoded (/a/%2e%2e/b, /..%2f), encoded
    # NUL and backslashes: traversal tricks an upstream may decode differently than guardproxy.
    refuse_traversal: bool = True


class ConcurrencySettings(Section):
    # Requests in flight per worker; beyond it: 503 with Retry-After, without touching the upstream.
    max_in_flight: Annotated[int, Field(ge=1)] = 1000


def _moment(value: Any) -> Any:
    """A date (midnight UTC) or a date and time with its zone, as an aware datetime."""
    if isinstance(value, str):
        try:
            text = value.strip()
            value = datetime.fromisoformat(text) if "T" in text or " " in text else date.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"not a date (2027-01-31) or a date and time with a zone (2027-01-31T12:00:00Z): {value!r}"
            ) from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"give the time zone, e.g. {value.isoformat()}Z")
        return value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise ValueError(f"not a date: {value!r}")


# RFC 3986 characters, minus what would end a Link's <...> or a field (spaces, quotes, < >).
_URI_CHARS = r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]"
_LINK_TARGET = re.compile(rf"https?://[A-Za-z0-9.\[\]:-]+(?:/{_URI_CHARS}*)?|/{_URI_CHARS}*")


def _link_target(value: str) -> str:
    if not _LINK_TARGET.fullmatch(value):
        raise ValueError(f"not an http(s) URL or an absolute path without spaces, quotes or angle brackets: {value!r}")
    return value


# A moment in time: 2027-01-31 (midnight UTC) or 2027-01-31T12:00:00+01:00.
Moment = Annotated[datetime, BeforeValidator(_moment)]
# The target of a Link field: https://... or /docs/...
LinkTarget = Annotated[str, AfterValidator(_link_target)]


def check_lifecycle(
    deprecation: datetime | None,
    sunset: datetime | None,
    link: str | None,
    sunset_link: str | None,
    gone_after_sunset: bool,
) -> None:
    """A route's deprecation settings as a whole (RFC 9745: a Sunset not earlier than the Deprecation)."""
    if deprecation is not None and sunset is not None and sunset < deprecation:
        raise ValueError(f"sunset ({sunset.isoformat()}) is earlier than deprecation ({deprecation.isoformat()})")
    if gone_after_sunset and sunset is None:
        raise ValueError("gone_after_sunset needs a sunset date")
    if link is not None and deprecation is None and sunset is None:
        raise ValueError("link needs a deprecation or a sunset date")
    if sunset_link is not None and sunset is None:
        raise ValueError("sunset_link (rel=sunset) needs a sunset date")


class MethodSettings(Section):
    # Refused with 405 (and Allow) on every route. TRACE echoes the request back (cross-site
    # tracing reads cookies and Authorization through it), TRACK is IIS's TRACE. CONNECT is
    # always refused, listed or not: guardproxy is a reverse proxy and opens no tunnels.
    refused: MethodList = ["TRACE", "TRACK"]
    # Methods beyond GET, HEAD, POST, PUT, PATCH, DELETE and OPTIONS (and those listed in
    # `extensions`), e.g. WebDAV's PROPFIND or PURGE: forward (the default) or refuse (405).
    unknown: Literal["forward", "refuse"] = "forward"
    # Extension methods the upstream serves: forwarded even when `unknown` is refuse.
    extensions: MethodList = []

    @model_validator(mode="after")
    def _consistent(self) -> MethodSettings:
        both = sorted(set(self.refused) & set(self.extensions))
        if both:
            raise ValueError(f"extensions: {', '.join(both)} is also in refused")
        return self
