"""Upstream redirects and cookies pointed back at the client's origin (Apache's ProxyPassReverse,
nginx's `proxy_redirect default`).

An app behind a proxy often believes it lives at the address it binds or an internal name, and
says so: `Location: http://10.0.0.5:8000/login`. Passed on, that leaks the internal address and
sends browsers where they cannot go. So `Location`, `Content-Location` and `Refresh` values that
point at the upstream's own origin (`upstream.url`) or at one of `upstream.internal_origins` are
rewritten to the origin the client used: the scheme ClientAddressGuard verified (the listener's,
or a trusted proxy's) and the Host it recorded (vetted by HostGuard when allowed hosts are set).
Relative references and other origins stay exactly as they are. Optionally (off by default) a
`Set-Cookie` whose `Domain` names an internal host is given the client's host instead.

The traps avoided:
- the authority is the whole of what lies between `//` and the first `/`, `?` or `#`, and its
  host is what follows the last `@` (RFC 3986 §3.2): `http://10.0.0.5:8000@evil.example/` names
  evil.example and is left alone, never turned into a redirect under guardproxy's name;
- userinfo is dropped when a URL is rewritten (RFC 9110 §4.2.4: senders must not generate it);
- without a usable public host the value becomes a path-absolute reference, unless its path
  starts with `//` or `/\\`, which would turn it into a reference to another host;
- only the upstream's responses are touched: guardproxy's own answers (problems, HTTPS
  redirects, preflights) end with another outcome and pass as they are.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit

from guardproxy.asgi import Headers
from guardproxy.context import RequestContext
from guardproxy.guards.chain import Guard
from guardproxy.guards.hosts import split_port
from guardproxy.outcomes import Outcome

_OK: Final = Outcome.OK
_DEFAULT_PORTS: Final = {b"http": 80, b"https": 443}
_REFERENCE_FIELDS: Final = frozenset({b"location", b"content-location"})
_REFRESH: Final = b"refresh"
_SET_COOKIE: Final = b"set-cookie"
# scheme "://" authority, or "//" authority (a network-path reference); the rest follows.
_ABSOLUTE: Final = re.compile(rb"(?:([A-Za-z][A-Za-z0-9+.-]*):)?//([^/?#]*)")
_HOST: Final = re.compile(rb"[a-z0-9._~%!$&'()*+,;=-]+|\[[0-9a-f:.]{2,45}\]")
# What a Host may be for guardproxy to build an origin from it: a name or an IP literal, a port.
_PUBLIC_AUTHORITY: Final = re.compile(rb"(?:[a-z0-9.-]{1,253}|\[[0-9a-f:.]{2,45}\])(?::[0-9]{1,5})?")
# Refresh: a delay, then optionally `;` or `,`, `url=` and the URL, perhaps quoted (HTML's
# "shared declarative refresh steps", which browsers follow for the header too).
_REFRESH_PREFIX: Final = re.compile(rb"\s*[0-9]+(?:\.[0-9]*)?\s*[;,]?\s*(?:[Uu][Rr][Ll]\s*=\s*)?")

Origin = tuple[bytes, bytes, int]


def parse_origin(url: str) -> Origin:
    """(scheme, host, port) of a configured origin, lower-case, the port made explicit."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower().encode("ascii")
    hostname = parts.hostname or ""
    try:
        host = hostname.encode("idna").lower().rstrip(b".")
    except UnicodeError:
        host = hostname.encode("utf-8").rstrip(b".")
    if b":" in host:
        host = b"[" + host + b"]"
    return scheme, host, parts.port or _DEFAULT_PORTS[scheme]


def _authority_host_port(authority: bytes) -> tuple[bytes, int | None] | None:
    """The host (lower-case) and port of an authority, or None if it is not a clean one."""
    hostport = authority.rpartition(b"@")[2].lower()
    if hostport.startswith(b"["):
        end = hostport.find(b"]")
        host, port_part = hostport[: end + 1], hostport[end + 1 :]
        if end < 0 or (port_part and not port_part.startswith(b":")):
            return None
        port_text = port_part[1:]
    else:
        host, _, port_text = hostport.partition(b":")
    if not _HOST.fullmatch(host) or (port_text and not (port_text.isdigit() and len(port_text) <= 5)):
        return None
    return host.rstrip(b"."), int(port_text) if port_text else None


class UpstreamRedirectGuard(Guard):
    def __init__(self, *, internal_origins: Iterable[str], rewrite_cookie_domains: bool = False) -> None:
        origins = [parse_origin(origin) for origin in internal_origins]
        self._origins = frozenset(origins)
        # host:port pairs, for network-path references (`//10.0.0.5:8000/x`), which have no scheme.
        self._host_ports = frozenset((host, port) for _, host, port in origins)
        self._cookie_hosts = frozenset(host for _, host, _ in origins)
        self._fields = _REFERENCE_FIELDS | {_REFRESH} | ({_SET_COOKIE} if rewrite_cookie_domains else frozenset())

    def on_response_start(self, context: RequestContext, headers: Headers) -> None:
        if context.outcome is not _OK:
            return  # guardproxy's own answer: its Locations are its own
        fields = self._fields
        for field in headers:
            if field[0] in fields:
                break
        else:
            return  # most responses: one set lookup per field
        for index, (name, value) in enumerate(headers):
            if name not in fields:
                continue
            if name == _SET_COOKIE:
                rewritten = self.rewrite_cookie(value, context.host)
            elif name == _REFRESH:
                rewritten = self.rewrite_refresh(value, context)
            else:
                rewritten = self.rewrite_reference(value, context)
            if rewritten is not None:
                headers[index] = (name, rewritten)

    def is_internal(self, scheme: bytes | None, authority: bytes) -> bool:
        host_port = _authority_host_port(authority)
        if host_port is None:
            return False
        host, port = host_port
        if scheme is None:
            if port is not None:
                return (host, port) in self._host_ports
            return (host, 80) in self._host_ports or (host, 443) in self._host_ports
        default = _DEFAULT_PORTS.get(scheme)
        return default is not None and (scheme, host, port or default) in self._origins

    def rewrite_reference(self, value: bytes, context: RequestContext) -> bytes | None:
        """`value` pointed at the client's origin, or None when it points anywhere else."""
        match = _ABSOLUTE.match(value)
        if match is None:
            return None  # a relative reference, or a URI of another kind (mailto:, urn:)
        scheme = match.group(1).lower() if match.group(1) is not None else None
        if not self.is_internal(scheme, match.group(2)):
            return None
        rest = value[match.end() :]
        host = context.host
        if host and _PUBLIC_AUTHORITY.fullmatch(host):
            return context.scheme.encode("ascii") + b"://" + host + rest
        # No host to build an origin from (an HTTP/1.0 request without Host): a path-absolute
        # reference says the same, as long as it cannot be read as `//other-host`.
        if not rest or rest[:1] in (b"?", b"#"):
            return b"/" + rest
        if rest[1:2] in (b"/", b"\\"):
            return None
        return rest

    def rewrite_refresh(self, value: bytes, context: RequestContext) -> bytes | None:
        prefix = _REFRESH_PREFIX.match(value)
        if prefix is None or prefix.end() == len(value):
            return None
        start = prefix.end()
        quote = value[start : start + 1]
        if quote in (b"'", b'"'):
            start += 1
            end = value.find(quote, start)
            end = len(value) if end < 0 else end
        else:
            end = len(value.rstrip())
        rewritten = self.rewrite_reference(value[start:end], context)
        return None if rewritten is None else value[:start] + rewritten + value[end:]

    def rewrite_cookie(self, value: bytes, public_host: bytes) -> bytes | None:
        """A Set-Cookie whose Domain names an internal host (or a parent domain of one) gets
        the client's host instead; with an IP address for a host, Domain goes (a host-only
        cookie is what that client can use: RFC 6265 §5.3 step 6)."""
        name = split_port(public_host)
        parts = value.split(b";")
        changed = False
        for index in range(1, len(parts)):
            attribute, sep, domain = parts[index].partition(b"=")
            if not sep or attribute.strip().lower() != b"domain":
                continue
            if not self._internal_cookie_domain(domain.strip().lower().lstrip(b".").rstrip(b".")):
                continue
            changed = True
            parts[index] = b" Domain=" + name if _is_dns_name(name) else b""
        if not changed:
            return None
        return b";".join(part for index, part in enumerate(parts) if index == 0 or part)

    def _internal_cookie_domain(self, domain: bytes) -> bool:
        if not domain:
            return False
        hosts = self._cookie_hosts
        return domain in hosts or any(host.endswith(b"." + domain) and _is_dns_name(host) for host in hosts)


def _is_dns_name(host: bytes) -> bool:
    if not host or host.startswith(b"[") or not _PUBLIC_AUTHORITY.fullmatch(host):
        return False
    try:
        ipaddress.ip_address(host.decode("ascii"))
    except ValueError:
        return True
    return False
