"""Identity and URL fields from untrusted peers (proxy/forwarder.py, guards/client_ip.py): what a
client claims is removed, what guardproxy vouches for is set; a trusted proxy's chain is kept."""

from __future__ import annotations

import pytest

from tests.support.factories import call, make_chain, make_scope, make_settings

SPOOFED = [
    (b"x-forwarded-for", b"6.6.6.6"),
    (b"x-forwarded-proto", b"https"),
    (b"x-forwarded-host", b"evil.example"),
    (b"x-forwarded-port", b"443"),
    (b"x-forwarded-prefix", b"/admin"),
    (b"x-forwarded-server", b"internal"),
    (b"x-forwarded-ssl", b"on"),
    (b"x-forwarded-user", b"root"),
    (b"forwarded", b"for=6.6.6.6;proto=https"),
    (b"x-real-ip", b"6.6.6.6"),
    (b"true-client-ip", b"6.6.6.6"),
    (b"x-client-ip", b"6.6.6.6"),
    (b"cf-connecting-ip", b"6.6.6.6"),
    (b"fastly-client-ip", b"6.6.6.6"),
    (b"x-cluster-client-ip", b"6.6.6.6"),
    (b"x-original-url", b"/admin/delete"),
    (b"x-rewrite-url", b"/admin/delete"),
    (b"x-original-host", b"evil.example"),
    (b"x-http-method-override", b"DELETE"),
    (b"x-http-method", b"DELETE"),
    (b"x-method-override", b"DELETE"),
    (b"remote-user", b"admin"),
]
CLIENT = ("203.0.113.9", 40000)


def scope_with(headers: list[tuple[bytes, bytes]], client: tuple[str, int] = CLIENT) -> dict[str, object]:
    return make_scope(
        "GET", "/x", headers=[(b"host", b"api.example.com"), *headers, (b"accept", b"*/*")], client=client
    )


async def test_every_claim_from_an_untrusted_peer_is_removed_and_ours_are_set() -> None:
    chain, upstream = make_chain()
    assert (await call(chain, scope_with(SPOOFED))).status == 200
    (sent,) = upstream.sent
    received = dict(sent.headers)
    assert len(sent.headers) == len(received), "every field once"
    for name, value in SPOOFED:
        assert received.get(name) != value, name
    assert received[b"x-forwarded-for"] == b"203.0.113.9"
    assert received[b"x-real-ip"] == b"203.0.113.9"
    assert received[b"x-forwarded-proto"] == b"http"
    assert received[b"x-forwarded-host"] == b"api.example.com"
    assert received[b"x-forwarded-port"] == b"8080"  # the listener's port (make_scope's server)
    assert received[b"accept"] == b"*/*"
    vouched = {b"x-forwarded-for", b"x-real-ip", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port"}
    assert {name for name in received if name in dict(SPOOFED)} == vouched


async def test_names_are_matched_whatever_a_connection_field_names() -> None:
    chain, upstream = make_chain()
    headers = [
        (b"connection", b"x-hop"),
        (b"x-hop", b"1"),
        (b"x-forwarded-prefix", b"/admin"),
        (b"x-real-ip", b"6.6.6.6"),
    ]
    await call(chain, scope_with(headers))
    received = dict(upstream.sent[0].headers)
    assert b"x-hop" not in received
    assert b"x-forwarded-prefix" not in received
    assert received[b"x-real-ip"] == b"203.0.113.9"


async def test_the_same_fields_from_a_trusted_proxy_are_kept_and_the_client_resolved() -> None:
    chain, upstream = make_chain(make_settings(trusted_proxies={"cidrs": ["10.0.0.0/8"]}))
    assert (await call(chain, scope_with(SPOOFED, client=("10.1.2.3", 5000)))).status == 200
    received = dict(upstream.sent[0].headers)
    assert received[b"x-forwarded-for"] == b"6.6.6.6, 10.1.2.3"
    assert received[b"x-real-ip"] == b"6.6.6.6"  # the client the chain resolves to
    assert received[b"x-forwarded-proto"] == b"https"
    assert received[b"x-forwarded-host"] == b"evil.example"
    assert received[b"x-forwarded-port"] == b"443"  # the proxy's, not guardproxy's listener port
    assert received[b"x-forwarded-prefix"] == b"/admin"
    assert received[b"true-client-ip"] == b"6.6.6.6"
    assert received[b"x-original-url"] == b"/admin/delete"
    assert b"forwarded" not in received  # replaced by X-Forwarded-For, as before


async def test_the_strip_list_is_configurable() -> None:
    settings = make_settings(trusted_proxies={"untrusted_strip": ["x-legacy-user", "x-tenant-*"]})
    chain, upstream = make_chain(settings)
    headers = [(b"x-legacy-user", b"root"), (b"x-tenant-id", b"7"), (b"true-client-ip", b"6.6.6.6")]
    await call(chain, scope_with(headers))
    received = dict(upstream.sent[0].headers)
    assert b"x-legacy-user" not in received
    assert b"x-tenant-id" not in received
    assert received[b"true-client-ip"] == b"6.6.6.6"  # not listed any more: passed on
    assert received[b"x-real-ip"] == b"203.0.113.9"  # always guardproxy's


@pytest.mark.parametrize("name", [b"x-forwarded-for", b"x-forwarded-port", b"x-real-ip"])
async def test_our_fields_are_not_doubled_when_the_family_is_not_stripped(name: bytes) -> None:
    chain, upstream = make_chain(make_settings(trusted_proxies={"untrusted_strip": ["x-only-this"]}))
    await call(chain, scope_with([(name, b"6.6.6.6")]))
    assert [value for key, value in upstream.sent[0].headers if key == name] != [b"6.6.6.6"]
    assert len([value for key, value in upstream.sent[0].headers if key == name]) == 1


async def test_prefixes_with_different_first_letters_strip_only_their_families() -> None:
    # The forwarder looks at a field's first byte before matching prefixes: a field that shares
    # it without sharing the prefix is passed on.
    settings = make_settings(trusted_proxies={"untrusted_strip": ["x-tenant-*", "acme-*"]})
    chain, upstream = make_chain(settings)
    headers = [(b"acme-user", b"root"), (b"acme", b"1"), (b"x-tenant-id", b"7"), (b"x-trace", b"t")]
    await call(chain, scope_with(headers))
    received = dict(upstream.sent[0].headers)
    assert b"acme-user" not in received
    assert b"x-tenant-id" not in received
    assert received[b"acme"] == b"1"
    assert received[b"x-trace"] == b"t"
    assert received[b"accept"] == b"*/*"


def test_a_bare_star_is_refused_at_startup() -> None:
    # It would strip every field a client sends, Host and Authorization included.
    with pytest.raises(ValueError, match="untrusted_strip"):
        make_settings(trusted_proxies={"untrusted_strip": ["*"]})


@pytest.mark.parametrize("connection", [b"keep-alive", b"Keep-Alive", b"close"])
async def test_a_plain_connection_field_removes_nothing_else(connection: bytes) -> None:
    chain, upstream = make_chain()
    await call(chain, scope_with([(b"connection", connection), (b"keep-alive", b"timeout=5"), (b"x-app", b"1")]))
    received = dict(upstream.sent[0].headers)
    assert b"connection" not in received
    assert b"keep-alive" not in received  # hop-by-hop whatever Connection says
    assert received[b"x-app"] == b"1"


@pytest.mark.parametrize("connection", [b"keep-alive, x-app", b"close,X-App"])
async def test_a_connection_field_naming_more_than_keep_alive_removes_what_it_names(connection: bytes) -> None:
    chain, upstream = make_chain()
    await call(chain, scope_with([(b"connection", connection), (b"x-app", b"1"), (b"x-kept", b"2")]))
    received = dict(upstream.sent[0].headers)
    assert b"x-app" not in received
    assert received[b"x-kept"] == b"2"
