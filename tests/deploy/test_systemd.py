"""deploy/systemd/guardproxy.service: the settings that make guardproxy drain cleanly and run
confined. scripts/check-deploy also runs `systemd-analyze verify` on it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.deploy.dockerfile import REPO
from tests.deploy.settings import unknown_settings

UNIT = REPO / "deploy" / "systemd" / "guardproxy.service"
Unit = dict[str, dict[str, list[str]]]

# Directives a confined guardproxy needs, with the value each must have.
CONFINEMENT = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictSUIDSGID": "yes",
    "RestrictNamespaces": "yes",
    "CapabilityBoundingSet": "",
    "SystemCallArchitectures": "native",
}
# guardproxy's defaults: server.drain_delay + server.shutdown_timeout.
DRAIN_SECONDS = 5 + 30


def parse(text: str) -> Unit:
    """Sections of key -> every value given (systemd lets some keys repeat)."""
    unit: Unit = {}
    section: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def problems(unit: Unit) -> list[str]:
    service = unit.get("Service", {})

    def last(key: str) -> str | None:
        return service[key][-1] if key in service else None

    found = []
    exec_start = last("ExecStart") or ""
    if exec_start.split()[:2] != ["/opt/guardproxy/bin/guardproxy", "run"]:
        found.append("ExecStart must run `guardproxy run` from /opt/guardproxy")
    if last("ExecReload") != "/bin/kill -HUP $MAINPID":
        found.append("ExecReload must send SIGHUP to the main process, which passes it on to the workers")
    if last("KillMode") != "mixed":
        found.append("KillMode must be mixed: a SIGTERM straight to the workers would skip their drain delay")
    if last("KillSignal") not in (None, "SIGTERM"):
        found.append("KillSignal must be SIGTERM, the signal guardproxy drains on")
    stop = last("TimeoutStopSec")
    if stop is None or not stop.isdigit() or int(stop) <= DRAIN_SECONDS:
        found.append(f"TimeoutStopSec must exceed the drain ({DRAIN_SECONDS} s), not {stop}")
    if last("User") in (None, "root") and last("DynamicUser") != "yes":
        found.append("must not run as root: DynamicUser=yes or a User of its own")
    for key, value in CONFINEMENT.items():
        if last(key) != value:
            found.append(f"{key} must be {value!r}, not {last(key)!r}")
    if not any(value.startswith("@system-service") for value in service.get("SystemCallFilter", [])):
        found.append("SystemCallFilter must allow @system-service only")
    environment = " ".join(service.get("Environment", []))
    if "GUARDPROXY_METRICS__MULTIPROCESS_DIR=%t/" not in environment or last("RuntimeDirectory") != "guardproxy":
        found.append("the workers' metrics directory must be in the service's RuntimeDirectory")
    variables = dict(value.partition("=")[::2] for value in service.get("Environment", []))
    found += [f"{name} is not a guardproxy setting" for name in unknown_settings(variables)]
    if any("REDIS_URL" in value or "PASSWORD" in value.upper() for value in service.get("Environment", [])):
        found.append("secrets belong in the EnvironmentFile, not in the unit")
    if "multi-user.target" not in unit.get("Install", {}).get("WantedBy", []):
        found.append("WantedBy=multi-user.target, so it starts at boot")
    return found


def test_unit_keeps_its_promises() -> None:
    assert problems(parse(UNIT.read_text())) == []


def _set(key: str, value: str | None) -> Callable[[Unit], None]:
    def edit(unit: Unit) -> None:
        if value is None:
            unit["Service"].pop(key, None)
        else:
            unit["Service"][key] = [value]

    return edit


MISTAKES = {
    "default kill mode": (_set("KillMode", None), "KillMode must be mixed"),
    "control-group kill mode": (_set("KillMode", "control-group"), "KillMode must be mixed"),
    "stop timeout shorter than the drain": (_set("TimeoutStopSec", "30"), "TimeoutStopSec"),
    "systemd's default stop timeout": (_set("TimeoutStopSec", None), "TimeoutStopSec"),
    "runs as root": (_set("DynamicUser", None), "must not run as root"),
    "writable system": (_set("ProtectSystem", "full"), "ProtectSystem"),
    "privileges kept": (_set("NoNewPrivileges", None), "NoNewPrivileges"),
    "capabilities kept": (_set("CapabilityBoundingSet", None), "CapabilityBoundingSet"),
    "any system call": (_set("SystemCallFilter", None), "SystemCallFilter"),
    "metrics on the read-only system": (
        _set("Environment", "GUARDPROXY_METRICS__MULTIPROCESS_DIR=/var/lib/guardproxy"),
        "RuntimeDirectory",
    ),
    "secret in the unit": (_set("Environment", "GUARDPROXY_RATE_LIMIT__REDIS_URL=redis://:pw@r:6379"), "secrets"),
    "misspelt setting": (_set("Environment", "GUARDPROXY_ADMIN__LISTN=127.0.0.1:9090"), "not a guardproxy setting"),
    "another command": (_set("ExecStart", "/usr/bin/python3 -m http.server"), "ExecStart"),
    "no reload": (_set("ExecReload", None), "ExecReload"),
    "a restart for a reload": (_set("ExecReload", "/bin/kill -TERM $MAINPID"), "ExecReload"),
    "not started at boot": (lambda unit: unit.pop("Install") and None, "WantedBy"),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_rules_catch(mistake: str) -> None:
    unit = parse(UNIT.read_text())
    edit, expected = MISTAKES[mistake]
    edit(unit)
    found = problems(unit)
    assert any(expected in problem for problem in found), found
