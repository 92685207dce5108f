"""Settings of edge authentication: JWT providers, API keys, forward auth, and the per-route policy.

Everything that can be checked before the first request is checked here, so a bad key file, a
missing secret or an algorithm that must never be accepted fails the start with the dotted name
of the setting (checklist item 30), not the first request.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, PositiveFloat, field_validator, model_validator

from guardproxy.config.base import Name, Section

# RFC 7518 §3.1 names, minus `none`, which is never accepted (see `_algorithms`).
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
# RFC 7518 §3.2: an HMAC key at least as long as the hash output.
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
# Provider names that are not JWT providers: the other ways a route may accept a client.
API_KEYS_PROVIDER = "api_keys"
FORWARD_PROVIDER = "forward"
RESERVED_PROVIDER_NAMES = frozenset({API_KEYS_PROVIDER, FORWARD_PROVIDER})

_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")
HeaderName = Annotated[str, Field(pattern=_HEADER_NAME.pattern)]
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
# Request headers an auth setting may never name: guardproxy itself decides them.
_RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "x-forwarded-for", "x-request-id"}
)


def _header_name(value: str, setting: str) -> str:
    if not _HEADER_NAME.fullmatch(value):
        raise ValueError(f"{setting}: not a header name: {value!r}")
    if value.lower() in _RESERVED_HEADERS:
        raise ValueError(f"{setting}: {value!r} is a header guardproxy sets itself")
    return value


def read_secret(env: str | None, file: Path | None) -> bytes | None:
    """A secret from an environment variable or a file (trailing newline dropped, as a
    Kubernetes secret or `echo` leaves one)."""
    if env is not None:
        value = os.environ.get(env)
        if value is None:
            raise ValueError(f"environment variable {env} is not set")
        return value.encode()
    if file is not None:
        try:
            return file.read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise ValueError(f"cannot read {str(file)!r}: {exc.strerror}") from None
    return None


class TokenSources(Section):
    # Where a JWT is looked for, in this order. `Authorization` means `Authorization: Bearer
    # <token>` (RFC 6750 §2.1); any other header name carries the bare token.
    header: HeaderName = "Authorization"
    # A cookie holding the token (e.g. a browser session's access token), or null.
    cookie: Annotated[str, Field(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")] | None = None
    # A query parameter holding the token (RFC 6750 §2.3, for clients that cannot set headers,
    # e.g. EventSource), or null. Its value is always redacted from the access log.
    query: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.~-]{1,64}$")] | None = None


class JwtProvider(Section):
    # Labels metrics and logs, and is what routes list in `auth.providers`.
    name: Name
    # The exact `iss` a token must carry.
    issuer: Annotated[str, Field(min_length=1)]
    # `aud` must contain one of these. Required: an unchecked audience accepts tokens minted
    # for any other API of the same identity provider.
    audiences: Annotated[list[str], Field(min_length=1)]
    # Where the verification keys come from: exactly one of a JWKS URL (fetched at start and
    # refreshed), a local JWKS or PEM public key file (read at start), or, for HS256/384/512
    # only, a shared secret from an environment variable or a file.
    jwks_url: str | None = None
    jwks_file: Path | None = None
    secret_env: str | None = None
    secret_file: Path | None = None
    # Accepted `alg` values. `none` is never accepted; HS* only with a secret, and a provider
    # with a secret accepts nothing else (the RS256/HS256 key confusion needs both on one key).
    algorithms: list[str] = ["RS256", "PS256", "ES256", "EdDSA"]
    # Seconds of clock skew allowed for exp, nbf and iat.
    leeway: Annotated[float, Field(ge=0, le=300)] = 30.0
    # Claims a token must carry besides exp (always required: a token is cached until it).
    required_claims: list[str] = []
    # JWKS URL only: seconds between background refreshes when the response has no usable
    # Cache-Control max-age; a max-age is honoured within [min_refresh_interval,
    # max_refresh_interval].
    refresh_interval: PositiveFloat = 600.0
    # The shortest time between two fetches: also the limit for fetches caused by tokens
    # naming an unknown `kid`, so such tokens cannot turn into a request storm on the IdP.
    min_refresh_interval: PositiveFloat = 30.0
    max_refresh_interval: PositiveFloat = 86_400.0
    # Seconds one JWKS fetch may take.
    fetch_timeout: PositiveFloat = 5.0
    # A CA bundle (PEM) to check the JWKS server's certificate with, instead of the system's.
    jwks_ca_file: Path | None = None
    # Plain-http JWKS URLs are refused unless the host is loopback or this is true: whoever can
    # change the key set in transit can mint any token.
    allow_insecure_http: bool = False

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("needs at least one algorithm")
        for alg in value:
            if alg.lower() == "none":
                raise ValueError("'none' is never accepted: it means an unsigned token")
            if alg not in ASYMMETRIC_ALGORITHMS | HMAC_ALGORITHMS:
                known = ", ".join(sorted(ASYMMETRIC_ALGORITHMS | HMAC_ALGORITHMS))
                raise ValueError(f"unknown algorithm {alg!r}: use {known}")
        return value

    @field_validator("jwks_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @field_validator("jwks_file", "jwks_ca_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not os.access(value, os.R_OK):
            raise ValueError(f"cannot read {str(value)!r}")
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtProvider:
        sources = [self.jwks_url, self.jwks_file, self.secret_env, self.secret_file]
        if sum(source is not None for source in sources) != 1:
            raise ValueError("set exactly one of jwks_url, jwks_file, secret_env, secret_file")
        if self.name in RESERVED_PROVIDER_NAMES:
            raise ValueError(f"name {self.name!r} is reserved for {self.name} authentication")
        hmac = [alg for alg in self.algorithms if alg in HMAC_ALGORITHMS]
        if self.secret_env is not None or self.secret_file is not None:
            if len(hmac) != len(self.algorithms):
                raise ValueError("a provider with a shared secret accepts only HS256, HS384 or HS512")
            secret = read_secret(self.secret_env, self.secret_file)
            assert secret is not None
            shortest = max(_HMAC_MIN_BYTES[alg] for alg in hmac)
            if len(secret) < shortest:
                raise ValueError(f"the secret must be at least {shortest} bytes for {', '.join(hmac)}")
        elif hmac:
            raise ValueError("HS256/384/512 need secret_env or secret_file; key sets carry public keys only")
        if self.jwks_url is not None:
            parts = urlsplit(self.jwks_url)
            if parts.scheme == "http" and parts.hostname not in _LOOPBACK_HOSTS and not self.allow_insecure_http:
                raise ValueError("jwks_url: plain http only to a loopback host, or with allow_insecure_http: true")
        if self.jwks_file is not None:
            from guardproxy.guards.auth.jwks import KeySetError, load_key_file  # noqa: PLC0415 - crypto on demand

            try:
                load_key_file(self.jwks_file, self.algorithms)
            except KeySetError as exc:
                raise ValueError(f"jwks_file: {exc}") from None
        if not self.min_refresh_interval <= self.refresh_interval <= self.max_refresh_interval:
            raise ValueError("needs min_refresh_interval <= refresh_interval <= max_refresh_interval")
        return self


class JwtSettings(Section):
    token: TokenSources = TokenSources()
    providers: list[JwtProvider] = []
    # Verified tokens remembered (by SHA-256 digest) until they expire, per worker: a repeated
    # token then costs a dictionary lookup instead of a signature check.
    cache_size: Annotated[int, Field(ge=0)] = 10_000


class ApiKeySettings(Section):
    # The request header carrying the key.
    header: HeaderName = "X-API-Key"
    # Keys are stored only as SHA-256 digests, one `name digest` pair per line (`#` comments),
    # in a file, or in an environment variable (pairs separated by commas or newlines). Make a
    # digest with: printf %s "$KEY" | sha256sum
    file: Path | None = None
    env: str | None = None
    # The request header that tells the upstream which key was used (client copies removed).
    name_header: HeaderName | None = "X-Auth-Key-Name"

    @model_validator(mode="after")
    def _keys(self) -> ApiKeySettings:
        from guardproxy.guards.auth.api_keys import ApiKeyError, parse_api_keys  # noqa: PLC0415

        _header_name(self.header, "header")
        if self.name_header is not None:
            _header_name(self.name_header, "name_header")
        try:
            source = read_secret(self.env, None) if self.env is not None else None
            if self.file is not None:
                source = (source or b"") + b"\n" + (read_secret(None, self.file) or b"")
            if source is not None:
                parse_api_keys(source.decode("utf-8", "replace"))
        except ApiKeyError as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def configured(self) -> bool:
        return self.file is not None or self.env is not None


class ForwardAuthSettings(Section):
    # The auth service (Traefik ForwardAuth / nginx auth_request style): it gets a GET with the
    # original method, URI, host, scheme and client in X-Forwarded-* and the headers below;
    # 2xx allows, 401/403 is passed back, anything else (or no answer in time) is a 503.
    url: str | None = None
    timeout: PositiveFloat = 2.0
    # Request headers copied to the auth call (the credentials it checks).
    request_headers: list[HeaderName] = ["Authorization", "Cookie"]
    # Headers of a 2xx answer copied onto the upstream request (client copies removed first).
    response_headers: list[HeaderName] = []
    # A response header of the 2xx answer that names the subject for the access log.
    subject_header: HeaderName | None = None
    # Seconds a positive answer is remembered, keyed by a digest of the route and the copied
    # request headers; 0: every request asks.
    cache_ttl: Annotated[float, Field(ge=0, le=300)] = 0.0
    cache_size: Annotated[int, Field(ge=1)] = 10_000
    # Keep-alive connections to the auth service, per worker.
    max_connections: Annotated[int, Field(ge=1)] = 32

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be an http:// or https:// URL with a host")
        return value


class RouteAuth(Section):
    # required: refuse a request without valid credentials (401); optional: let a request
    # without credentials through anonymously, but refuse invalid ones; off: no authentication.
    mode: Literal["required", "optional", "off"] = "required"
    # JWT provider names, `api_keys` and/or `forward`: any one of them may accept the request.
    # Empty: every JWT provider.
    providers: list[str] = []
    # Scopes the token must all grant (`scope`, space-separated, or `scp`, a list or string).
    scopes: list[str] = []
    # Claim matchers: the claim must be one of the values (or, for a list claim, contain one).
    claims: dict[str, list[str | int | bool]] = {}
    # Claims copied into request headers for the upstream, e.g. {sub: X-Auth-Subject}. Client
    # copies of every header named here are removed from every request, on every route.
    claims_to_headers: dict[str, HeaderName] = {}
    # Pass the client's credentials (Authorization, the token header, the API key header) on
    # to the upstream, or remove them once they are verified.
    forward_credentials: bool = True

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        # YAML 1.1 reads an unquoted `off` as false (and `on` as true).
        if value is False:
            return "off"
        if value is True:
            return "required"
        return value

    @field_validator("claims_to_headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for header in value.values():
            _header_name(header, "claims_to_headers")
            if header.lower() == "authorization":
                raise ValueError("claims_to_headers: Authorization cannot carry a claim")
        return value


class AuthSettings(Section):
    # The realm in WWW-Authenticate challenges (RFC 6750 §3).
    realm: Annotated[str, Field(pattern=r"^[\x20-\x21\x23-\x5b\x5d-\x7e]{1,64}$")] = "guardproxy"
    jwt: JwtSettings = JwtSettings()
    api_keys: ApiKeySettings = ApiKeySettings()
    forward: ForwardAuthSettings = ForwardAuthSettings()
    # The policy of requests that match no named route, and of routes without an `auth` block.
    default: RouteAuth = RouteAuth(mode="off")
    # More request headers removed from every client request (identities an upstream trusts).
    strip_headers: list[HeaderName] = []

    @model_validator(mode="after")
    def _unique_providers(self) -> AuthSettings:
        names = [provider.name for provider in self.jwt.providers]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"jwt.providers: name {name!r} is used twice")
        return self

    def available_providers(self) -> set[str]:
        names = {provider.name for provider in self.jwt.providers}
        if self.api_keys.configured:
            names.add(API_KEYS_PROVIDER)
        if self.forward.url is not None:
            names.add(FORWARD_PROVIDER)
        return names

    def check_route(self, route: RouteAuth, where: str) -> None:
        """A route's policy against what is configured: every provider it names exists."""
        if route.mode == "off":
            return
        available = self.available_providers()
        for name in route.providers:
            if name not in available:
                raise ValueError(f"{where}.providers: no provider {name!r} is configured")
        if not route.providers and not self.jwt.providers:
            raise ValueError(f"{where}: mode {route.mode} needs a provider, and no auth.jwt.providers exist")
        jwt_names = {provider.name for provider in self.jwt.providers}
        uses_jwt = not route.providers or any(name in jwt_names for name in route.providers)
        if (route.scopes or route.claims) and not uses_jwt:
            raise ValueError(f"{where}: scopes and claims need a JWT provider")


def _networks(value: list[str]) -> list[str]:
    for cidr in value:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ValueError(f"not an IP address or CIDR: {cidr!r}") from None
    return value


# CIDRs (or single addresses), checked at start: a route's ip_allow / ip_deny.
CidrList = Annotated[list[str], AfterValidator(_networks)]
