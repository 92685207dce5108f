"""The Idempotency-Key field's syntax (RFC 8941 String, or the bare form many clients send), whose
key it is, and what the fingerprint covers."""

from __future__ import annotations

from typing import Any

import pytest

from guardproxy.context import RequestContext
from guardproxy.idempotency.keys import MalformedKeyError, fingerprint_of, identity, key_fields, parse_key, store_key
from guardproxy.routes import RoutePolicy

ROUTE = RoutePolicy(name="pay", connect_timeout=1, read_timeout=1, total_timeout=None, max_body_bytes=1000)


def scope(headers: list[tuple[bytes, bytes]] = (), **extra: Any) -> dict[str, Any]:  # type: ignore[assignment]
    return {
        "method": "POST",
        "path": "/pay",
        "raw_path": b"/pay",
        "query_string": b"",
        "headers": list(headers),
    } | extra


@pytest.mark.parametrize(
    ("field", "key"),
    [
        (b'"8e03978e-40d5-43e8-bc93-6894a57f9324"', b"8e03978e-40d5-43e8-bc93-6894a57f9324"),
        (b"8e03978e-40d5-43e8-bc93-6894a57f9324", b"8e03978e-40d5-43e8-bc93-6894a57f9324"),
        (b'  "with space"\t', b"with space"),
        (b'"say \\"hi\\" \\\\ bye"', b'say "hi" \\ bye'),
        (b"order_42:retry~1+x/y=z", b"order_42:retry~1+x/y=z"),
    ],
)
def test_quoted_and_bare_keys_are_read(field: bytes, key: bytes) -> None:
    assert parse_key([field], 255) == key


def test_both_spellings_are_one_key() -> None:
    assert parse_key([b'"abc"'], 255) == parse_key([b"abc"], 255)


@pytest.mark.parametrize(
    "fields",
    [
        [],
        [b"a", b"b"],  # two fields: which one?
        [b'""'],
        [b""],
        [b"a, b"],  # a list
        [b'"a";p=1'],  # parameters
        [b"with space"],
        [b'"unterminated'],
        [b'"bad \\x escape"'],
        [b'"tab\tinside"'],
        [b"nul\x00"],
        ["ünï".encode()],
        [b"a" * 256],
        [b'"' + b"a" * 256 + b'"'],
    ],
)
def test_malformed_keys_are_refused(fields: list[bytes]) -> None:
    with pytest.raises(MalformedKeyError):
        parse_key(fields, 255)


def test_the_length_limit_counts_the_key_not_its_quotes() -> None:
    assert parse_key([b'"' + b"a" * 255 + b'"'], 255) == b"a" * 255
    assert parse_key([b"a" * 8], 8) == b"a" * 8


def test_key_fields_are_found_by_lower_case_name() -> None:
    assert key_fields(scope([(b"idempotency-key", b"k"), (b"x", b"y")])) == [b"k"]


def context(host: str = "203.0.113.7") -> RequestContext:
    return RequestContext(route=ROUTE, client_host=host)


def test_one_client_cannot_name_another_clients_entry() -> None:
    keys = {
        store_key("p:", identity(["client_ip"], scope(), context(host)), "POST", "/pay", b"k")
        for host in ("203.0.113.7", "203.0.113.8")
    }
    assert len(keys) == 2


def test_ipv6_clients_are_one_identity_per_slash_64_and_mapped_ipv4_is_ipv4() -> None:
    ip = ["client_ip"]
    assert identity(ip, scope(), context("2001:db8::1")) == identity(ip, scope(), context("2001:db8::ffff"))
    assert identity(ip, scope(), context("2001:db8::1")) != identity(ip, scope(), context("2001:db8:0:1::1"))
    assert identity(ip, scope(), context("::ffff:203.0.113.7")) == identity(ip, scope(), context("203.0.113.7"))


def test_a_header_identity_falls_back_to_the_address_when_missing() -> None:
    parts = [b"authorization"]
    with_auth = identity(parts, scope([(b"authorization", b"Bearer a")]), context())
    other_auth = identity(parts, scope([(b"authorization", b"Bearer b")]), context())
    anonymous = identity(parts, scope(), context())
    assert len({with_auth, other_auth, anonymous}) == 3
    assert anonymous == identity(["client_ip"], scope(), context())
    # The same token from elsewhere is the same identity: the key belongs to the credential.
    assert with_auth == identity(parts, scope([(b"authorization", b"Bearer a")]), context("198.51.100.1"))


def test_the_store_key_separates_method_path_and_key_and_hides_them() -> None:
    who = b"ip=203.0.113.7"
    base = store_key("gp:idem:", who, "POST", "/pay", b"k")
    assert base.startswith("gp:idem:{")
    assert base.endswith("}")
    assert "203.0.113.7" not in base
    assert "/pay" not in base
    others = [
        store_key("gp:idem:", who, "PATCH", "/pay", b"k"),
        store_key("gp:idem:", who, "POST", "/pay/2", b"k"),
        store_key("gp:idem:", who, "POST", "/pay", b"k2"),
        # The separator cannot be forged by moving bytes between parts.
        store_key("gp:idem:", who, "POST", "/pay\0k", b""),
    ]
    assert base not in others
    assert len(set(others)) == len(others)


def test_the_fingerprint_covers_method_raw_target_query_and_body() -> None:
    def digest(body: bytes = b"{}", **extra: Any) -> bytes:
        hasher = fingerprint_of(scope(**extra))
        hasher.update(body)
        return hasher.digest()

    base = digest()
    assert len(base) == 16
    assert digest() == base
    assert digest(b'{"amount":2}') != base
    assert digest(query_string=b"x=1") != base
    assert digest(raw_path=b"/p%61y") != base
    assert digest(method="PATCH") != base
