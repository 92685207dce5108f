"""The auth guards built from settings: the per-route table, the providers, the key stores."""

from __future__ import annotations

from collections.abc import Callable

from guardproxy.config import RouteSettings, Settings
from guardproxy.config.auth import API_KEYS_PROVIDER, FORWARD_PROVIDER, AuthSettings, RouteAuth, read_secret
from guardproxy.guards.auth.api_keys import ApiKeyStore, parse_api_keys
from guardproxy.guards.auth.forward import ForwardAuth
from guardproxy.guards.auth.guard import AuthGuard
from guardproxy.guards.auth.ip_lists import AddressPolicy, IpListGuard
from guardproxy.guards.auth.jwks import RefreshPolicy, RemoteKeySet, load_key_file, secret_key_set
from guardproxy.guards.auth.jwt_provider import TokenVerifier
from guardproxy.guards.auth.policy import AuthPolicy, compile_claims
from guardproxy.guards.chain import Guard
from guardproxy.observability.metrics import MetricSources
from guardproxy.routes import DEFAULT_ROUTE_NAME

Count = Callable[[str, str], None]


def route_auth(settings: Settings, route: RouteSettings | None) -> RouteAuth:
    """A route's policy: its own `auth` block, else `auth.default`."""
    if route is not None and route.auth is not None:
        return route.auth
    return settings.auth.default


def auth_configured(settings: Settings) -> bool:
    policies = [route_auth(settings, route) for route in settings.routes] + [settings.auth.default]
    return any(policy.mode != "off" for policy in policies) or bool(identity_headers(settings))


def identity_headers(settings: Settings) -> list[str]:
    """Every request header that carries an identity the upstream may trust: client copies of
    these are removed from every request."""
    auth = settings.auth
    names = list(auth.strip_headers)
    for policy in [auth.default, *(route.auth for route in settings.routes if route.auth is not None)]:
        names += policy.claims_to_headers.values()
    if auth.api_keys.configured and auth.api_keys.name_header:
        names.append(auth.api_keys.name_header)
    if auth.forward.url is not None:
        names += auth.forward.response_headers
    return sorted({name.lower() for name in names})


def _verifiers(auth: AuthSettings, count_fetch: Count) -> list[TokenVerifier]:
    verifiers = []
    for provider in auth.jwt.providers:
        common = {
            "name": provider.name,
            "issuer": provider.issuer,
            "audiences": provider.audiences,
            "algorithms": provider.algorithms,
            "leeway": provider.leeway,
            "required_claims": provider.required_claims,
        }
        if provider.jwks_url is not None:
            remote = RemoteKeySet(
                provider.name,
                provider.jwks_url,
                provider.algorithms,
                RefreshPolicy(
                    interval=provider.refresh_interval,
                    minimum=provider.min_refresh_interval,
                    maximum=provider.max_refresh_interval,
                    timeout=provider.fetch_timeout,
                ),
                ca_file=provider.jwks_ca_file,
                count_fetch=count_fetch,
            )
            verifiers.append(TokenVerifier(**common, remote=remote))  # type: ignore[arg-type]
        elif provider.jwks_file is not None:
            keys = load_key_file(provider.jwks_file, provider.algorithms)
            verifiers.append(TokenVerifier(**common, keys=keys))  # type: ignore[arg-type]
        else:
            secret = read_secret(provider.secret_env, provider.secret_file)
            assert secret is not None
            keys = secret_key_set(secret, provider.algorithms)
            verifiers.append(TokenVerifier(**common, keys=keys))  # type: ignore[arg-type]
    return verifiers


def _policy(policy: RouteAuth, verifiers: dict[str, TokenVerifier]) -> AuthPolicy:
    names = policy.providers or list(verifiers)
    return AuthPolicy(
        mode=policy.mode,
        verifiers=tuple(verifiers[name] for name in names if name in verifiers),
        api_keys=API_KEYS_PROVIDER in names,
        forward=FORWARD_PROVIDER in names,
        scopes=frozenset(policy.scopes),
        claims=compile_claims(policy.claims),
        claim_headers=tuple(
            (claim, header.lower().encode("latin-1")) for claim, header in policy.claims_to_headers.items()
        ),
        forward_credentials=policy.forward_credentials,
    )


def build_auth_guard(settings: Settings, count: Count, count_fetch: Count) -> AuthGuard | None:
    if not auth_configured(settings):
        return None
    auth = settings.auth
    verifiers = _verifiers(auth, count_fetch)
    by_name = {verifier.name: verifier for verifier in verifiers}
    policies = {DEFAULT_ROUTE_NAME: _policy(auth.default, by_name)}
    for route in settings.routes:
        policies[route.name] = _policy(route_auth(settings, route), by_name)
    api_keys = auth.api_keys
    store = None
    if api_keys.configured:
        source = read_secret(api_keys.env, None) if api_keys.env is not None else b""
        if api_keys.file is not None:
            source = (source or b"") + b"\n" + (read_secret(None, api_keys.file) or b"")
        store = ApiKeyStore(parse_api_keys((source or b"").decode("utf-8", "replace")))
    forward_settings = auth.forward
    forward = (
        ForwardAuth(
            url=forward_settings.url,
            timeout=forward_settings.timeout,
            request_headers=forward_settings.request_headers,
            response_headers=forward_settings.response_headers,
            subject_header=forward_settings.subject_header,
            cache_ttl=forward_settings.cache_ttl,
            cache_size=forward_settings.cache_size,
            max_connections=forward_settings.max_connections,
        )
        if forward_settings.url is not None
        else None
    )
    token = auth.jwt.token
    return AuthGuard(
        policies=policies,
        verifiers=verifiers,
        token_header_name=token.header,
        token_cookie=token.cookie,
        token_query=token.query,
        api_keys=store,
        api_key_header=api_keys.header,
        api_key_name_header=api_keys.name_header,
        forward=forward,
        strip_headers=identity_headers(settings),
        realm=auth.realm,
        cache_size=auth.jwt.cache_size,
        count=count,
    )


def build_ip_list_guard(settings: Settings) -> IpListGuard | None:
    policies = {
        route.name: AddressPolicy.of(route.ip_allow, route.ip_deny)
        for route in settings.routes
        if route.ip_allow or route.ip_deny
    }
    return IpListGuard(policies) if policies else None


def auth_guards(settings: Settings, metrics: MetricSources | None) -> list[Guard]:
    """IP lists, then authentication, as runtime.build_guards places them."""
    guards: list[Guard] = []
    ip_lists = build_ip_list_guard(settings)
    if ip_lists is not None:
        guards.append(ip_lists)
    count = metrics.counted(metrics.families.auth_decisions).add if metrics is not None else _ignore
    count_fetch = metrics.counted(metrics.families.auth_jwks_fetches).add if metrics is not None else _ignore
    auth = build_auth_guard(settings, count, count_fetch)
    if auth is not None:
        guards.append(auth)
        if metrics is not None:
            metrics.families.declare_auth_providers(
                [verifier.name for verifier in auth.verifiers],
                [verifier.name for verifier in auth.verifiers if verifier.remote is not None],
            )
    return guards


def redacted_query_params(settings: Settings) -> list[str]:
    """The logging setting's list, plus the query parameter a JWT may come in."""
    query = settings.auth.jwt.token.query
    return [*settings.logging.redact_query_params, *([query] if query else [])]


def _ignore(*_: object) -> None:
    return None
