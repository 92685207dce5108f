"""Key-set lifecycle through real processes: rotation without restart, a JWKS endpoint that is
down at start or dies mid-run, the rate limit on fetches caused by unknown kids, Cache-Control,
static key files and shared secrets."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import jwt

from tests.integration.test_auth import bearer, challenge, write_config
from tests.support.jwks import AUDIENCE, ISSUER, SigningKey, jwks_server, standard_claims
from tests.support.processes import Guardproxy, free_port, wait_until


def provider_config(jwks_url: str, **extra: object) -> str:
    options = "".join(f"\n        {name}: {option}" for name, option in extra.items())
    return f"""
auth:
  default: {{mode: required}}
  jwt:
    providers:
      - name: idp
        issuer: {ISSUER}
        audiences: [{AUDIENCE}]
        jwks_url: {jwks_url}{options}
routes:
  - {{name: public, path: /echo/public/**, auth: {{mode: off}}}}
"""


def status(gp: Guardproxy, token: str, path: str = "/echo/x") -> int:
    return httpx.get(f"{gp.url}{path}", headers=bearer(token)).status_code


def test_a_rotated_key_is_picked_up_without_restart(
    start_proxy: Callable[..., Guardproxy], upstream, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    old, new = SigningKey.rsa("2026-old"), SigningKey.rsa("2026-new")
    with jwks_server(old) as idp:
        gp = start_proxy(
            upstream.url, "--config", write_config(tmp_path, provider_config(idp.url, min_refresh_interval=1))
        )
        assert status(gp, old.token()) == 200
        # Within min_refresh_interval of the start-up fetch, an unknown kid fetches nothing.
        assert status(gp, new.token()) == 401
        assert len(idp.requests) == 1
        time.sleep(1.1)
        fetched = len(idp.requests)
        # The IdP starts signing with a key it has not published yet: unknown kid, one refetch.
        response = httpx.get(f"{gp.url}/echo/x", headers=bearer(new.token()))
        assert response.status_code == 401
        assert 'error_description="The token signing key is unknown"' in challenge(response)
        assert len(idp.requests) == fetched + 1
        # Now it publishes it: the next request with that kid fetches again and passes.
        idp.serve(old, new)
        time.sleep(1.1)
        assert status(gp, new.token()) == 200
        # The old key is withdrawn: its tokens stop working once the set is refetched, even
        # those the cache had already verified.
        cached = old.token(sub="cached")
        assert status(gp, cached) == 200
        idp.serve(new)
        time.sleep(1.1)
        assert status(gp, SigningKey.rsa("someone-else").token()) == 401  # causes the refetch
        assert status(gp, cached) == 401


def test_unknown_kids_cannot_make_a_fetch_storm(
    start_proxy: Callable[..., Guardproxy], upstream, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    key = SigningKey.rsa("only")
    with jwks_server(key) as idp:
        gp = start_proxy(
            upstream.url, "--config", write_config(tmp_path, provider_config(idp.url, min_refresh_interval=30))
        )
        fetched = len(idp.requests)
        with httpx.Client() as client:
            for index in range(30):
                token = SigningKey("kid-%d" % index, "RS256", key.private).token()
                assert client.get(f"{gp.url}/echo/x", headers=bearer(token)).status_code == 401
        assert len(idp.requests) - fetched <= 1


def test_jwks_down_at_start_fails_closed_then_recovers(
    start_proxy: Callable[..., Guardproxy], upstream, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    key = SigningKey.ec("ec-key")
    port = free_port()
    url = f"http://127.0.0.1:{port}/jwks.json"
    gp = start_proxy(upstream.url, "--config", write_config(tmp_path, provider_config(url, min_refresh_interval=1)))
    response = httpx.get(f"{gp.url}/echo/x", headers=bearer(key.token()))
    assert response.status_code == 503  # not 401: the token may well be valid
    assert response.json()["type"] == "urn:guardproxy:problem:auth-unavailable"
    assert response.headers["retry-after"]
    # A request without a token is still a plain 401, and unprotected routes still work.
    assert httpx.get(f"{gp.url}/echo/x").status_code == 401
    assert httpx.get(f"{gp.url}/echo/public/x").status_code == 200
    report = httpx.get(f"{gp.admin_url}/readyz").json()["checks"]["auth"]
    assert report["ok"] is False
    assert report["providers"]["idp"]["keys"] == 0
    assert "unreachable" in report["providers"]["idp"]["last_error"]
    with jwks_server(key, port=port):
        wait_until(lambda: status(gp, key.token()) == 200, timeout=10)
        assert httpx.get(f"{gp.admin_url}/readyz").json()["checks"]["auth"]["ok"] is True


def test_jwks_down_mid_run_keeps_the_last_good_keys(
    start_proxy: Callable[..., Guardproxy], upstream, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    key = SigningKey.ed25519("ed-key")
    config = provider_config("URL", refresh_interval=1, min_refresh_interval=1)
    with jwks_server(key) as idp:
        gp = start_proxy(upstream.url, "--config", write_config(tmp_path, config.replace("URL", idp.url)))
        assert status(gp, key.token()) == 200
        idp.status = 500
        fetched = len(idp.requests)
        wait_until(lambda: len(idp.requests) >= fetched + 2, timeout=10)
        # A token never seen before still verifies against the keys kept.
        assert status(gp, key.token(sub="new-user")) == 200
        report = httpx.get(f"{gp.admin_url}/readyz").json()["checks"]["auth"]["providers"]["idp"]
        assert report["ok"] is True
        assert report["last_error"] == "answered 500"
        idp.document = {"keys": "garbage"}
        idp.status = 200
        fetched = len(idp.requests)
        wait_until(lambda: len(idp.requests) >= fetched + 2, timeout=10)
        assert status(gp, key.token(sub="third-user")) == 200
    # The endpoint is gone altogether.
    time.sleep(1.5)
    assert status(gp, key.token(sub="fourth-user")) == 200


def test_cache_control_max_age_spaces_the_refreshes(
    start_proxy: Callable[..., Guardproxy], upstream, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    key = SigningKey.rsa("k")
    config = provider_config("URL", refresh_interval=1, min_refresh_interval=1)
    with jwks_server(key) as idp:
        idp.cache_control = "public, max-age=3600"
        start_proxy(upstream.url, "--config", write_config(tmp_path, config.replace("URL", idp.url)))
        time.sleep(2.5)
        assert len(idp.requests) == 1  # max-age outweighs the 1 s interval
    with jwks_server(key) as idp:
        idp.cache_control = "no-cache"
        start_proxy(upstream.url, "--config", write_config(tmp_path, config.replace("URL", idp.url), "b.yaml"))
        time.sleep(2.5)
        assert len(idp.requests) >= 2


def test_a_static_key_file_and_a_shared_secret(
    start_proxy: Callable[..., Guardproxy], upstream, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    key = SigningKey.rsa("file-key", alg="PS256")
    (tmp_path / "key.pem").write_bytes(key.public_pem())
    secret = "s" * 48
    config = f"""
auth:
  jwt:
    providers:
      - {{name: pem, issuer: {ISSUER}, audiences: [{AUDIENCE}], jwks_file: {tmp_path / "key.pem"}, algorithms: [PS256]}}
      - {{name: shared, issuer: https://internal, audiences: [{AUDIENCE}], secret_env: TEST_JWT_SECRET,
          algorithms: [HS256]}}
routes:
  - {{name: pem, path: /echo/pem/**, auth: {{providers: [pem]}}}}
  - {{name: shared, path: /echo/shared/**, auth: {{providers: [shared]}}}}
"""
    gp = start_proxy(upstream.url, "--config", write_config(tmp_path, config), env={"TEST_JWT_SECRET": secret})
    assert status(gp, key.token(), "/echo/pem/x") == 200
    hs = jwt.encode({**standard_claims(), "iss": "https://internal"}, secret, algorithm="HS256")
    assert status(gp, hs, "/echo/shared/x") == 200
    # Each route accepts only its own provider's tokens.
    assert status(gp, hs, "/echo/pem/x") == 401
    assert status(gp, key.token(), "/echo/shared/x") == 401
    wrong = jwt.encode({**standard_claims(), "iss": "https://internal"}, "w" * 48, algorithm="HS256")
    assert status(gp, wrong, "/echo/shared/x") == 401


def test_tokens_from_another_header_or_a_cookie(
    start_proxy: Callable[..., Guardproxy], upstream, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    key = SigningKey.ec("cookie-key")
    (tmp_path / "key.pem").write_bytes(key.public_pem())
    config = f"""
auth:
  jwt:
    token: {{header: X-Access-Token, cookie: access_token}}
    providers:
      - {{name: pem, issuer: {ISSUER}, audiences: [{AUDIENCE}], jwks_file: {tmp_path / "key.pem"}}}
  default: {{mode: required, forward_credentials: false}}
"""
    gp = start_proxy(upstream.url, "--config", write_config(tmp_path, config))
    token = key.token()
    by_header = httpx.get(f"{gp.url}/echo/x", headers={"X-Access-Token": token})
    assert by_header.status_code == 200
    assert "x-access-token" not in {name for name, _ in by_header.json()["headers"]}
    by_cookie = httpx.get(f"{gp.url}/echo/x", headers={"Cookie": f"theme=dark; access_token={token}; lang=en"})
    assert by_cookie.status_code == 200
    # Authorization: Bearer is not a source any more, and a look-alike cookie name is not the cookie.
    assert httpx.get(f"{gp.url}/echo/x", headers=bearer(token)).status_code == 401
    assert httpx.get(f"{gp.url}/echo/x", headers={"Cookie": f"xaccess_token={token}"}).status_code == 401
    assert httpx.get(f"{gp.url}/echo/x", headers={"X-Access-Token": token[:-3]}).status_code == 401
