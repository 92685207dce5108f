"""Who the client is: the address, scheme and host, believed from a proxy only if it is trusted
(checklist item 18).

X-Forwarded-For is walked from the right: each hop that is a trusted proxy is skipped, and the
first one that is not is the client. Trusting the leftmost entry instead would let any client
name its own address, and with it its own rate-limit budget. From a peer that is not trusted,
every forwarding header is ignored: the peer is the client, and what it claims is not passed on
(the forwarder removes every field of trusted_proxies.untrusted_strip from such a request).
RFC 7239 `Forwarded` is read the same way when X-Forwarded-For is absent.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Final

from guardproxy.asgi import Headers, Scope
from guardproxy.context import RequestContext
from guardproxy.guards.chain import Guard

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# One RFC 7239 pair: token=token or token="quoted string".
_FORWARDED_PAIR: Final = re.compile(r'\s*([A-Za-z]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)\s*')


def parse_address(value: str) -> Address | None:
    value = value.strip()
    if value.startswith("[") and "]" in value:  # [2001:db8::1]:4711 in Forwarded
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # 192.0.2.1:4711
        value = value.split(":", 1)[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def forwarded_elements(value: str) -> list[dict[str, str]]:
    """The elements of a Forwarded header, each a dict of lower-cased parameter names."""
    elements = []
    for element in value.split(","):
        pairs = {}
        for pair in element.split(";"):
            match = _FORWARDED_PAIR.fullmatch(pair)
            if match is not None:
                name, token = match.groups()
                pairs[name.lower()] = token[1:-1].replace('\\"', '"') if token.startswith('"') else token
        elements.append(pairs)
    return elements


class ClientAddressGuard(Guard):
    def __init__(self, *, trusted: Iterable[str]) -> None:
        self.trusted: tuple[Network, ...] = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in trusted)

    def is_trusted(self, address: Address | None) -> bool:
        return address is not None and any(address in network for network in self.trusted)

    def on_request(self, scope: Scope, context: RequestContext) -> None:
        host = b""
        forwarded_for: list[bytes] = []
        forwarded_proto = forwarded_host = forwarded = b""
        headers: Headers = scope["headers"]
        for name, value in headers:
            if name == b"host":
                host = value
            elif name == b"x-forwarded-for":
                forwarded_for.append(value)
            elif name == b"x-forwarded-proto":
                forwarded_proto = value  # the last one: what the proxy next to us says
            elif name == b"x-forwarded-host":
                forwarded_host = value
            elif name == b"forwarded":
                forwarded = value if not forwarded else forwarded + b"," + value
        context.host = host.lower()
        peer = context.client_host.encode("ascii")
        if not self.trusted or not self.is_trusted(parse_address(context.client_host)):
            context.forwarded_for = peer
            return
        context.peer_trusted = True
        elements = forwarded_elements(forwarded.decode("latin-1")) if forwarded else []
        last = elements[-1] if elements else {}
        if forwarded_for:
            chain = [hop.strip() for hop in b",".join(forwarded_for).decode("latin-1").split(",")]
        else:
            chain = [element.get("for", "") for element in elements]
        # The last value of each: what the proxy next to guardproxy asserts.
        proto = forwarded_proto.decode("latin-1").split(",")[-1].strip().lower() or last.get("proto", "").lower()
        outside_host = forwarded_host.decode("latin-1").split(",")[-1].strip().lower() or last.get("host", "").lower()
        context.client_host = self._client_from(chain, context.client_host)
        # The chain as received, plus the trusted peer: what the next hop needs to walk it too.
        context.forwarded_for = b", ".join([*(hop.encode("latin-1") for hop in chain if hop), peer])
        if proto in ("http", "https"):
            context.scheme = proto
            context.scheme_from_proxy = True
        if outside_host:
            context.host = outside_host.encode("latin-1")

    def _client_from(self, chain: list[str], peer: str) -> str:
        client = peer
        for hop in reversed(chain):
            address = parse_address(hop)
            if address is None:
                break  # garbage in the chain: trust nothing beyond it
            client = str(address)
            if not self.is_trusted(address):
                break
        return client
