"""docker-compose.yml, parsed and held to its promises without a Docker engine: hardened services,
only guardproxy published, the admin port on loopback, a stop grace that covers the drain, and a
guardproxy configuration (environment plus mounted file) that guardproxy itself accepts.
scripts/check-deploy also validates the file against the Compose specification's schema."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy.dockerfile import DOCKERFILE, REPO, env_values, healthcheck_command, listen_port, parse, seconds
from tests.deploy.settings import check_config, unknown_settings

COMPOSE = REPO / "docker-compose.yml"
Compose = dict[str, Any]

IMAGE = parse(DOCKERFILE.read_text()).runtime
IMAGE_ENV = {key: value for key, value in env_values(IMAGE).items() if key != "PATH"}


def _env(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] for item in environment)
    return {str(key): str(value) for key, value in environment.items()}


def _mounted_config(service: dict[str, Any]) -> tuple[Path | None, list[str]]:
    """The host file mounted where GUARDPROXY_CONFIG points, read-only."""
    target = _env(service).get("GUARDPROXY_CONFIG")
    if target is None:
        return None, []
    for volume in service.get("volumes", []):
        source, _, rest = str(volume).partition(":")
        mount, _, mode = rest.partition(":")
        if mount == target:
            if "ro" not in mode.split(","):
                return None, [f"the config file {target} must be mounted read-only"]
            path = (COMPOSE.parent / source).resolve()
            if not path.is_file():
                return None, [f"the mounted config file {source} does not exist"]
            return path, []
    return None, [f"GUARDPROXY_CONFIG={target} is not a mounted file"]


def _service_networks(service: dict[str, Any]) -> set[str]:
    networks = service.get("networks", ["default"])
    return set(networks if isinstance(networks, list) else networks.keys())


def _hardening_problems(name: str, service: dict[str, Any]) -> list[str]:
    found = []
    if service.get("read_only") is not True:
        found.append(f"{name}: read_only must be true")
    if "ALL" not in service.get("cap_drop", []):
        found.append(f"{name}: cap_drop must include ALL")
    if service.get("cap_add"):
        found.append(f"{name}: must not add capabilities")
    if "no-new-privileges:true" not in service.get("security_opt", []):
        found.append(f"{name}: security_opt must include no-new-privileges:true")
    if service.get("privileged") or service.get("network_mode") == "host" or service.get("pid") == "host":
        found.append(f"{name}: must not be privileged or share the host's network or processes")
    image = service.get("image", "")
    if not service.get("build") and (":" not in image.rpartition("/")[2] or image.endswith(":latest")):
        found.append(f"{name}: image {image!r} must be pinned to a version tag")
    return found


def _guardproxy_problems(compose: Compose, service: dict[str, Any]) -> list[str]:
    found = []
    services = compose["services"]
    env = _env(service)
    if service.get("build") not in (".", {"context": "."}):
        found.append("guardproxy: must be built from this repository's Dockerfile")
    _, health = healthcheck_command(IMAGE)
    if service.get("healthcheck", {}).get("test") != ["CMD", *(health or [])]:
        found.append("guardproxy: healthcheck must run the image's own HEALTHCHECK command")
    unknown = unknown_settings(env)
    if unknown:
        found.append(f"guardproxy: not guardproxy settings, would be ignored: {', '.join(unknown)}")
    for variable in ("GUARDPROXY_UPSTREAM__URL", "GUARDPROXY_RATE_LIMIT__REDIS_URL"):
        host = urlsplit(env.get(variable, "")).hostname
        if host not in services:
            found.append(f"guardproxy: {variable} must name a service of this file, not {host!r}")
        elif not _service_networks(services[host]) & _service_networks(service):
            found.append(f"guardproxy: shares no network with {host}, which {variable} names")
    if (
        services.get("redis", {}).get("healthcheck") is None
        or service.get("depends_on", {}).get("redis", {}).get("condition") != "service_healthy"
    ):
        found.append("guardproxy: must wait for a healthy redis (depends_on condition service_healthy)")
    proxy_port = listen_port(env.get("GUARDPROXY_SERVER__LISTEN", IMAGE_ENV["GUARDPROXY_SERVER__LISTEN"]))
    admin_port = listen_port(env.get("GUARDPROXY_ADMIN__LISTEN", IMAGE_ENV["GUARDPROXY_ADMIN__LISTEN"]))
    published = {str(port).rpartition(":")[2]: str(port) for port in service.get("ports", [])}
    if str(proxy_port) not in published:
        found.append(f"guardproxy: the proxy port {proxy_port} must be published")
    admin = published.get(str(admin_port))
    if admin is not None and not admin.startswith("127.0.0.1:"):
        found.append(f"guardproxy: the admin port {admin_port} may be published on 127.0.0.1 only, not {admin!r}")
    if not any(str(mount).partition(":")[0] == "/tmp" for mount in service.get("tmpfs", [])):
        found.append("guardproxy: /tmp must be a tmpfs, the only writable place on a read-only root")
    config_file, config_found = _mounted_config(service)
    found += [f"guardproxy: {problem}" for problem in config_found]
    server = (yaml.safe_load(config_file.read_text()) or {}).get("server", {}) if config_file else {}
    drain = float(env.get("GUARDPROXY_SERVER__DRAIN_DELAY", server.get("drain_delay", 5.0)))
    shutdown = float(env.get("GUARDPROXY_SERVER__SHUTDOWN_TIMEOUT", server.get("shutdown_timeout", 30.0)))
    grace = seconds(str(service.get("stop_grace_period", "10s")))
    if grace < drain + shutdown + 1:
        found.append(f"guardproxy: stop_grace_period {grace:g}s must exceed drain_delay + shutdown_timeout")
    return found


def compose_problems(compose: Compose) -> list[str]:
    """Everything docker-compose.yml gets wrong against its promises; empty when it is fine."""
    services = compose.get("services", {})
    if "guardproxy" not in services:
        return ["there must be a guardproxy service"]
    found = []
    for name, service in services.items():
        found += _hardening_problems(name, service)
        if name != "guardproxy":
            if service.get("ports"):
                found.append(f"{name}: only guardproxy is published; {name} is reached through it")
            internal = {net for net, spec in compose.get("networks", {}).items() if (spec or {}).get("internal")}
            if not _service_networks(service) <= internal:
                found.append(f"{name}: must be on internal networks only")
    return found + _guardproxy_problems(compose, services["guardproxy"])


def load() -> Compose:
    compose = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(compose, dict)
    return compose


def test_compose_file_keeps_its_promises() -> None:
    assert compose_problems(load()) == []


def _service(name: str, change: Callable[[dict[str, Any]], object]) -> Callable[[Compose], None]:
    def edit(compose: Compose) -> None:
        change(compose["services"][name])

    return edit


def _set_env(name: str, value: str) -> Callable[[Compose], None]:
    return _service("guardproxy", lambda service: service["environment"].update({name: value}))


MISTAKES: dict[str, tuple[Callable[[Compose], None], str]] = {
    "writable root": (_service("redis", lambda service: service.update(read_only=False)), "redis: read_only"),
    "capabilities kept": (_service("api", lambda service: service.pop("cap_drop")), "api: cap_drop"),
    "capability added": (_service("guardproxy", lambda service: service.update(cap_add=["NET_ADMIN"])), "must not add"),
    "privilege gain": (_service("api", lambda service: service.update(security_opt=[])), "no-new-privileges"),
    "privileged": (_service("redis", lambda service: service.update(privileged=True)), "must not be privileged"),
    "host network": (_service("api", lambda service: service.update(network_mode="host")), "host's network"),
    "unpinned image": (_service("redis", lambda service: service.update(image="redis")), "pinned"),
    "latest image": (_service("api", lambda service: service.update(image="traefik/whoami:latest")), "pinned"),
    "api published": (_service("api", lambda service: service.update(ports=["8000:8000"])), "only guardproxy"),
    "redis on an open network": (_service("redis", lambda service: service.update(networks=["edge"])), "internal"),
    "admin on every interface": (
        _service("guardproxy", lambda service: service.update(ports=["8080:8080", "9090:9090"])),
        "127.0.0.1 only",
    ),
    "proxy not published": (
        _service("guardproxy", lambda service: service.update(ports=["127.0.0.1:9090:9090"])),
        "proxy port 8080 must be published",
    ),
    "Docker's default stop grace": (
        _service("guardproxy", lambda service: service.pop("stop_grace_period")),
        "stop_grace_period 10s",
    ),
    "drain longer than the stop grace": (_set_env("GUARDPROXY_SERVER__DRAIN_DELAY", "20"), "stop_grace_period"),
    "no /tmp": (_service("guardproxy", lambda service: service.pop("tmpfs")), "/tmp must be a tmpfs"),
    "writable config mount": (
        _service(
            "guardproxy",
            lambda service: service.update(
                volumes=["./deploy/compose/guardproxy.yaml:/etc/guardproxy/guardproxy.yaml"]
            ),
        ),
        "mounted read-only",
    ),
    "config file missing": (
        _service(
            "guardproxy",
            lambda service: service.update(
                volumes=["./deploy/compose/missing.yaml:/etc/guardproxy/guardproxy.yaml:ro"]
            ),
        ),
        "does not exist",
    ),
    "config path not mounted": (_set_env("GUARDPROXY_CONFIG", "/etc/guardproxy.yaml"), "is not a mounted file"),
    "misspelt setting": (_set_env("GUARDPROXY_RATELIMIT__REDIS_URL", "redis://redis:6379/0"), "would be ignored"),
    "redis that is not here": (
        _set_env("GUARDPROXY_RATE_LIMIT__REDIS_URL", "redis://cache:6379/0"),
        "must name a service of this file, not 'cache'",
    ),
    "upstream on no shared network": (
        _service("api", lambda service: service.update(networks=["other"])),
        "shares no network with api",
    ),
    "redis not awaited": (
        _service("guardproxy", lambda service: service["depends_on"].pop("redis")),
        "must wait for a healthy redis",
    ),
    "redis without a health check": (
        _service("redis", lambda service: service.pop("healthcheck")),
        "must wait for a healthy redis",
    ),
    "health check with curl": (
        _service(
            "guardproxy",
            lambda service: service["healthcheck"].update(test=["CMD", "curl", "-f", "http://127.0.0.1:9090/healthz"]),
        ),
        "the image's own HEALTHCHECK",
    ),
    "prebuilt image only": (_service("guardproxy", lambda service: service.pop("build")), "built from this repo"),
    "no guardproxy": (lambda compose: compose["services"].pop("guardproxy") and None, "must be a guardproxy service"),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_rules_catch(mistake: str) -> None:
    compose = copy.deepcopy(load())
    edit, expected = MISTAKES[mistake]
    edit(compose)
    found = compose_problems(compose)
    assert any(expected in problem for problem in found), found


def _compose_guardproxy_env(compose: Compose) -> dict[str, str]:
    """What guardproxy sees in the container: the image's environment, the service's, and the
    mounted config file at its host path."""
    service = compose["services"]["guardproxy"]
    config_file, problems = _mounted_config(service)
    assert config_file is not None, problems
    return {**IMAGE_ENV, **_env(service), "GUARDPROXY_CONFIG": str(config_file)}


def test_guardproxy_accepts_the_compose_configuration() -> None:
    result = check_config(_compose_guardproxy_env(load()))
    assert result.returncode == 0, result.stderr
    effective = yaml.safe_load(result.stdout)
    assert effective["upstream"]["url"] == "http://api:8000"
    assert effective["server"]["workers"] == 2


def test_a_broken_compose_configuration_is_refused() -> None:
    """The check above can fail: a bad value in the environment stops guardproxy with exit 2."""
    env = _compose_guardproxy_env(load())
    env["GUARDPROXY_UPSTREAM__URL"] = "api:8000"
    result = check_config(env)
    assert result.returncode == 2
    assert "upstream.url" in result.stderr
