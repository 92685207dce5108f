"""The probes, in the order their rows are reported."""

from __future__ import annotations

from guardproxy.audit.probes.base import Evidence, Probe
from guardproxy.audit.probes.cors import CORS
from guardproxy.audit.probes.errors import ERRORS, TRACE, TRAVERSAL
from guardproxy.audit.probes.headers import CACHE, COMPRESSION, RESPONSE
from guardproxy.audit.probes.identity import CLIENT_IP, HOST, REQUEST_ID
from guardproxy.audit.probes.limits import BODY_LIMIT, HEAD_LIMITS, RATE_LIMIT, SLOW_HEAD

# Probes that send a handful of requests each, run side by side.
QUICK: tuple[Probe, ...] = (
    RESPONSE,
    CORS,
    REQUEST_ID,
    ERRORS,
    TRAVERSAL,
    TRACE,
    HOST,
    CLIENT_IP,
    BODY_LIMIT,
    HEAD_LIMITS,
    COMPRESSION,
    CACHE,
)
# Runs for seconds on one idle connection, from the start, next to everything else.
BACKGROUND: tuple[Probe, ...] = (SLOW_HEAD,)
# Runs last: once a limit trips, every later request would see a 429 instead of its answer.
LAST: tuple[Probe, ...] = (RATE_LIMIT,)

ALL: tuple[Probe, ...] = QUICK + BACKGROUND + LAST

__all__ = ["ALL", "BACKGROUND", "LAST", "QUICK", "Evidence", "Probe"]
