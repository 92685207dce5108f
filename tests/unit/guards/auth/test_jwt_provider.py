"""The pure parts of JWT verification: key sets, algorithm binding, token headers, the cache."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest

from guardproxy.guards.auth import jwt_provider as results
from guardproxy.guards.auth.api_keys import ApiKeyError, ApiKeyStore, parse_api_keys
from guardproxy.guards.auth.ip_lists import AddressPolicy
from guardproxy.guards.auth.jwks import (
    KeySet,
    KeySetError,
    VerificationKey,
    parse_jwks,
    parse_pem,
    refresh_delay,
    secret_key_set,
)
from guardproxy.guards.auth.jwt_provider import (
    TokenHeader,
    TokenVerifier,
    VerificationCache,
    Verified,
    scopes_of,
    token_header,
)
from guardproxy.guards.auth.policy import header_value
from tests.support.jwks import AUDIENCE, ISSUER, SigningKey, jwks_document, standard_claims

ASYMMETRIC = ["RS256", "PS256", "ES256", "EdDSA"]


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return SigningKey.rsa("r1")


def verifier(keys: KeySet, algorithms: list[str] | None = None, **options: Any) -> TokenVerifier:
    return TokenVerifier(
        name="idp",
        issuer=ISSUER,
        audiences=[AUDIENCE],
        algorithms=algorithms or ASYMMETRIC,
        leeway=options.pop("leeway", 0),
        required_claims=options.pop("required_claims", []),
        keys=keys,
    )


def check(token_verifier: TokenVerifier, token: str) -> Verified | str:
    header = token_header(token)
    if header is None:
        return results.MALFORMED
    return token_verifier.verify(token, header)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# Key sets.


def test_keys_are_bound_to_the_algorithms_they_may_verify(rsa_key: SigningKey) -> None:
    ec, ed = SigningKey.ec("e1"), SigningKey.ed25519("d1")
    document = {"keys": [rsa_key.jwk(with_alg=False), ec.jwk(with_alg=False), ed.jwk()]}
    keys = parse_jwks(json.dumps(document).encode(), ASYMMETRIC)
    assert keys.by_kid["r1"].algorithms == {"RS256", "PS256"}
    assert keys.by_kid["e1"].algorithms == {"ES256"}
    assert keys.by_kid["d1"].algorithms == {"EdDSA"}
    assert keys.find("r1", "PS256") is keys.by_kid["r1"]
    assert keys.find("r1", "ES256") is None
    assert keys.find("r1", "HS256") is None


@pytest.mark.parametrize(
    "jwk_changes",
    [
        {"use": "enc"},
        {"key_ops": ["encrypt"]},
        {"alg": "HS256"},
        {"alg": "ES256"},  # an RSA key claiming an EC algorithm
        {"kty": "oct", "k": "c2VjcmV0"},
        {"d": "cHJpdmF0ZQ"},  # a private key published by mistake
        {"n": "AQAB"},  # a broken modulus
    ],
)
def test_unusable_keys_are_skipped(rsa_key: SigningKey, jwk_changes: dict[str, Any]) -> None:
    good = SigningKey.ec("fine").jwk()
    bad = {**rsa_key.jwk(), **jwk_changes}
    keys = parse_jwks(json.dumps({"keys": [bad, good]}).encode(), [*ASYMMETRIC, "HS256"])
    assert list(keys.by_kid) == ["fine"]


def test_short_rsa_keys_are_not_trusted() -> None:
    weak = SigningKey.rsa("weak", bits=1024)
    with pytest.raises(KeySetError, match="no key usable"):
        parse_jwks(json.dumps(jwks_document(weak)).encode(), ASYMMETRIC)
    with pytest.raises(KeySetError):
        parse_pem(weak.public_pem(), ASYMMETRIC)


@pytest.mark.parametrize("document", [b"", b"[]", b'{"keys": {}}', b"not json", b'{"keys": [1, "x", null]}'])
def test_broken_documents_are_errors(document: bytes) -> None:
    with pytest.raises(KeySetError):
        parse_jwks(document, ASYMMETRIC)


def test_a_single_jwk_and_a_pem_file_are_key_sets(rsa_key: SigningKey) -> None:
    assert len(parse_jwks(json.dumps(rsa_key.jwk()).encode(), ASYMMETRIC)) == 1
    pem = parse_pem(rsa_key.public_pem(), ["PS256"])
    assert pem.find("whatever-kid", "PS256") is not None  # a PEM key has no kid to match
    assert pem.find(None, "RS256") is None


def test_a_token_without_kid_needs_an_unambiguous_key(rsa_key: SigningKey) -> None:
    other = SigningKey.rsa("r2")
    keys = parse_jwks(json.dumps(jwks_document(rsa_key, other)).encode(), ASYMMETRIC)
    assert keys.find(None, "RS256") is None
    single = parse_jwks(json.dumps(jwks_document(rsa_key)).encode(), ASYMMETRIC)
    assert single.find(None, "RS256") is not None
    assert not single.names("unknown")
    assert single.names("r1")


@pytest.mark.parametrize(
    ("cache_control", "expected"),
    [
        (None, 600),
        ("", 600),
        ("public, max-age=3600", 3600),
        ("max-age=5", 30),
        ("max-age=999999999", 86400),
        ("no-cache", 30),
        ("no-store, max-age=3600", 30),
        ("private", 600),
        ("max-age=abc", 600),
        ('max-age="120"', 120),
    ],
)
def test_refresh_delay_honours_cache_control(cache_control: str | None, expected: float) -> None:
    assert refresh_delay(cache_control, default=600, minimum=30, maximum=86400) == expected


# Token headers and verification.


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.e30.x",
        b64url(b"[1]") + ".e30.x",
        b64url(b'{"alg": 1}') + ".e30.x",
        b64url(b'{"alg": "RS256", "kid": 7}') + ".e30.x",
        b64url(b'{"alg": "RS256", "crit": ["b64"]}') + ".e30.x",
        b64url(b'{"alg": "RS256"}') + "." + "A" * 9000 + ".x",
    ],
)
def test_malformed_headers(token: str) -> None:
    assert token_header(token) is None


def test_a_valid_token_is_verified_with_its_claims(rsa_key: SigningKey) -> None:
    keys = parse_jwks(json.dumps(jwks_document(rsa_key)).encode(), ASYMMETRIC)
    result = check(verifier(keys), rsa_key.token(scope="a b", scp=["c"]))
    assert isinstance(result, Verified)
    assert result.subject == "user-42"
    assert result.scopes == {"a", "b", "c"}
    assert result.keys is keys


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"exp": -60}, results.EXPIRED),
        ({"nbf": 600}, results.NOT_YET_VALID),
        ({"iss": "https://other"}, results.BAD_ISSUER),
        ({"aud": "other"}, results.BAD_AUDIENCE),
        ({"aud": ["other", "another"]}, results.BAD_AUDIENCE),
        ({"exp": None}, results.MISSING_CLAIM),
        ({"exp": "tomorrow"}, results.MALFORMED),
    ],
)
def test_claim_failures_have_their_own_results(rsa_key: SigningKey, claims: dict[str, Any], expected: str) -> None:
    keys = parse_jwks(json.dumps(jwks_document(rsa_key)).encode(), ASYMMETRIC)
    payload = standard_claims()
    now = int(time.time())
    for name, change in claims.items():
        if change is None:
            del payload[name]
        elif name in ("exp", "nbf") and isinstance(change, int):
            payload[name] = now + change
        else:
            payload[name] = change
    assert check(verifier(keys), rsa_key.token(payload, standard=False)) == expected


def test_leeway_and_required_claims(rsa_key: SigningKey) -> None:
    keys = parse_jwks(json.dumps(jwks_document(rsa_key)).encode(), ASYMMETRIC)
    just_expired = rsa_key.token(exp=int(time.time()) - 10)
    assert check(verifier(keys), just_expired) == results.EXPIRED
    assert isinstance(check(verifier(keys, leeway=30), just_expired), Verified)
    assert check(verifier(keys, required_claims=["tenant"]), rsa_key.token()) == results.MISSING_CLAIM


def test_hmac_with_the_public_key_as_secret_finds_no_key(rsa_key: SigningKey) -> None:
    """Even if HS256 were on the list (config refuses that for a key set), the RSA key is bound
    to RS/PS algorithms, so the classic key confusion cannot verify."""
    keys = parse_jwks(json.dumps(jwks_document(rsa_key)).encode(), ASYMMETRIC)
    signing_input = b64url(b'{"alg":"HS256","kid":"r1"}') + "." + b64url(json.dumps(standard_claims()).encode())
    for secret in (rsa_key.public_pem(), json.dumps(rsa_key.jwk()).encode()):
        token = signing_input + "." + b64url(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())
        assert check(verifier(keys, [*ASYMMETRIC, "HS256"]), token) == results.BAD_ALGORITHM


def test_alg_none_is_never_verified(rsa_key: SigningKey) -> None:
    keys = parse_jwks(json.dumps(jwks_document(rsa_key)).encode(), ASYMMETRIC)
    token = b64url(b'{"alg":"none","kid":"r1"}') + "." + b64url(json.dumps(standard_claims()).encode()) + "."
    assert check(verifier(keys, [*ASYMMETRIC, "none"]), token) == results.BAD_ALGORITHM


def test_unknown_and_mismatched_keys(rsa_key: SigningKey) -> None:
    keys = parse_jwks(json.dumps(jwks_document(rsa_key)).encode(), ASYMMETRIC)
    stranger = SigningKey("r9", "RS256", rsa_key.private)
    assert check(verifier(keys), stranger.token()) == results.UNKNOWN_KEY
    assert check(verifier(keys), SigningKey.rsa("r1").token()) == results.BAD_SIGNATURE


def test_shared_secret_provider() -> None:
    secret = b"k" * 32
    keys = secret_key_set(secret, ["HS256"])
    token = jwt.encode(standard_claims(), secret, algorithm="HS256", headers={"kid": "anything"})
    assert isinstance(check(verifier(keys, ["HS256"]), token), Verified)
    wrong = jwt.encode(standard_claims(), b"w" * 32, algorithm="HS256")
    assert check(verifier(keys, ["HS256"]), wrong) == results.BAD_SIGNATURE


def test_a_provider_without_keys_says_so() -> None:
    empty = verifier(KeySet([]))
    empty._keys = None
    assert empty.verify("x.y.z", TokenHeader("RS256", "k")) == results.NO_KEYS


def test_scopes_of() -> None:
    assert scopes_of({"scope": "a  b"}) == {"a", "b"}
    assert scopes_of({"scp": "c d"}) == {"c", "d"}
    assert scopes_of({"scp": ["e", 1, None]}) == {"e"}
    assert scopes_of({"scope": 5}) == frozenset()


# The verification cache.


def entry(deadline: float) -> Verified:
    return Verified("idp", {}, frozenset(), "s", deadline, KeySet([VerificationKey(None, frozenset(), None)]))


def test_the_cache_forgets_expired_tokens_and_stays_bounded() -> None:
    cache = VerificationCache(max_entries=2)
    cache.put(b"a", entry(100))
    assert cache.get(b"a", 99.9) is not None
    assert cache.get(b"a", 100) is None
    assert len(cache) == 0
    for name in (b"x", b"y", b"z"):
        cache.put(name, entry(1000))
    assert len(cache) == 2
    assert cache.get(b"x", 0) is None
    assert cache.get(b"z", 0) is not None
    off = VerificationCache(max_entries=0)
    off.put(b"a", entry(1000))
    assert off.get(b"a", 0) is None


# Claims as header values.


@pytest.mark.parametrize(
    ("claim", "expected"),
    [
        ("user-42", b"user-42"),
        ("a\r\nX-Admin: 1", b"a%0D%0AX-Admin: 1"),
        ("100%", b"100%25"),
        ("Zoë", b"Zo%C3%AB"),
        (42, b"42"),
        (True, b"true"),
        (["a", "b,c"], b"a,b%2Cc"),
        ({"k": "v"}, b'{"k":"v"}'),
        (None, None),
    ],
)
def test_header_values(claim: object, expected: bytes | None) -> None:
    assert header_value(claim) == expected


# API keys and IP lists.


def test_api_keys_match_by_digest_only() -> None:
    digest = hashlib.sha256(b"the-key").hexdigest()
    store = ApiKeyStore(parse_api_keys(f"# comment\nci {digest}\n\nold:{hashlib.sha256(b'k2').hexdigest()}"))
    assert len(store) == 2
    assert store.lookup(b"the-key") == "ci"
    assert store.lookup(b"k2") == "old"
    assert store.lookup(b"the-key ") is None
    assert store.lookup(digest.encode()) is None
    assert store.lookup(b"") is None
    assert store.lookup(b"x" * 5000) is None


@pytest.mark.parametrize("text", ["ci", "ci abc", "ci " + "g" * 64, "bad name " + "a" * 64, "ci:" + "a" * 63])
def test_api_key_lines_must_be_name_and_digest(text: str) -> None:
    with pytest.raises(ApiKeyError):
        parse_api_keys(text)


def test_address_policies() -> None:
    policy = AddressPolicy.of(["10.0.0.0/8", "2001:db8::/32"], ["10.6.6.0/24"])
    assert policy.admits("10.1.2.3")
    assert not policy.admits("10.6.6.6")
    assert not policy.admits("192.0.2.1")
    assert policy.admits("2001:db8::1")
    assert policy.admits("::ffff:10.1.2.3")
    assert not policy.admits("unknown")
    deny_only = AddressPolicy.of([], ["192.0.2.0/24"])
    assert deny_only.admits("198.51.100.1")
    assert not deny_only.admits("192.0.2.9")
    assert not deny_only.admits("::ffff:192.0.2.9")


# Rate-limit keys from the verified identity.


def _rule_key(key: list[str], **identity: Any) -> str:
    from guardproxy.config import RateLimitRule  # noqa: PLC0415
    from guardproxy.context import RequestContext  # noqa: PLC0415
    from guardproxy.ratelimit.rules import compile_rule  # noqa: PLC0415
    from guardproxy.routes import RoutePolicy  # noqa: PLC0415

    rule = compile_rule(RateLimitRule(name="r", rate="10/minute", key=key))
    context = RequestContext(route=RoutePolicy("default", 5.0, 60.0, None, 1024), client_host="192.0.2.1")
    for name, field in identity.items():
        setattr(context, name, field)
    return rule.key("p:", {"headers": []}, context)


def test_claim_and_api_key_rate_limit_keys() -> None:
    alice = _rule_key(["claim:sub"], claims={"sub": "alice", "iss": "https://a"})
    assert alice == _rule_key(["claim:sub"], claims={"sub": "alice", "iss": "https://a", "jti": "other"})
    assert alice != _rule_key(["claim:sub"], claims={"sub": "bob", "iss": "https://a"})
    # The same sub from another issuer is someone else.
    assert alice != _rule_key(["claim:sub"], claims={"sub": "alice", "iss": "https://b"})
    # Without a verified identity the address keys it, as for a missing header.
    anonymous = _rule_key(["claim:sub"])
    assert anonymous == _rule_key(["claim:sub"], claims={"iss": "https://a"})
    assert anonymous == _rule_key(["claim:sub"], claims={"sub": ["a", "list"]})
    assert anonymous == _rule_key(["api_key"])
    assert anonymous != alice
    assert _rule_key(["api_key"], api_key_name="ci") != _rule_key(["api_key"], api_key_name="cd")
    assert _rule_key(["api_key"], api_key_name="ci") != anonymous
