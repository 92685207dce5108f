"""The request target and its Host (RFC 9112 §3.2), checked before any guard sees a request.
No I/O: the server protocol calls `vet_target` only when the cheap test in its hot path
(origin-form, one Host, a Host value seen valid before) does not already pass.

Decisions, each for a reason:
- A missing Host on HTTP/1.1, more than one Host field line, or a Host that is not an RFC 3986
  `uri-host [":" port]` is a 400 (§3.2: "A server MUST respond with a 400"). An empty Host is
  invalid too, since an http(s) URI never has an empty host (RFC 9110 §4.2.1); so is an empty or
  out-of-range port, an IPv6 literal that is no IPv6 address, an IPvFuture or a zone ID (no HTTP
  implementation uses them). Optional whitespace around the value is not part of it (RFC 9110
  §5.5): it is stripped rather than refused.
- An absolute-form target (`GET http://other.example/x HTTP/1.1`) is accepted and its authority
  *replaces* the Host field, as §3.2.2 requires of a server ("MUST ignore the received Host
  header field ... and instead use the host information of the request-target"; §3.2.2 also
  says a server "MUST accept the absolute-form"). Refusing it would break that MUST; keeping the
  Host field would let the upstream and guardproxy's host checks see different hosts (host
  confusion). So everything downstream (allowed hosts, X-Forwarded-Host, the upstream's Host)
  sees the target's authority, and the upstream gets the origin-form path. The target's scheme
  is not believed (the listener or a trusted proxy says which scheme was used); only http and
  https targets are accepted, and userinfo is refused (RFC 9110 §4.2.4).
- `OPTIONS *` (asterisk-form, §3.2.4) is let through with the path `*` and answered by the
  methods guard itself, never forwarded: it asks about guardproxy's server as a whole, and an
  upstream app would route a path that does not begin with `/` unpredictably. `*` with any
  other method, or anything else that is not a path, is a 400.
- CONNECT's authority-form target (§3.2.3) is let through with an empty path, only so the
  methods guard can answer it with 405 and `Allow`: guardproxy opens no tunnels.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Final

from guardproxy import problems
from guardproxy.answer import RefusedError
from guardproxy.asgi import Headers
from guardproxy.outcomes import Outcome

# RFC 3986 §3.2.2: reg-name = *( unreserved / pct-encoded / sub-delims ); IPv4 addresses are
# reg-names too as far as syntax goes. A `%` is checked for two hex digits separately.
_HOST: Final = re.compile(rb"(?:\[([0-9A-Fa-f:.]{2,45})\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::([0-9]{1,5}))?")
_BAD_PERCENT: Final = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_OWS: Final = b" \t"
# Host values already found valid: a service sees a handful, so the usual request costs one set
# lookup. Bounded, so a client sending endless distinct hosts only makes them cost a regex.
VALID_HOSTS: Final[set[bytes]] = set()
VALID_HOSTS_MAX: Final = 1024
_HTTP_SCHEMES: Final = frozenset({b"http", b"https"})


def valid_host(value: bytes) -> bool:
    """Whether a Host field value is `uri-host [":" port]` (RFC 9112 §3.2, RFC 3986 §3.2.2)."""
    if value in VALID_HOSTS:
        return True
    match = _HOST.fullmatch(value)
    if match is None:
        return False
    literal, port = match.groups()
    if port is not None and int(port) > 65535:
        return False
    if literal is not None:
        try:
            ipaddress.IPv6Address(literal.decode("ascii"))
        except ValueError:
            return False
    elif b"%" in value and _BAD_PERCENT.search(value):
        return False
    if len(VALID_HOSTS) < VALID_HOSTS_MAX:
        VALID_HOSTS.add(value)
    return True


def _bad_host(detail: str) -> RefusedError:
    return RefusedError(problems.BAD_REQUEST, detail, Outcome.BAD_HOST)


def _bad_target(detail: str) -> RefusedError:
    return RefusedError(problems.BAD_REQUEST, detail, Outcome.MALFORMED)


def _set_host(headers: Headers, value: bytes) -> None:
    for index, (name, _) in enumerate(headers):
        if name == b"host":
            headers[index] = (b"host", value)
            return
    headers.append((b"host", value))


def check_host(headers: Headers, http_version: str, hosts: int, host: bytes | None) -> None:
    """Raise the RefusedError for a missing, repeated or invalid Host; a valid value with
    surrounding whitespace is replaced by the value without it."""
    if hosts > 1:
        raise _bad_host("The request has more than one Host field.")
    if host is None:
        if http_version == "1.1":
            raise _bad_host("An HTTP/1.1 request must have a Host field.")
        return  # HTTP/1.0 needs none (RFC 1945)
    if valid_host(host):
        return
    stripped = host.strip(_OWS)
    if not stripped:
        raise _bad_host("The request's Host field is empty.")
    if stripped == host or not valid_host(stripped):
        raise _bad_host("The request's Host field is not a valid host[:port].")
    _set_host(headers, stripped)


def vet_target(
    method: bytes, target: bytes, url: Any, *, headers: Headers, http_version: str, hosts: int, host: bytes | None
) -> tuple[bytes, bytes | None]:
    """The path and query a request goes on with, once its Host and target pass the rules in
    the module's docstring; raises the RefusedError that answers it otherwise. `url` is what
    httptools.parse_url made of `target`, None when it could not parse it."""
    check_host(headers, http_version, hosts, host)
    if url is None:
        if method == b"CONNECT":
            return b"", None
        raise _bad_target("The request target is not a valid URL.")
    if url.schema is not None:
        if url.schema.lower() not in _HTTP_SCHEMES:
            raise _bad_target("Only http and https absolute-form request targets are accepted.")
        if url.userinfo is not None:
            raise _bad_target("The request target must not contain userinfo.")
        name: bytes = url.host
        authority = b"[" + name + b"]" if b":" in name else name
        if url.port is not None:
            authority += b":%d" % url.port
        if not valid_host(authority):
            raise _bad_host("The request target's authority is not a valid host[:port].")
        _set_host(headers, authority)
        return url.path or b"/", url.query
    path: bytes = url.path
    if path[:1] == b"/":
        return path, url.query
    if target == b"*" and method == b"OPTIONS":
        return b"*", None
    raise _bad_target("The request target must be a path beginning with '/' (or '*' for OPTIONS).")
