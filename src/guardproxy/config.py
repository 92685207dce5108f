"""Configuration: one pydantic model per concern, loaded from flags, environment and a YAML file.

Precedence is flag > environment (`GUARDPROXY_SECTION__KEY`) > file > default. Every problem is
reported with the dotted name of the setting it belongs to, so a bad start names what to fix.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from guardproxy.origins import compile_origin_pattern
from guardproxy.routes import DEFAULT_ROUTE_NAME, PatternError, compile_path_pattern

ENV_PREFIX = "GUARDPROXY_"
ENV_NESTED_DELIMITER = "__"
CONFIG_FILE_ENV = "GUARDPROXY_CONFIG"


class ConfigError(Exception):
    """A configuration problem, already phrased for the operator."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Section(BaseModel):
    # A typo in a config file must fail the start, not be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Address(Section):
    """A `HOST:PORT` listen address; IPv6 hosts in brackets (`[::1]:8080`)."""

    host: str
    port: Annotated[int, Field(ge=1, le=65535)]

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not (port.isascii() and port.isdigit()):
            raise ValueError(f"expected HOST:PORT, got {value!r}")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            ipaddress.IPv6Address(host)
        elif ":" in host:
            raise ValueError(f"IPv6 hosts go in brackets, e.g. [::1]:8080, got {value!r}")
        return {"host": host, "port": int(port)}

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _address(value: str) -> Any:
    return Field(default_factory=lambda: Address.model_validate(value))


# NoDecode: an environment value such as GUARDPROXY_SERVER__LISTEN=0.0.0.0:8080 is a HOST:PORT
# string, not JSON for the Address model.
ListenAddress = Annotated[Address, NoDecode]


class ServerSettings(Section):
    listen: ListenAddress = _address("0.0.0.0:8080")
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    # Seconds an idle keep-alive client connection is kept open.
    keep_alive_timeout: PositiveFloat = 5.0
    # Seconds a client has to deliver a whole request head, counted from the connection opening
    # or the previous response ending; trickling bytes does not extend it (408).
    request_head_timeout: PositiveFloat = 10.0
    # Seconds a request body may go without a byte arriving (408).
    request_body_timeout: PositiveFloat = 30.0
    max_request_head_bytes: Annotated[int, Field(ge=1024)] = 16 * 1024  # 431
    max_header_fields: Annotated[int, Field(ge=8)] = 100  # 431
    max_uri_bytes: Annotated[int, Field(ge=256)] = 8 * 1024  # 414
    # On SIGTERM/SIGINT: /readyz answers 503 at once, the listener keeps accepting for
    # drain_delay seconds (so load balancers take the instance out), then requests in flight
    # get shutdown_timeout seconds to finish before they are cut.
    drain_delay: NonNegativeFloat = 5.0
    shutdown_timeout: PositiveFloat = 30.0
    # Terminate TLS on the proxy listener with this certificate chain and key (PEM files).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # A plain-HTTP listener that only redirects to https:// (the proxy listener, with TLS).
    redirect_listen: Annotated[Address, NoDecode] | None = None
    # The port put in those redirects' Locations (the port clients reach the TLS listener on).
    https_port: Annotated[int, Field(ge=1, le=65535)] = 443

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_cert is not None and self.tls_key is not None:
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(self.tls_cert, self.tls_key)
            except (OSError, ssl.SSLError) as exc:
                reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or "not a certificate and key"
                raise ValueError(f"cannot load tls_cert/tls_key: {reason}") from None
        if self.redirect_listen is not None and self.tls_cert is None:
            raise ValueError("redirect_listen needs tls_cert and tls_key (it redirects to the TLS listener)")
        return self


class AdminSettings(Section):
    # Loopback by default: probes and metrics are for the platform, not for the internet.
    listen: ListenAddress = _address("127.0.0.1:9090")


class HealthCheckSettings(Section):
    interval: PositiveFloat = 2.0
    timeout: PositiveFloat = 1.0
    # Without a path the probe only opens a TCP connection; with one it sends `GET path` and
    # wants a status below 500.
    path: str | None = None

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value


class UpstreamSettings(Section):
    url: str
    connect_timeout: PositiveFloat = 5.0
    read_timeout: PositiveFloat = 60.0
    # Seconds for the whole exchange, body included; None: no limit, so streams and long
    # downloads are never cut by it. Best set per route.
    total_timeout: PositiveFloat | None = None
    # Send the client's Host header upstream (apps build URLs from it) instead of the upstream's.
    preserve_host: bool = True
    max_connections: Annotated[int, Field(ge=1)] = 1000
    max_idle_connections: Annotated[int, Field(ge=0)] = 100
    # Below the keep-alive timeout of common servers (uvicorn and Node: 5 s) so the upstream is
    # rarely the one to close an idle pooled connection first.
    idle_timeout: PositiveFloat = 4.0
    verify_tls: bool = True
    ca_file: Path | None = None
    health_check: HealthCheckSettings = HealthCheckSettings()

    @field_validator("url")
    @classmethod
    def _origin_only(cls, value: str) -> str:
        parts = urlsplit(value)
        if "@" in parts.netloc:
            # Credentials in the URL would be printed by check-config and sent by the probe.
            raise ValueError("must not contain credentials")
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        if not parts.hostname:
            raise ValueError(f"has no host: {value!r}")
        try:
            parts.port  # noqa: B018 - evaluated for its validation
        except ValueError:
            raise ValueError(f"has an invalid port: {value!r}") from None
        if parts.path not in ("", "/") or "?" in value or "#" in value or value.endswith(":"):
            raise ValueError(f"must be an origin only (scheme://host[:port]), got {value!r}")
        return value

    @field_validator("ca_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                ssl.create_default_context(cafile=str(value))
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"cannot load CA file {str(value)!r}: {exc.strerror or exc}") from None
        return value


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

    @field_validator("set")
    @classmethod
    def _valid_fields(cls, value: dict[str, str]) -> dict[str, str]:
        for name, field_value in value.items():
            if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", name):
                raise ValueError(f"not a header name: {name!r}")
            if not field_value.isprintable() or not field_value.isascii():
                raise ValueError(f"header {name!r}: value must be printable ASCII")
        return value


def _comma_separated(value: Any) -> Any:
    """Lists may come from the environment as `a,b,c` (GUARDPROXY_TRUSTED_PROXIES__CIDRS=...)."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


CommaList = Annotated[list[str], NoDecode, BeforeValidator(_comma_separated)]
_HOST_PATTERN = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


class TrustedProxySettings(Section):
    # Peers (CIDRs) whose X-Forwarded-For/-Proto/-Host and Forwarded headers are believed.
    # None by default: then those headers are ignored and not passed on as the client's claim.
    cidrs: CommaList = []

    @field_validator("cidrs")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"not an IP address or CIDR: {cidr!r}") from None
        return value


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
            if not _HOST_PATTERN.fullmatch(host):
                raise ValueError(f"not a host name or *.domain pattern: {host!r}")
        return hosts

    @field_validator("canonical")
    @classmethod
    def _canonical(cls, value: str | None) -> str | None:
        if value is not None and (value.startswith("*") or not _HOST_PATTERN.fullmatch(value.lower())):
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
        _check_cors(self.origins, self.allow_credentials)
        return self


class CorsOverride(Section):
    """Per-route CORS; unset fields inherit the global `cors` section."""

    origins: CommaList | None = None
    methods: list[str] | None = None
    allow_headers: list[str] | None = None
    expose_headers: list[str] | None = None
    allow_credentials: bool | None = None
    max_age: Annotated[int, Field(ge=0, le=86400)] | None = None


def _check_cors(origins: list[str], allow_credentials: bool) -> None:
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


class LoggingSettings(Section):
    level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    format: Literal["json", "console"] = "json"
    # One JSON line per request (and an audit line per security refusal).
    access_log: bool = True
    # Query parameters whose values never reach a log line (compared case-insensitively).
    redact_query_params: list[str] = [
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "password",
        "passwd",
        "secret",
        "client_secret",
        "api_key",
        "apikey",
        "key",
        "signature",
        "sig",
        "code",
        "session",
    ]

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class MetricsSettings(Section):
    enabled: bool = True


class TimeoutOverrides(Section):
    connect_timeout: PositiveFloat | None = None
    read_timeout: PositiveFloat | None = None
    total_timeout: PositiveFloat | None = None


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


class RouteSettings(Section):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    path: str
    methods: list[str] | None = None
    upstream: TimeoutOverrides = TimeoutOverrides()
    body_limit: BodyLimitOverride = BodyLimitOverride()
    cors: CorsOverride = CorsOverride()

    @field_validator("path")
    @classmethod
    def _valid_pattern(cls, value: str) -> str:
        try:
            compile_path_pattern(value)
        except PatternError as exc:
            raise ValueError(f"bad path pattern {value!r}: {exc}") from None
        return value

    @field_validator("methods")
    @classmethod
    def _upper(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        methods = [method.upper() for method in value]
        for method in methods:
            if not re.fullmatch(r"[A-Z]{1,32}", method):
                raise ValueError(f"not an HTTP method: {method!r}")
        return methods


# The YAML file's contents for the load in progress (see `load_settings`).
_file_values: ContextVar[dict[str, Any]] = ContextVar("guardproxy_file_values", default={})  # noqa: B039


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        frozen=True,
    )

    upstream: UpstreamSettings
    server: ServerSettings = ServerSettings()
    admin: AdminSettings = AdminSettings()
    trusted_proxies: TrustedProxySettings = TrustedProxySettings()
    hosts: HostSettings = HostSettings()
    https_redirect: HttpsRedirectSettings = HttpsRedirectSettings()
    request_id: RequestIdSettings = RequestIdSettings()
    security_headers: SecurityHeadersSettings = SecurityHeadersSettings()
    cors: CorsSettings = CorsSettings()
    body_limit: BodyLimitSettings = BodyLimitSettings()
    paths: PathSettings = PathSettings()
    concurrency: ConcurrencySettings = ConcurrencySettings()
    compression: CompressionSettings = CompressionSettings()
    logging: LoggingSettings = LoggingSettings()
    metrics: MetricsSettings = MetricsSettings()
    routes: list[RouteSettings] = []

    @field_validator("routes")
    @classmethod
    def _unique_names(cls, routes: list[RouteSettings]) -> list[RouteSettings]:
        seen = {DEFAULT_ROUTE_NAME}
        for route in routes:
            if route.name in seen:
                raise ValueError(f"route name {route.name!r} is used twice (or is the reserved 'default')")
            seen.add(route.name)
        return routes

    def effective_cors(self, route: RouteSettings | None) -> CorsSettings:
        """The global CORS settings with a route's overrides applied."""
        if route is None:
            return self.cors
        overrides = {name: value for name, value in route.cors.model_dump().items() if value is not None}
        return self.cors.model_copy(update=overrides)

    @model_validator(mode="after")
    def _route_cors(self) -> Settings:
        for route in self.routes:
            cors = self.effective_cors(route)
            try:
                _check_cors(cors.origins, cors.allow_credentials)
            except ValueError as exc:
                raise ValueError(f"routes[{route.name}].cors: {exc}") from None
        return self

    @model_validator(mode="after")
    def _distinct_listeners(self) -> Settings:
        listens = [self.server.listen, self.admin.listen]
        if self.server.redirect_listen is not None:
            listens.append(self.server.redirect_listen)
        if len(set(map(str, listens))) != len(listens):
            raise ValueError("server.listen, admin.listen and server.redirect_listen must differ")
        if self.server.redirect_listen is not None and not (self.hosts.canonical or self.hosts.allowed):
            raise ValueError(
                "server.redirect_listen needs hosts.canonical or hosts.allowed: redirects are never built "
                "from an unchecked Host"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Init values are the command-line flags; the file is the weakest explicit source.
        return init_settings, env_settings, InitSettingsSource(settings_cls, _file_values.get())


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"config file {str(path)!r}: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"config file {str(path)!r}: not UTF-8 text (byte {exc.start})"]) from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" line {mark.line + 1}, column {mark.column + 1}:"
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError([f"config file {str(path)!r}:{where} {problem}"]) from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError([f"config file {str(path)!r}: the top level must be a mapping of sections"])
    return values


@contextmanager
def _file_source(values: dict[str, Any]) -> Iterator[None]:
    token = _file_values.set(values)
    try:
        yield
    finally:
        _file_values.reset(token)


def load_settings(flags: dict[str, Any], config_file: Path | None = None) -> Settings:
    """Build the effective settings, or raise ConfigError listing every problem by setting name."""
    file_values = read_config_file(config_file) if config_file is not None else {}
    try:
        with _file_source(file_values):
            return Settings(**flags)
    except ValidationError as exc:
        raise ConfigError([_describe(error) for error in exc.errors()]) from None
    except SettingsError as exc:
        # An environment value that should be structured (JSON) but is not.
        raise ConfigError([f"environment: {exc}"]) from None


def _describe(error: Any) -> str:
    setting = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if error["type"] == "missing":
        message = "is required"
        if setting == "upstream":
            setting = "upstream.url"  # the one required setting; name it, not its section
    elif error["type"] == "extra_forbidden":
        message = "is not a known setting"
    elif "input" in error and error["type"] not in ("value_error",) and not isinstance(error["input"], dict):
        message = f"{message} (got {error['input']!r})"
    return f"{setting}: {message}"
