"""guards/upstream_redirects.py: which Location, Content-Location, Refresh and Set-Cookie values
are pointed back at the client's origin, and which are left exactly as they are."""

from __future__ import annotations

import pytest

from guardproxy.guards.upstream_redirects import UpstreamRedirectGuard, parse_origin
from guardproxy.outcomes import Outcome
from tests.support.factories import make_context

INTERNAL = ["http://127.0.0.1:8000", "http://10.0.0.5:8000", "https://app.internal", "http://[fd00::5]:9000"]


def rewritten(
    value: bytes,
    *,
    name: bytes = b"location",
    host: bytes = b"api.example.com",
    scheme: str = "https",
    cookies: bool = False,
    outcome: Outcome = Outcome.OK,
) -> bytes:
    guard = UpstreamRedirectGuard(internal_origins=INTERNAL, rewrite_cookie_domains=cookies)
    headers = [(b"content-type", b"text/plain"), (name, value)]
    guard.on_response_start(make_context(host=host, scheme=scheme, outcome=outcome), headers)
    assert headers[0] == (b"content-type", b"text/plain")
    return headers[1][1]


@pytest.mark.parametrize(
    "value",
    [
        # userinfo tricks: the host is what follows the last @, so these name evil.example
        b"http://10.0.0.5:8000@evil.example/login",
        b"http://10.0.0.5:8000\\@evil.example/login",
        b"http://app.internal@evil.example/",
        # other origins, other ports, other schemes, look-alike hosts
        b"https://evil.example/login",
        b"http://10.0.0.5:8001/login",
        b"https://10.0.0.5:8000/login",
        b"http://10.0.0.50:8000/x",
        b"http://app.internal.evil.example/",
        b"http://evil.example/http://10.0.0.5:8000/",
        b"ftp://10.0.0.5:8000/file",
        b"javascript:alert(1)//10.0.0.5:8000/",
        # relative references stay relative
        b"/login",
        b"login?next=/",
        b"?page=2",
        b"#top",
        # garbage in the authority is not parsed into anything
        b"http://10.0.0.5:80 00/x",
        b"http://[fd00::5/x",
        b"http://10.0.0.5:99999999/x",
        b"http:///x",
        b"",
    ],
)
def test_anything_not_pointing_at_an_internal_origin_is_left_byte_for_byte(value: bytes) -> None:
    assert rewritten(value) == value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"http://10.0.0.5:8000/login?next=%2F#top", b"https://api.example.com/login?next=%2F#top"),
        (b"http://127.0.0.1:8000", b"https://api.example.com"),
        (b"http://127.0.0.1:8000?x=1", b"https://api.example.com?x=1"),
        (b"HTTP://10.0.0.5:8000/Login", b"https://api.example.com/Login"),  # scheme and host are case-free
        (b"https://APP.internal/a", b"https://api.example.com/a"),
        (b"https://app.internal:443/a", b"https://api.example.com/a"),  # the default port, spelled out
        (b"https://app.internal./a", b"https://api.example.com/a"),  # the root label
        (b"http://user:secret@10.0.0.5:8000/a", b"https://api.example.com/a"),  # userinfo dropped
        (b"//10.0.0.5:8000/a", b"https://api.example.com/a"),  # a network-path reference
        (b"//app.internal/a", b"https://api.example.com/a"),
        (b"http://[FD00::5]:9000/v6", b"https://api.example.com/v6"),
        # A path that starts with // stays a path under the public origin.
        (b"http://10.0.0.5:8000//evil.example/x", b"https://api.example.com//evil.example/x"),
    ],
)
def test_internal_origins_become_the_origin_the_client_used(value: bytes, expected: bytes) -> None:
    assert rewritten(value) == expected
    assert rewritten(value, name=b"content-location") == expected


def test_scheme_and_host_port_come_from_the_request() -> None:
    assert rewritten(b"http://10.0.0.5:8000/a", scheme="http", host=b"api.example.com:8080") == (
        b"http://api.example.com:8080/a"
    )
    assert rewritten(b"http://10.0.0.5:8000/a", host=b"[2001:db8::1]:8443") == b"https://[2001:db8::1]:8443/a"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"http://10.0.0.5:8000/login", b"/login"),
        (b"http://10.0.0.5:8000", b"/"),
        (b"http://10.0.0.5:8000?x", b"/?x"),
        # `//evil.example/x` as a relative reference would name another host: left alone.
        (b"http://10.0.0.5:8000//evil.example/x", b"http://10.0.0.5:8000//evil.example/x"),
        (b"http://10.0.0.5:8000/\\evil.example/x", b"http://10.0.0.5:8000/\\evil.example/x"),
    ],
)
@pytest.mark.parametrize("host", [b"", b"evil.example/path", b"a b", b"x\r\ny"])
def test_without_a_usable_host_a_path_absolute_reference_says_the_same(
    value: bytes, expected: bytes, host: bytes
) -> None:
    assert rewritten(value, host=host) == expected


@pytest.mark.parametrize(
    "outcome", [Outcome.HTTPS_REDIRECT, Outcome.CORS_PREFLIGHT, Outcome.UPSTREAM_ERROR, Outcome.RATE_LIMITED]
)
def test_guardproxys_own_answers_are_never_touched(outcome: Outcome) -> None:
    assert rewritten(b"https://app.internal/x", outcome=outcome) == b"https://app.internal/x"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"0; url=http://10.0.0.5:8000/next", b"0; url=https://api.example.com/next"),
        (b"5;URL='http://10.0.0.5:8000/next'", b"5;URL='https://api.example.com/next'"),
        (b'3, "//app.internal/n"', b'3, "https://api.example.com/n"'),
        (b"0;http://10.0.0.5:8000/", b"0;https://api.example.com/"),
        (b"0.5 ; url = http://10.0.0.5:8000/x  ", b"0.5 ; url = https://api.example.com/x  "),
    ],
)
def test_refresh_urls_are_rewritten_in_place(value: bytes, expected: bytes) -> None:
    assert rewritten(value, name=b"refresh") == expected


@pytest.mark.parametrize(
    "value",
    [b"5", b"0; url=/next", b"0; url=https://evil.example/", b"soon; url=http://10.0.0.5:8000/", b"0; url='"],
)
def test_other_refresh_values_are_left_alone(value: bytes) -> None:
    assert rewritten(value, name=b"refresh") == value


@pytest.mark.parametrize(
    ("value", "host", "expected"),
    [
        (b"sid=1; Domain=app.internal; Path=/", b"api.example.com", b"sid=1; Domain=api.example.com; Path=/"),
        (b"sid=1; domain=.APP.internal; Secure", b"api.example.com:8443", b"sid=1; Domain=api.example.com; Secure"),
        (b"sid=1; Path=/; Domain=10.0.0.5", b"api.example.com", b"sid=1; Path=/; Domain=api.example.com"),
        (b"sid=1; Domain=internal; HttpOnly", b"api.example.com", b"sid=1; Domain=api.example.com; HttpOnly"),
        # The client used an IP address, or no usable host: a host-only cookie.
        (b"sid=1; Domain=app.internal; Path=/", b"203.0.113.7:8080", b"sid=1; Path=/"),
        (b"sid=1; Domain=app.internal; Path=/", b"[2001:db8::1]", b"sid=1; Path=/"),
        (b"sid=1; Domain=app.internal", b"", b"sid=1"),
    ],
)
def test_cookie_domains_naming_internal_hosts_become_the_clients(value: bytes, host: bytes, expected: bytes) -> None:
    assert rewritten(value, name=b"set-cookie", host=host, cookies=True) == expected


@pytest.mark.parametrize(
    "value",
    [
        b"sid=1; Domain=example.com; Path=/",
        b"sid=1; Domain=evil-app.internal",
        b"sid=1; Domain=0.0.5",  # a "parent" of an IP address is not a domain
        b"sid=1; Path=/",
        b"sid=1; Domain=",
        b"Domain=app.internal",  # the cookie's name and value, not an attribute
    ],
)
def test_other_cookies_are_left_alone(value: bytes) -> None:
    assert rewritten(value, name=b"set-cookie", cookies=True) == value


def test_cookie_domains_are_left_alone_unless_asked() -> None:
    value = b"sid=1; Domain=app.internal"
    assert rewritten(value, name=b"set-cookie") == value


def test_configured_origins_are_normalised() -> None:
    assert parse_origin("HTTP://App.Internal.") == (b"http", b"app.internal", 80)
    assert parse_origin("https://[FD00::5]") == (b"https", b"[fd00::5]", 443)
