"""Per-route IP allow and deny lists (CIDRs), on the client address ClientAddressGuard resolved.

A deny entry wins over an allow entry; with an allow list, an address on no list is refused.
Refusals are 403 problems. Verdicts are remembered per route and address (bounded), because the
same few clients ask again and again and parsing an address costs more than a lookup.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from guardproxy import problems
from guardproxy.answer import Answer
from guardproxy.asgi import Scope
from guardproxy.context import RequestContext
from guardproxy.guards.chain import Guard
from guardproxy.outcomes import Outcome

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_VERDICTS_PER_ROUTE: Final = 4096


@dataclass(slots=True)
class AddressPolicy:
    allow: tuple[Network, ...]
    deny: tuple[Network, ...]
    _verdicts: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def of(cls, allow: Sequence[str], deny: Sequence[str]) -> AddressPolicy:
        return cls(
            allow=tuple(ipaddress.ip_network(cidr, strict=False) for cidr in allow),
            deny=tuple(ipaddress.ip_network(cidr, strict=False) for cidr in deny),
        )

    def admits(self, host: str) -> bool:
        verdict = self._verdicts.get(host)
        if verdict is None:
            if len(self._verdicts) >= _VERDICTS_PER_ROUTE:
                self._verdicts.clear()
            verdict = self._verdicts[host] = self._decide(host)
        return verdict

    def _decide(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False  # an address we cannot read is on no allow list, and may be on a deny one
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack listener reports IPv4 clients this way
        if any(address in network for network in self.deny):
            return False
        return not self.allow or any(address in network for network in self.allow)


class IpListGuard(Guard):
    def __init__(self, policies: Mapping[str, AddressPolicy]) -> None:
        self._policies = dict(policies)

    def on_request(self, scope: Scope, context: RequestContext) -> Answer | None:
        policy = self._policies.get(context.route.name)
        if policy is None or policy.admits(context.client_host):
            return None
        context.outcome = Outcome.IP_REFUSED
        return Answer.problem(scope, problems.ADDRESS_REFUSED, "Requests from this address are not allowed here.")
