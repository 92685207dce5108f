"""The shape every probe has: gather evidence (I/O, bounded), then judge it (pure)."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from guardproxy.audit.checks import Finding
from guardproxy.audit.evidence import Exchange
from guardproxy.audit.session import Session, Target

# RFC 6761 §6.4: `.invalid` names never resolve, so a foreign origin or host built on it can
# never belong to anyone's real site.
FOREIGN_HOST = "audit-probe.invalid"
FOREIGN_ORIGIN = f"https://{FOREIGN_HOST}"
# RFC 5737 TEST-NET-3: documentation addresses, never a real client.
SPOOFED_ADDRESS = "203.0.113.77"


def marker() -> str:
    """A value no server can have made up: seeing it in a response means it was reflected."""
    return "audit-" + secrets.token_hex(8)


@dataclass
class Evidence:
    """What one probe recorded: exchanges by role, plus figures it measured (seconds, counts)."""

    target: Target
    exchanges: dict[str, Exchange] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)
    sent: dict[str, str] = field(default_factory=dict)  # values the probe made up (markers, IDs)

    def get(self, role: str) -> Exchange:
        return self.exchanges.get(role) or Exchange(role, error="not sent")


@dataclass(frozen=True)
class Probe:
    name: str
    checks: tuple[str, ...]  # the checks `judge` decides, reported unobservable if it never ran
    gather: Callable[[Session], Awaitable[Evidence]]
    judge: Callable[[Evidence], list[Finding]]
