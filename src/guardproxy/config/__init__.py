"""Configuration: one pydantic model per concern, loaded from flags, environment and a YAML file.

Precedence is flag > environment (`GUARDPROXY_SECTION__KEY`) > file > default. Every problem is
reported with the dotted name of the setting it belongs to, so a bad start names what to fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from guardproxy.config.auth import AuthSettings
from guardproxy.config.base import (
    CONFIG_FILE_ENV,
    ENV_NESTED_DELIMITER,
    ENV_PREFIX,
    Address,
    ConfigError,
    Section,
)
from guardproxy.config.guards import (
    BodyLimitOverride,
    BodyLimitSettings,
    CompressionSettings,
    ConcurrencySettings,
    CorsOverride,
    CorsSettings,
    HostSettings,
    HstsSettings,
    HttpsRedirectSettings,
    MethodSettings,
    PathSettings,
    RequestIdSettings,
    SecurityHeadersSettings,
    TrustedProxySettings,
    check_cors,
)
from guardproxy.config.idempotency import IdempotencyRoute, IdempotencySettings, check_idempotency
from guardproxy.config.observability import LoggingSettings, MetricsSettings
from guardproxy.config.rate_limit import PER_CLIENT_RULE, RateLimitRule, RateLimitSettings
from guardproxy.config.routes import RouteSettings
from guardproxy.config.server import (
    AdminSettings,
    HealthCheckSettings,
    ServerSettings,
    TimeoutOverrides,
    UpstreamSettings,
)
from guardproxy.config.websocket import WebSocketOverride, WebSocketSettings
from guardproxy.routes import DEFAULT_ROUTE_NAME

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
    methods: MethodSettings = MethodSettings()
    security_headers: SecurityHeadersSettings = SecurityHeadersSettings()
    cors: CorsSettings = CorsSettings()
    body_limit: BodyLimitSettings = BodyLimitSettings()
    paths: PathSettings = PathSettings()
    concurrency: ConcurrencySettings = ConcurrencySettings()
    compression: CompressionSettings = CompressionSettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    idempotency: IdempotencySettings = IdempotencySettings()
    auth: AuthSettings = AuthSettings()
    logging: LoggingSettings = LoggingSettings()
    metrics: MetricsSettings = MetricsSettings()
    websocket: WebSocketSettings = WebSocketSettings()
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

    def effective_websocket(self, route: RouteSettings | None) -> WebSocketSettings:
        """The global WebSocket settings with a route's overrides applied."""
        if route is None:
            return self.websocket
        overrides = {name: value for name, value in route.websocket.model_dump().items() if value is not None}
        return self.websocket.model_copy(update=overrides)

    @model_validator(mode="after")
    def _route_cors(self) -> Settings:
        for route in self.routes:
            cors = self.effective_cors(route)
            try:
                check_cors(cors.origins, cors.allow_credentials)
            except ValueError as exc:
                raise ValueError(f"routes[{route.name}].cors: {exc}") from None
        return self

    @model_validator(mode="after")
    def _route_methods(self) -> Settings:
        for route in self.routes:
            refused = sorted(set(route.allowed_methods or ()) & set(self.methods.refused))
            if refused:
                raise ValueError(f"routes[{route.name}].allowed_methods: {', '.join(refused)} is in methods.refused")
        return self

    @model_validator(mode="after")
    def _rule_routes(self) -> Settings:
        known = {route.name for route in self.routes} | {DEFAULT_ROUTE_NAME}
        for rule in self.rate_limit.rules:
            for name in rule.routes:
                if name not in known:
                    raise ValueError(f"rate_limit.rules[{rule.name}].routes: no route is named {name!r}")
        return self

    @model_validator(mode="after")
    def _idempotency_store(self) -> Settings:
        timeouts = {
            route.name: route.upstream.total_timeout or self.upstream.total_timeout
            for route in self.routes
            if route.idempotency.enabled
        }
        check_idempotency(self.idempotency, self.rate_limit.redis_url, self.server.workers, timeouts)
        return self

    @model_validator(mode="after")
    def _route_auth(self) -> Settings:
        self.auth.check_route(self.auth.default, "auth.default")
        for route in self.routes:
            if route.auth is not None:
                self.auth.check_route(route.auth, f"routes[{route.name}].auth")
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


__all__ = [
    "CONFIG_FILE_ENV",
    "ENV_NESTED_DELIMITER",
    "ENV_PREFIX",
    "PER_CLIENT_RULE",
    "Address",
    "AdminSettings",
    "AuthSettings",
    "BodyLimitOverride",
    "BodyLimitSettings",
    "CompressionSettings",
    "ConcurrencySettings",
    "ConfigError",
    "CorsOverride",
    "CorsSettings",
    "HealthCheckSettings",
    "HostSettings",
    "HstsSettings",
    "HttpsRedirectSettings",
    "IdempotencyRoute",
    "IdempotencySettings",
    "LoggingSettings",
    "MethodSettings",
    "MetricsSettings",
    "PathSettings",
    "RateLimitRule",
    "RateLimitSettings",
    "RequestIdSettings",
    "RouteSettings",
    "Section",
    "SecurityHeadersSettings",
    "ServerSettings",
    "Settings",
    "TimeoutOverrides",
    "TrustedProxySettings",
    "UpstreamSettings",
    "WebSocketOverride",
    "WebSocketSettings",
    "load_settings",
    "read_config_file",
]
