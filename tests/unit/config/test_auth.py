"""Auth settings: what a start refuses, by setting name."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from guardproxy.config import ConfigError, Settings, load_settings
from guardproxy.config.rate_limit import RateLimitRule
from tests.support.jwks import SigningKey

UPSTREAM = {"upstream": {"url": "http://127.0.0.1:8000"}}
PROVIDER = {"name": "idp", "issuer": "https://idp", "audiences": ["api"], "jwks_url": "https://idp/jwks"}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("GUARDPROXY_"):
            monkeypatch.delenv(name)


def load(auth: dict[str, Any], routes: list[dict[str, Any]] | None = None) -> Settings:
    return load_settings({**UPSTREAM, "auth": auth, "routes": routes or []})


def problems(auth: dict[str, Any], routes: list[dict[str, Any]] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(auth, routes)
    return "\n".join(caught.value.problems)


def provider(**changes: Any) -> dict[str, Any]:
    return {key: value for key, value in {**PROVIDER, **changes}.items() if value is not None}


def test_a_plain_provider_loads_with_safe_defaults() -> None:
    settings = load({"jwt": {"providers": [PROVIDER]}})
    loaded = settings.auth.jwt.providers[0]
    assert loaded.algorithms == ["RS256", "PS256", "ES256", "EdDSA"]
    assert settings.auth.default.mode == "off"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"algorithms": ["none"]}, "'none' is never accepted"),
        ({"algorithms": ["NONE", "RS256"]}, "'none' is never accepted"),
        ({"algorithms": ["RS1"]}, "unknown algorithm 'RS1'"),
        ({"algorithms": []}, "needs at least one algorithm"),
        ({"algorithms": ["HS256"]}, "HS256/384/512 need secret_env or secret_file"),
        ({"algorithms": ["RS256", "HS256"]}, "HS256/384/512 need secret_env or secret_file"),
        ({"audiences": []}, "audiences"),
        ({"audiences": None}, "audiences: is required"),
        ({"jwks_url": None}, "set exactly one of jwks_url"),
        ({"jwks_file": "/etc/hostname"}, "set exactly one of jwks_url"),
        ({"jwks_url": "ftp://idp/jwks"}, "must be an http:// or https:// URL"),
        ({"jwks_url": "http://idp.example.com/jwks"}, "plain http only to a loopback host"),
        ({"name": "api_keys"}, "reserved"),
        ({"leeway": 3600}, "leeway"),
        ({"refresh_interval": 5, "min_refresh_interval": 30}, "min_refresh_interval <= refresh_interval"),
    ],
)
def test_unsafe_providers_are_refused(changes: dict[str, Any], message: str) -> None:
    assert message in problems({"jwt": {"providers": [provider(**changes)]}})


def test_plain_http_is_allowed_to_loopback_or_on_request() -> None:
    load({"jwt": {"providers": [provider(jwks_url="http://127.0.0.1:8080/jwks")]}})
    load({"jwt": {"providers": [provider(jwks_url="http://keycloak:8080/jwks", allow_insecure_http=True)]}})


def test_shared_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    hs = provider(jwks_url=None, secret_env="TEST_SECRET", algorithms=["HS256"])  # noqa: S106 - a variable name
    assert "TEST_SECRET is not set" in problems({"jwt": {"providers": [hs]}})
    monkeypatch.setenv("TEST_SECRET", "short")
    assert "at least 32 bytes" in problems({"jwt": {"providers": [hs]}})
    monkeypatch.setenv("TEST_SECRET", "x" * 32)
    load({"jwt": {"providers": [hs]}})
    assert "accepts only HS256" in problems({"jwt": {"providers": [{**hs, "algorithms": ["HS256", "RS256"]}]}})
    (tmp_path / "secret").write_text("y" * 64 + "\n")
    hs512 = provider(jwks_url=None, secret_file=str(tmp_path / "secret"), algorithms=["HS512"])
    load({"jwt": {"providers": [hs512]}})
    assert "cannot read" in problems({"jwt": {"providers": [{**hs512, "secret_file": str(tmp_path / "none")}]}})


def test_key_files_are_checked_at_start(tmp_path: Path) -> None:
    key = SigningKey.rsa("k")
    (tmp_path / "key.pem").write_bytes(key.public_pem())
    load({"jwt": {"providers": [provider(jwks_url=None, jwks_file=str(tmp_path / "key.pem"))]}})
    (tmp_path / "bad.json").write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}')
    message = problems({"jwt": {"providers": [provider(jwks_url=None, jwks_file=str(tmp_path / "bad.json"))]}})
    assert "auth.jwt.providers.0: jwks_file: no key usable" in message
    ec_only = provider(jwks_url=None, jwks_file=str(tmp_path / "key.pem"), algorithms=["ES256"])
    assert "cannot verify any of ES256" in problems({"jwt": {"providers": [ec_only]}})


def test_provider_names_are_unique() -> None:
    assert "used twice" in problems({"jwt": {"providers": [PROVIDER, PROVIDER]}})


@pytest.mark.parametrize(
    ("route_auth", "message"),
    [
        ({"providers": ["nobody"]}, "routes[r].auth.providers: no provider 'nobody' is configured"),
        ({"providers": ["api_keys"]}, "no provider 'api_keys' is configured"),
        ({"providers": ["forward"]}, "no provider 'forward' is configured"),
        ({"mode": "sometimes"}, "mode"),
        ({"claims_to_headers": {"sub": "Authorization"}}, "Authorization cannot carry a claim"),
        ({"claims_to_headers": {"sub": "Host"}}, "header guardproxy sets itself"),
        ({"claims_to_headers": {"sub": "Bad Header"}}, "not a header name"),
    ],
)
def test_bad_route_policies_are_refused(route_auth: dict[str, Any], message: str) -> None:
    routes = [{"name": "r", "path": "/r/**", "auth": route_auth}]
    assert message in problems({"jwt": {"providers": [PROVIDER]}}, routes)


def test_a_protected_route_needs_a_provider() -> None:
    assert "needs a provider" in problems({"default": {"mode": "required"}})


def test_scopes_need_a_jwt_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_KEYS", "bot " + hashlib.sha256(b"k").hexdigest())
    routes = [{"name": "r", "path": "/r/**", "auth": {"providers": ["api_keys"], "scopes": ["x"]}}]
    assert "scopes and claims need a JWT provider" in problems({"api_keys": {"env": "TEST_KEYS"}}, routes)


def test_yaml_off_and_on_mean_what_they_say() -> None:
    routes = [{"name": "r", "path": "/r/**", "auth": {"mode": False}}]
    assert load({"jwt": {"providers": [PROVIDER]}}, routes).routes[0].auth.mode == "off"  # type: ignore[union-attr]


def test_api_key_lists_are_checked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    digest = hashlib.sha256(b"k").hexdigest()
    monkeypatch.setenv("TEST_KEYS", f"bot {digest}")
    load({"api_keys": {"env": "TEST_KEYS"}})
    monkeypatch.setenv("TEST_KEYS", "bot not-a-digest")
    message = problems({"api_keys": {"env": "TEST_KEYS"}})
    assert "entry 1: expected `name sha256-hex-digest`" in message
    assert "not-a-digest" not in message
    monkeypatch.setenv("TEST_KEYS", f"a {digest}, b {digest}")
    assert "listed twice" in problems({"api_keys": {"env": "TEST_KEYS"}})
    assert "is not set" in problems({"api_keys": {"env": "TEST_MISSING_KEYS"}})
    assert "cannot read" in problems({"api_keys": {"file": str(tmp_path / "missing")}})


@pytest.mark.parametrize("cidr", ["10.0.0.0/33", "example.com", "10.0.0.0/8/8"])
def test_bad_ip_lists_are_refused(cidr: str) -> None:
    routes = [{"name": "r", "path": "/r/**", "ip_allow": [cidr]}]
    assert "routes.0.ip_allow" in problems({}, routes)


def test_identity_rate_limit_keys_are_known() -> None:
    assert RateLimitRule(name="u", rate="1/second", key=["claim:sub", "api_key"]).key == ["claim:sub", "api_key"]
    with pytest.raises(ValueError, match="unknown key part"):
        RateLimitRule(name="u", rate="1/second", key=["claim:"])
    with pytest.raises(ValueError, match="unknown key part"):
        RateLimitRule(name="u", rate="1/second", key=["apikey"])


def test_forward_auth_url_must_be_http() -> None:
    assert "must be an http:// or https:// URL" in problems({"forward": {"url": "unix:///run/auth.sock"}})


def test_the_example_providers_load_and_show_every_provider_option(tmp_path: Path) -> None:
    """The commented provider example in config/guardproxy.yaml is a working configuration."""
    import yaml  # noqa: PLC0415

    from guardproxy.config.auth import JwtProvider  # noqa: PLC0415

    lines = (Path(__file__).resolve().parents[3] / "config" / "guardproxy.yaml").read_text().splitlines()
    start = lines.index("    # providers:")
    block = []
    for line in lines[start:]:
        if not line.startswith("    #"):
            break
        block.append(line.removeprefix("    # "))
    example = yaml.safe_load("\n".join(block))["providers"]
    shown = set().union(*(entry.keys() for entry in example))
    assert shown == set(JwtProvider.model_fields)
    # Make the example's file real and keep one key source per provider.
    (tmp_path / "key.pem").write_bytes(SigningKey.ec("e").public_pem())
    for entry in example:
        entry["jwks_file"] = str(tmp_path / "key.pem") if entry.get("jwks_file") else None
    providers = [{name: value for name, value in entry.items() if value is not None} for entry in example]
    settings = load({"jwt": {"providers": providers}})
    assert [provider.name for provider in settings.auth.jwt.providers] == ["keycloak", "internal"]
