"""Edge authentication through a real guardproxy process, a real upstream, a real JWKS endpoint
and a real forward-auth service: keys made with cryptography, tokens signed with PyJWT."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_metrics import scrape, value
from tests.support.jwks import AUDIENCE, ISSUER, JwksServer, SigningKey, jwks_server, standard_claims
from tests.support.processes import Guardproxy, echoed_headers, free_port, start_guardproxy

API_KEY = "s3cr3t-api-key-for-ci-bot"
LIMITED_KEY = "another-key-for-the-limited-bot"


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode()) + "."


def hs256_token(secret: bytes, header: dict[str, Any], claims: dict[str, Any]) -> str:
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(signature)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def challenge(response: httpx.Response) -> str:
    return ", ".join(response.headers.get_list("www-authenticate"))


def write_config(tmp_path: Path, text: str, name: str = "guardproxy.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


class ForwardAuthService:
    """A forward-auth service on a loopback port: decides by the bearer token it is sent."""

    def __init__(self) -> None:
        self.port = free_port()
        self.calls: list[dict[str, str]] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as guardproxy's pool expects

            def do_GET(self) -> None:
                call = {name.lower(): value for name, value in self.headers.items()}
                service.calls.append({**call, "peer-port": str(self.client_address[1])})
                credential = self.headers.get("Authorization", "").removeprefix("Bearer ")
                if credential == "allow":
                    self._answer(200, b"", {"X-Auth-User": "alice", "X-Auth-Groups": "admins"})
                elif credential == "deny":
                    body = json.dumps({"type": "urn:authsvc:denied", "title": "Denied", "status": 403}).encode()
                    self._answer(403, body, {"Content-Type": "application/problem+json"})
                elif credential == "slow":
                    time.sleep(2)
                    self._answer(200, b"", {})
                elif credential == "broken":
                    self._answer(500, b"oops", {})
                else:
                    self._answer(401, b"no", {"WWW-Authenticate": 'Basic realm="authsvc"'})

            def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, field in headers.items():
                    self.send_header(name, field)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                return

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                return  # guardproxy hanging up on the slow answer is the point of that test

        self.server = Server(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/check"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    return {"rsa": SigningKey.rsa("rsa-1"), "ec": SigningKey.ec("ec-1"), "ed": SigningKey.ed25519("ed-1")}


@pytest.fixture(scope="module")
def idp(keys: dict[str, SigningKey]) -> Iterator[JwksServer]:
    with jwks_server(*keys.values()) as server:
        yield server


@pytest.fixture(scope="module")
def forward_service() -> Iterator[ForwardAuthService]:
    service = ForwardAuthService()
    yield service
    service.stop()


MAIN_CONFIG = """
auth:
  jwt:
    token: {{query: access_token}}
    providers:
      - name: idp
        issuer: {issuer}
        audiences: [{audience}]
        jwks_url: {jwks_url}
        algorithms: [RS256, ES256, EdDSA]
        leeway: 5
        min_refresh_interval: 1
  api_keys:
    env: TEST_GUARDPROXY_API_KEYS
  forward:
    url: {forward_url}
    timeout: 0.5
    request_headers: [Authorization]
    response_headers: [X-Auth-User]
    subject_header: X-Auth-User
  strip_headers: [X-User-Roles]
rate_limit:
  rules:
    - {{name: per-user, rate: 2/minute, key: ["claim:sub"], routes: [limited]}}
    - {{name: per-key, rate: 2/minute, key: [api_key], routes: [keys-limited]}}
routes:
  - name: private
    path: /echo/private/**
    auth:
      providers: [idp]
      claims_to_headers: {{sub: X-Auth-Subject, tenant: X-Auth-Tenant}}
      forward_credentials: false
  - name: admin
    path: /echo/admin/**
    auth: {{providers: [idp], scopes: ["orders:write"], claims: {{tenant: [acme]}}}}
  - name: optional
    path: /echo/optional/**
    auth: {{mode: optional, claims_to_headers: {{sub: X-Auth-Subject}}}}
  - name: keys
    path: /echo/keys/**
    auth: {{providers: [api_keys]}}
  - name: keys-limited
    path: /echo/keys-limited/**
    auth: {{providers: [api_keys]}}
  - name: limited
    path: /echo/limited/**
    auth: {{providers: [idp]}}
  - name: fwd
    path: /echo/fwd/**
    auth: {{providers: [forward]}}
  - name: internal
    path: /echo/internal/**
    ip_allow: [10.0.0.0/8]
  - name: blocked
    path: /echo/blocked/**
    ip_allow: [127.0.0.0/8]
    ip_deny: [127.0.0.1/32]
  - name: cors
    path: /echo/cors/**
    cors: {{origins: ["https://app.example.com"]}}
    auth: {{providers: [idp]}}
"""


@pytest.fixture(scope="module")
def gp(  # type: ignore[no-untyped-def]
    upstream, idp: JwksServer, forward_service: ForwardAuthService, proxy_log_dir: Path, tmp_path_factory
) -> Iterator[Guardproxy]:
    path = write_config(
        tmp_path_factory.mktemp("auth"),
        MAIN_CONFIG.format(issuer=ISSUER, audience=AUDIENCE, jwks_url=idp.url, forward_url=forward_service.url),
    )
    keys_env = f"ci-bot {sha256_hex(API_KEY)}\nlimited-bot {sha256_hex(LIMITED_KEY)}"
    proxy = start_guardproxy(
        upstream.url, "--config", path, log_dir=proxy_log_dir, env={"TEST_GUARDPROXY_API_KEYS": keys_env}
    )
    yield proxy
    assert proxy.stop() == 0, proxy.log_text()


def echo(response: httpx.Response) -> dict[str, list[str]]:
    assert response.status_code == 200, response.text
    return echoed_headers(response.json())


# Valid tokens of every kind the provider allows.


@pytest.mark.parametrize("kind", ["rsa", "ec", "ed"])
def test_valid_tokens_pass_with_identity_headers(gp: Guardproxy, keys: dict[str, SigningKey], kind: str) -> None:
    token = keys[kind].token(tenant="acme")
    headers = echo(httpx.get(f"{gp.url}/echo/private/orders", headers=bearer(token)))
    assert headers["x-auth-subject"] == ["user-42"]
    assert headers["x-auth-tenant"] == ["acme"]
    assert "authorization" not in headers  # forward_credentials: false


def test_a_repeated_token_is_answered_from_the_cache(gp: Guardproxy, keys: dict[str, SigningKey]) -> None:
    token = keys["rsa"].token(sub="cached-user")
    with httpx.Client() as client:
        for _ in range(5):
            assert echo(client.get(f"{gp.url}/echo/private/x", headers=bearer(token)))["x-auth-subject"] == [
                "cached-user"
            ]


def test_credentials_are_kept_where_the_route_says_so(gp: Guardproxy, keys: dict[str, SigningKey]) -> None:
    token = keys["rsa"].token(scope="orders:read orders:write", tenant="acme")
    headers = echo(httpx.get(f"{gp.url}/echo/admin/1", headers=bearer(token)))
    assert headers["authorization"] == [f"Bearer {token}"]


# Tokens that must be refused, each with the RFC 6750 challenge saying why.


def assert_invalid_token(response: httpx.Response, description: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == "urn:guardproxy:problem:unauthorized"
    assert body["status"] == 401
    assert challenge(response) == (
        f'Bearer realm="guardproxy", error="invalid_token", error_description="{description}"'
    )


def test_missing_token_is_a_401_without_an_error_attribute(gp: Guardproxy) -> None:
    response = httpx.get(f"{gp.url}/echo/private/x")
    assert response.status_code == 401
    assert challenge(response) == 'Bearer realm="guardproxy"'
    assert "error" not in challenge(response)
    assert response.json()["request_id"]


@pytest.mark.parametrize(
    ("claims", "description"),
    [
        ({"exp": int(time.time()) - 60}, "The token has expired"),
        ({"nbf": int(time.time()) + 600}, "The token is not valid yet"),
        ({"iat": int(time.time()) + 600}, "The token is not valid yet"),
        ({"iss": "https://evil.example.test/"}, "The token issuer is not accepted here"),
        ({"aud": "another-api"}, "The token is not meant for this service"),
        ({"exp": None}, "The token lacks a required claim"),
    ],
    ids=["expired", "not-yet-valid", "issued-in-the-future", "wrong-issuer", "wrong-audience", "no-exp"],
)
def test_invalid_claims_are_refused(
    gp: Guardproxy, keys: dict[str, SigningKey], claims: dict[str, Any], description: str
) -> None:
    payload = {**standard_claims(), **claims}
    payload = {name: claim for name, claim in payload.items() if claim is not None}
    token = keys["rsa"].token(payload, standard=False)
    assert_invalid_token(httpx.get(f"{gp.url}/echo/private/x", headers=bearer(token)), description)


def test_alg_none_is_refused(gp: Guardproxy) -> None:
    token = unsigned_token({"alg": "none", "kid": "rsa-1", "typ": "JWT"}, standard_claims())
    assert_invalid_token(
        httpx.get(f"{gp.url}/echo/private/x", headers=bearer(token)), "The token algorithm is not accepted"
    )
    for alg in ("None", "NONE"):
        token = unsigned_token({"alg": alg, "kid": "rsa-1"}, standard_claims())
        assert httpx.get(f"{gp.url}/echo/private/x", headers=bearer(token)).status_code == 401


def test_hs256_signed_with_the_rsa_public_key_is_refused(gp: Guardproxy, keys: dict[str, SigningKey]) -> None:
    for secret in (keys["rsa"].public_pem(), json.dumps(keys["rsa"].jwk()).encode()):
        token = hs256_token(secret, {"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}, standard_claims())
        assert_invalid_token(
            httpx.get(f"{gp.url}/echo/private/x", headers=bearer(token)), "The token algorithm is not accepted"
        )


def test_a_key_of_another_algorithm_cannot_verify(gp: Guardproxy, keys: dict[str, SigningKey]) -> None:
    # PS256 is not on this provider's list, even with the right RSA key.
    token = SigningKey("rsa-1", "PS256", keys["rsa"].private).token()
    assert_invalid_token(
        httpx.get(f"{gp.url}/echo/private/x", headers=bearer(token)), "The token algorithm is not accepted"
    )


def test_a_forged_signature_is_refused(gp: Guardproxy, keys: dict[str, SigningKey]) -> None:
    impostor = SigningKey.rsa("rsa-1")  # same kid, another key
    assert_invalid_token(
        httpx.get(f"{gp.url}/echo/private/x", headers=bearer(impostor.token())), "The token signature is invalid"
    )
    good = keys["rsa"].token()
    head, _, signature = good.split(".")
    tampered_payload = b64url(json.dumps({**standard_claims(), "sub": "admin"}).encode())
    assert_invalid_token(
        httpx.get(f"{gp.url}/echo/private/x", headers=bearer(f"{head}.{tampered_payload}.{signature}")),
        "The token signature is invalid",
    )


@pytest.mark.parametrize(
    "token",
    ["not-a-jwt", "a.b.c", "e30.e30.", "eyJhbGciOiJSUzI1NiJ9." + "A" * 10_000 + ".x", "..", "%%%.%%%.%%%"],
)
def test_malformed_tokens_are_refused(gp: Guardproxy, token: str) -> None:
    response = httpx.get(f"{gp.url}/echo/private/x", headers=bearer(token))
    assert response.status_code == 401
    assert 'error="invalid_token"' in challenge(response)


def test_a_crit_header_is_refused(gp: Guardproxy, keys: dict[str, SigningKey]) -> None:
    token = keys["rsa"].token(headers={"crit": ["exp"], "exp": 1})
    assert_invalid_token(httpx.get(f"{gp.url}/echo/private/x", headers=bearer(token)), "The token is malformed")


def test_other_authorization_schemes_are_not_tokens(gp: Guardproxy) -> None:
    response = httpx.get(f"{gp.url}/echo/private/x", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert response.status_code == 401
    assert challenge(response) == 'Bearer realm="guardproxy"'


# Scopes and claim matchers.


def test_missing_scope_is_a_403_insufficient_scope(gp: Guardproxy, keys: dict[str, SigningKey]) -> None:
    token = keys["rsa"].token(scope="orders:read", tenant="acme")
    response = httpx.get(f"{gp.url}/echo/admin/1", headers=bearer(token))
    assert response.status_code == 403
    assert response.json()["type"] == "urn:guardproxy:problem:insufficient-scope"
    assert challenge(response) == (
        'Bearer realm="guardproxy", error="insufficient_scope", '
        'error_description="The token lacks a required scope", scope="orders:write"'
    )


def test_scp_list_claims_count_as_scopes(gp: Guardproxy, keys: dict[str, SigningKey]) -> None:
    token = keys["rsa"].token(scp=["orders:write"], tenant="acme")
    assert httpx.get(f"{gp.url}/echo/admin/1", headers=bearer(token)).status_code == 200


@pytest.mark.parametrize("tenant", ["globex", None, ["globex", "initech"], 7])
def test_a_failing_claim_matcher_is_a_403(gp: Guardproxy, keys: dict[str, SigningKey], tenant: object) -> None:
    claims: dict[str, Any] = {"scope": "orders:write"}
    if tenant is not None:
        claims["tenant"] = tenant
    response = httpx.get(f"{gp.url}/echo/admin/1", headers=bearer(keys["ec"].token(claims)))
    assert response.status_code == 403
    assert response.json()["type"] == "urn:guardproxy:problem:access-denied"


def test_a_list_claim_matches_when_it_holds_an_allowed_value(gp: Guardproxy, keys: dict[str, SigningKey]) -> None:
    token = keys["ec"].token(scope="orders:write", tenant=["globex", "acme"])
    assert httpx.get(f"{gp.url}/echo/admin/1", headers=bearer(token)).status_code == 200


# Identity headers: never believed from the client.


def test_forged_identity_headers_are_removed_everywhere(gp: Guardproxy, keys: dict[str, SigningKey]) -> None:
    forged = {"X-Auth-Subject": "admin", "X-Auth-Tenant": "acme", "X-User-Roles": "root", "X-Auth-Key-Name": "root"}
    forged_upper = {name.upper(): value for name, value in forged.items()}
    for url in (f"{gp.url}/echo/public", f"{gp.url}/echo/optional/x"):
        headers = echo(httpx.get(url, headers=forged_upper))
        assert not {"x-auth-subject", "x-auth-tenant", "x-user-roles", "x-auth-key-name"} & set(headers)
    token = keys["rsa"].token(tenant="acme")
    headers = echo(httpx.get(f"{gp.url}/echo/private/x", headers={**forged, **bearer(token)}))
    assert headers["x-auth-subject"] == ["user-42"]
    assert "x-user-roles" not in headers


def test_header_values_from_claims_cannot_inject_lines(gp: Guardproxy, keys: dict[str, SigningKey]) -> None:
    token = keys["rsa"].token(sub="evil\r\nX-Admin: yes", tenant="acmé")
    headers = echo(httpx.get(f"{gp.url}/echo/private/x", headers=bearer(token)))
    assert headers["x-auth-subject"] == ["evil%0D%0AX-Admin: yes"]
    assert headers["x-auth-tenant"] == ["acm%C3%A9"]
    assert "x-admin" not in headers


# Optional mode, query-string tokens, preflights.


def test_optional_mode_lets_anonymous_requests_through(gp: Guardproxy, keys: dict[str, SigningKey]) -> None:
    assert "x-auth-subject" not in echo(httpx.get(f"{gp.url}/echo/optional/x"))
    token = keys["ed"].token(sub="someone")
    assert echo(httpx.get(f"{gp.url}/echo/optional/x", headers=bearer(token)))["x-auth-subject"] == ["someone"]
    expired = keys["ed"].token(exp=int(time.time()) - 120)
    assert httpx.get(f"{gp.url}/echo/optional/x", headers=bearer(expired)).status_code == 401


def test_a_token_in_the_query_is_accepted_and_never_logged(gp: Guardproxy, keys: dict[str, SigningKey]) -> None:
    token = keys["rsa"].token(sub="query-user")
    response = httpx.get(f"{gp.url}/echo/private/sse", params={"access_token": token, "n": "1"})
    assert echo(response)["x-auth-subject"] == ["query-user"]
    refused = httpx.get(f"{gp.url}/echo/private/sse", params={"access_token": token[:-4] + "AAAA"})
    assert refused.status_code == 401
    time.sleep(0.5)
    log = gp.log_text()
    assert token not in log
    assert token[:-4] not in log
    assert token.split(".")[2] not in log
    assert "access_token=[REDACTED]" in log
    lines = [json.loads(line) for line in log.splitlines() if '"query-user"' in line]
    assert lines
    assert lines[-1]["subject"] == "query-user"


def test_preflights_are_never_authenticated(gp: Guardproxy) -> None:
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "PUT"}
    # guardproxy answers it on a CORS route...
    response = httpx.options(f"{gp.url}/echo/cors/x", headers=preflight)
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "https://app.example.com"
    # ...and forwards it, unauthenticated, where CORS is the upstream's business.
    assert httpx.options(f"{gp.url}/echo/private/x", headers=preflight).status_code == 200
    # A plain OPTIONS is no preflight: it needs a token like any request.
    assert httpx.options(f"{gp.url}/echo/private/x").status_code == 401
    assert httpx.get(f"{gp.url}/echo/cors/x", headers={"Origin": "https://app.example.com"}).status_code == 401


# API keys.


def test_api_keys(gp: Guardproxy) -> None:
    headers = echo(httpx.get(f"{gp.url}/echo/keys/x", headers={"X-API-Key": API_KEY}))
    assert headers["x-auth-key-name"] == ["ci-bot"]
    assert headers["x-api-key"] == [API_KEY]
    for wrong in (API_KEY + "x", API_KEY[:-1], sha256_hex(API_KEY), "", "ci-bot"):
        response = httpx.get(f"{gp.url}/echo/keys/x", headers={"X-API-Key": wrong})
        assert response.status_code == 401, wrong
        assert challenge(response) == 'APIKey realm="guardproxy", header="X-API-Key"'
    missing = httpx.get(f"{gp.url}/echo/keys/x")
    assert missing.status_code == 401
    assert "X-API-Key" in missing.json()["detail"]
    # A bearer token is not an API key.
    assert httpx.get(f"{gp.url}/echo/keys/x", headers=bearer(API_KEY)).status_code == 401


# Rate-limit keys from the verified identity.


def test_claim_sub_keys_a_rate_limit(gp: Guardproxy, keys: dict[str, SigningKey]) -> None:
    alice, bob = keys["rsa"].token(sub="limit-alice"), keys["rsa"].token(sub="limit-bob")
    with httpx.Client() as client:
        statuses = [client.get(f"{gp.url}/echo/limited/x", headers=bearer(alice)).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        # Another subject from the same address has a budget of its own.
        assert client.get(f"{gp.url}/echo/limited/x", headers=bearer(bob)).status_code == 200
        # A fresh token for the same subject buys no fresh budget.
        again = keys["ec"].token(sub="limit-alice")
        assert client.get(f"{gp.url}/echo/limited/x", headers=bearer(again)).status_code == 429


def test_api_key_name_keys_a_rate_limit(gp: Guardproxy) -> None:
    with httpx.Client() as client:
        limited = [
            client.get(f"{gp.url}/echo/keys-limited/x", headers={"X-API-Key": LIMITED_KEY}).status_code
            for _ in range(3)
        ]
        assert limited == [200, 200, 429]
        assert client.get(f"{gp.url}/echo/keys-limited/x", headers={"X-API-Key": API_KEY}).status_code == 200


# Forward auth.


def test_forward_auth_allows_and_copies_headers(gp: Guardproxy, forward_service: ForwardAuthService) -> None:
    headers = echo(
        httpx.get(f"{gp.url}/echo/fwd/a?b=1", headers={"Authorization": "Bearer allow", "X-Auth-User": "mallory"})
    )
    assert headers["x-auth-user"] == ["alice"]
    assert "x-auth-groups" not in headers  # only the configured answer headers
    call = forward_service.calls[-1]
    assert call["x-forwarded-method"] == "GET"
    assert call["x-forwarded-uri"] == "/echo/fwd/a?b=1"
    assert call["x-forwarded-for"] == "127.0.0.1"
    assert "x-request-id" in call
    # The next call reuses the kept-alive connection.
    echo(httpx.get(f"{gp.url}/echo/fwd/b", headers={"Authorization": "Bearer allow"}))
    assert forward_service.calls[-1]["peer-port"] == call["peer-port"]


def test_forward_auth_denials_are_passed_back(gp: Guardproxy) -> None:
    denied = httpx.get(f"{gp.url}/echo/fwd/a", headers={"Authorization": "Bearer deny"})
    assert denied.status_code == 403
    assert denied.json()["type"] == "urn:authsvc:denied"  # the service's own problem
    unauthenticated = httpx.get(f"{gp.url}/echo/fwd/a")
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["type"] == "urn:guardproxy:problem:unauthorized"
    assert challenge(unauthenticated) == 'Basic realm="authsvc"'


@pytest.mark.parametrize("token", ["slow", "broken"])
def test_forward_auth_fails_closed(gp: Guardproxy, token: str) -> None:
    started = time.monotonic()
    response = httpx.get(f"{gp.url}/echo/fwd/a", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 503
    assert response.json()["type"] == "urn:guardproxy:problem:auth-unavailable"
    assert time.monotonic() - started < 1.8


# IP lists.


def test_ip_allow_and_deny_lists(gp: Guardproxy) -> None:
    for path in ("/echo/internal/x", "/echo/blocked/x"):
        response = httpx.get(f"{gp.url}{path}")
        assert response.status_code == 403
        assert response.json()["type"] == "urn:guardproxy:problem:address-refused"
    assert httpx.get(f"{gp.url}/echo/public").status_code == 200


# What operators see.


def test_metrics_count_decisions_by_provider_and_result(gp: Guardproxy, keys: dict[str, SigningKey]) -> None:
    httpx.get(f"{gp.url}/echo/private/x", headers=bearer(keys["rsa"].token()))
    httpx.get(f"{gp.url}/echo/private/x", headers=bearer(keys["rsa"].token(exp=int(time.time()) - 100)))
    text = scrape(gp)
    assert value(text, "guardproxy_auth_decisions_total", provider="idp", result="valid") >= 1
    assert value(text, "guardproxy_auth_decisions_total", provider="idp", result="expired") >= 1
    assert value(text, "guardproxy_auth_jwks_fetches_total", provider="idp", result="ok") >= 1


def test_readiness_reports_the_key_sets(gp: Guardproxy) -> None:
    report = httpx.get(f"{gp.admin_url}/readyz").json()
    auth = report["checks"]["auth"]
    assert auth["ok"] is True
    assert auth["providers"]["idp"]["keys"] == 3


def test_refusals_are_audited_without_the_token(gp: Guardproxy) -> None:
    forged = unsigned_token({"alg": "RS256", "kid": "rsa-1"}, {"sub": "x"}) + "c2lnbmF0dXJl"
    httpx.get(f"{gp.url}/echo/private/audited", headers=bearer(forged))
    time.sleep(0.5)
    events = [json.loads(line) for line in gp.log_text().splitlines() if '"security_event"' in line]
    assert any(event["kind"] == "unauthorized" and event["path"] == "/echo/private/audited" for event in events)
    assert forged not in gp.log_text()


def test_forward_auth_cache_remembers_allowed_credentials_only(  # type: ignore[no-untyped-def]
    start_proxy, upstream, forward_service: ForwardAuthService, tmp_path: Path
) -> None:
    config = f"""
auth:
  forward: {{url: {forward_service.url}, cache_ttl: 30, response_headers: [X-Auth-User]}}
  default: {{providers: [forward]}}
"""
    gp = start_proxy(upstream.url, "--config", write_config(tmp_path, config))
    before = len(forward_service.calls)
    with httpx.Client() as client:
        for _ in range(3):
            response = client.get(f"{gp.url}/echo/x", headers={"Authorization": "Bearer allow"})
            assert echo(response)["x-auth-user"] == ["alice"]  # copied again from the cached answer
        assert len(forward_service.calls) == before + 1
        for _ in range(2):
            assert client.get(f"{gp.url}/echo/x", headers={"Authorization": "Bearer deny"}).status_code == 403
        assert len(forward_service.calls) == before + 3
