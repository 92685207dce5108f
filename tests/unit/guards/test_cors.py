"""Origin matching and the CORS policy's decisions, without sockets."""

from __future__ import annotations

import pytest

from guardproxy.config import ConfigError, load_settings
from guardproxy.guards.cors import CorsPolicy
from guardproxy.origins import compile_origin_pattern


def policy(origins: list[str], *, credentials: bool = False) -> CorsPolicy:
    return CorsPolicy(
        origins=origins,
        methods=["GET", "PUT"],
        allow_headers=["Content-Type", "X-Request-ID"],
        expose_headers=["X-Request-ID"],
        allow_credentials=credentials,
        max_age=600,
    )


LISTED = ["https://app.example.com", "https://*.example.org", "http://localhost:3000"]


@pytest.mark.parametrize(
    "origin",
    [b"https://app.example.com", b"https://APP.example.com", b"https://a.example.org", b"https://x.y.example.org",
     b"http://localhost:3000"],
)  # fmt: skip
def test_allowed_origins(origin: bytes) -> None:
    assert policy(LISTED).allows_origin(origin)


@pytest.mark.parametrize(
    "origin",
    [
        b"null",
        b"https://example.org",  # the pattern is for subdomains only
        b"https://evilexample.org",
        b"https://a.example.org.evil.io",
        b"https://app.example.com.evil.io",
        b"http://app.example.com",  # wrong scheme
        b"https://app.example.com:8443",  # other port
        b"https://evil.com/https://app.example.com",
        b"https://app.example.com/",
        b"https://app.example.com@evil.com",
        b"https://-x.example.org",
        b"http://localhost:30000",
        b"",
        b"*",
        b"file://",
    ],
)
def test_refused_origins(origin: bytes) -> None:
    assert not policy(LISTED).allows_origin(origin)


def test_null_only_when_listed_exactly() -> None:
    assert policy(["null"]).allows_origin(b"null")
    assert not policy(["*"]).allows_origin(b"null")


def test_wildcard_answers_star_and_never_with_credentials() -> None:
    assert policy(["*"]).allow_origin_value(b"https://any.test") == b"*"
    with pytest.raises(ValueError, match="credentials"):
        policy(["*"], credentials=True)


@pytest.mark.parametrize(
    "pattern",
    ["app.example.com", "https://app.example.com/path", "https://*", "https://*example.com", "https://a.*.example.com",
     "ftp://*.example.com", "https://**.example.com", "https://app.example.com:99999999"],
)  # fmt: skip
def test_bad_origin_configuration(pattern: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each message is checked by the config test below
        compile_origin_pattern(pattern)


def test_configuration_errors_name_the_setting(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "c.yaml"
    config.write_text(
        "upstream: {url: 'http://x:1'}\n"
        "cors: {origins: ['*'], allow_credentials: true}\n"
        "routes:\n  - {name: r, path: /r, cors: {origins: ['https://*']}}\n"
    )
    with pytest.raises(ConfigError) as error:
        load_settings({}, config)
    assert any(line.startswith("cors") and "credentials" in line for line in error.value.problems)


def test_route_override_inherits_unset_fields(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "c.yaml"
    config.write_text(
        "upstream: {url: 'http://x:1'}\n"
        "cors: {origins: ['https://a.test'], max_age: 99}\n"
        "routes:\n  - {name: r, path: /r, cors: {allow_credentials: true}}\n"
    )
    settings = load_settings({}, config)
    effective = settings.effective_cors(settings.routes[0])
    assert (effective.origins, effective.max_age, effective.allow_credentials) == (["https://a.test"], 99, True)


def test_route_override_cannot_combine_star_and_credentials(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "c.yaml"
    config.write_text(
        "upstream: {url: 'http://x:1'}\ncors: {origins: ['*']}\n"
        "routes:\n  - {name: r, path: /r, cors: {allow_credentials: true}}\n"
    )
    with pytest.raises(ConfigError) as error:
        load_settings({}, config)
    assert any("routes[r].cors" in line for line in error.value.problems)


def test_preflight_decisions() -> None:
    rules = policy(LISTED, credentials=True)
    answer = rules.preflight(b"https://app.example.com", b"PUT", b"content-type, X-Request-ID")
    assert answer is not None
    headers = dict(answer.headers)
    assert headers[b"access-control-allow-origin"] == b"https://app.example.com"
    assert headers[b"access-control-allow-credentials"] == b"true"
    assert headers[b"access-control-allow-headers"] == b"content-type, x-request-id"
    assert answer.status == 204
    assert rules.preflight(b"https://app.example.com", b"DELETE", b"") is None  # method not allowed
    assert rules.preflight(b"https://app.example.com", b"PUT", b"x-secret") is None  # header not allowed
