"""The Dockerfile, checked without a Docker engine: its rules, its environment against guardproxy's
real configuration loader, and its HEALTHCHECK command run against a real guardproxy."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import yaml

from tests.deploy.dockerfile import (
    DOCKERFILE,
    DOCKERIGNORE,
    dockerignore_problems,
    env_values,
    healthcheck_command,
    parse,
    problems,
    seconds,
)
from tests.deploy.settings import check_config, unknown_settings
from tests.support.processes import Guardproxy, UpstreamProcess, free_port

REAL = DOCKERFILE.read_text()


def test_dockerfile_follows_every_rule() -> None:
    assert problems(REAL) == []


def _replace(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert old in text, f"the mutation no longer applies: {old!r} is not in the Dockerfile"
        return text.replace(old, new)

    return edit


def _append(line: str) -> Callable[[str], str]:
    return lambda text: text + line + "\n"


def _without_lines(word: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        kept = [line for line in text.splitlines() if not line.startswith(word)]
        assert len(kept) < len(text.splitlines()), f"no line starts with {word!r}"
        return "\n".join(kept) + "\n"

    return edit


def _runtime_only(text: str) -> str:
    return text[text.index("FROM ${PYTHON_IMAGE} AS runtime") :].replace("${PYTHON_IMAGE}", "python:3.11-slim")


# Each mistake the rules exist for, and the problem it must produce.
BROKEN = {
    "runs as root": (_replace("USER 10001:10001", "USER root"), "numeric"),
    "runs as UID 0": (_replace("USER 10001:10001", "USER 0:0"), "must not be root"),
    "no USER": (_without_lines("USER"), "must set USER"),
    "another UID than the chart's": (_replace("USER 10001:10001", "USER 1000:1000"), "fixed UID 10001"),
    "curl in the runtime": (
        _replace("EXPOSE 8080 9090", "RUN apt-get update && apt-get install -y curl\nEXPOSE 8080 9090"),
        "must not use or install curl",
    ),
    "pip install in the runtime": (
        _replace("EXPOSE 8080 9090", "RUN pip install guardproxy\nEXPOSE 8080 9090"),
        "must not install packages",
    ),
    "pip install after removing pip": (
        _replace("EXPOSE 8080 9090", "RUN pip uninstall --yes pip && pip install guardproxy\nEXPOSE 8080 9090"),
        "must not install packages",
    ),
    "pip used for anything but removing it": (
        _replace("EXPOSE 8080 9090", "RUN python -m pip download guardproxy\nEXPOSE 8080 9090"),
        "must not install packages",
    ),
    "source copied into the runtime": (_append("COPY . /src"), "may only copy from the builder"),
    "admin port not exposed": (_replace("EXPOSE 8080 9090", "EXPOSE 8080"), "port 9090 must be EXPOSEd"),
    "admin listener on loopback": (
        _replace("GUARDPROXY_ADMIN__LISTEN=0.0.0.0:9090", "GUARDPROXY_ADMIN__LISTEN=127.0.0.1:9090"),
        "must bind every interface",
    ),
    "exposed port differs from the listener": (
        _replace("GUARDPROXY_SERVER__LISTEN=0.0.0.0:8080", "GUARDPROXY_SERVER__LISTEN=0.0.0.0:8000"),
        "port 8000 must be EXPOSEd",
    ),
    "metrics directory on the read-only root": (
        _replace("MULTIPROCESS_DIR=/tmp/guardproxy-metrics", "MULTIPROCESS_DIR=/var/lib/guardproxy"),
        "below /tmp",
    ),
    "health check with curl": (
        _append('HEALTHCHECK CMD ["curl", "-f", "http://127.0.0.1:9090/healthz"]'),
        "must run python",
    ),
    "health check in shell form": (_append("HEALTHCHECK CMD wget -q -O- http://127.0.0.1:9090/healthz"), "exec form"),
    "health check outlives Docker's timeout": (_replace("--timeout=3s", "--timeout=1s"), "must be shorter"),
    "health check on a fixed port": (
        _replace("os.environ.get('GUARDPROXY_ADMIN__LISTEN', ':9090').rpartition(':')[2]", "'9090'"),
        "from GUARDPROXY_ADMIN__LISTEN",
    ),
    "baked-in Redis URL": (_append("ENV GUARDPROXY_RATE_LIMIT__REDIS_URL=redis://:hunter2@redis:6379/0"), "secret"),
    "secret build argument": (
        _replace("FROM ${PYTHON_IMAGE} AS builder", "ARG API_TOKEN\nFROM ${PYTHON_IMAGE} AS builder"),
        "secret",
    ),
    "baked-in config path": (_append("ENV GUARDPROXY_CONFIG=/etc/guardproxy/guardproxy.yaml"), "must not be baked"),
    "another Python": (_replace("python:3.11-slim-trixie", "python:3.13"), "python:3.11-slim"),
    "a single stage": (_runtime_only, "in stages"),
    "shell-form entrypoint": (
        _replace('ENTRYPOINT ["guardproxy"]', "ENTRYPOINT guardproxy run"),
        "exec form, so signals",
    ),
}


@pytest.mark.parametrize("mistake", BROKEN)
def test_rules_catch(mistake: str) -> None:
    edit, expected = BROKEN[mistake]
    found = problems(edit(REAL))
    assert any(expected in problem for problem in found), found


def test_dockerignore_lets_in_exactly_what_the_build_copies() -> None:
    assert dockerignore_problems(DOCKERIGNORE.read_text(), REAL) == []


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda text: text.replace("*\n", "", 1), "must start with *"),
        (lambda text: text.replace("!src/\n", ""), "src is copied by the Dockerfile but excluded"),
        (lambda text: text + "!tests/\n", "tests is let into the build context but never copied"),
        (lambda text: text + "!.env\n", ".env is let into the build context"),
    ],
    ids=["denylist", "source excluded", "tests let in", "dotenv let in"],
)
def test_dockerignore_rules_catch(edit: Callable[[str], str], expected: str) -> None:
    found = dockerignore_problems(edit(DOCKERIGNORE.read_text()), REAL)
    assert any(expected in problem for problem in found), found


def test_builder_uses_the_tested_versions_and_no_compiler() -> None:
    builder = parse(REAL).stages[0]
    wheel = next(item.arguments for item in builder.all("RUN") if "pip wheel" in item.arguments)
    assert "--constraint constraints.txt" in wheel
    assert "--only-binary=:all:" in wheel


def _image_env() -> dict[str, str]:
    env = env_values(parse(REAL).runtime)
    env.pop("PATH")
    return env


def test_image_environment_names_only_real_settings() -> None:
    assert unknown_settings(_image_env()) == []


def test_image_environment_is_a_valid_configuration() -> None:
    """Every GUARDPROXY_* variable the image sets has a valid value."""
    result = check_config({**_image_env(), "GUARDPROXY_UPSTREAM__URL": "http://api:8000"})
    assert result.returncode == 0, result.stderr
    effective = yaml.safe_load(result.stdout)
    assert effective["server"]["listen"] == "0.0.0.0:8080"
    assert effective["admin"]["listen"] == "0.0.0.0:9090"
    assert effective["metrics"]["multiprocess_dir"].startswith("/tmp/")


def test_image_without_an_upstream_refuses_to_start() -> None:
    """Nothing is baked in: the upstream comes from the environment or the mounted file."""
    result = check_config(_image_env())
    assert result.returncode == 2
    assert "upstream" in result.stderr


# The HEALTHCHECK command itself, run the way Docker runs it: exec form, the image's environment.

HEALTH_OPTIONS, HEALTH_COMMAND = healthcheck_command(parse(REAL).runtime)
DOCKER_TIMEOUT = seconds(HEALTH_OPTIONS.get("timeout", "30s"))


def run_healthcheck(admin_port: int, **extra_env: str) -> tuple[int, float]:
    assert HEALTH_COMMAND is not None
    assert HEALTH_COMMAND[0] == "python"
    env = {key: value for key, value in os.environ.items() if "proxy" not in key.lower()}
    env.update(_image_env(), GUARDPROXY_ADMIN__LISTEN=f"0.0.0.0:{admin_port}", **extra_env)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, *HEALTH_COMMAND[1:]], env=env, capture_output=True, timeout=DOCKER_TIMEOUT + 5, check=False
    )
    return result.returncode, time.monotonic() - started


@pytest.fixture
def healthy_proxy(start_proxy: Callable[..., Guardproxy], upstream: UpstreamProcess) -> Guardproxy:
    return start_proxy(upstream.url)


def test_healthcheck_passes_against_a_live_guardproxy(healthy_proxy: Guardproxy) -> None:
    assert run_healthcheck(healthy_proxy.admin_port)[0] == 0


def test_healthcheck_fails_once_guardproxy_has_stopped(healthy_proxy: Guardproxy) -> None:
    assert run_healthcheck(healthy_proxy.admin_port)[0] == 0
    assert healthy_proxy.stop() == 0
    # 1 is Docker's "unhealthy"; 2 is reserved and must never come back.
    assert run_healthcheck(healthy_proxy.admin_port)[0] == 1


def test_healthcheck_follows_the_admin_listen_variable(healthy_proxy: Guardproxy) -> None:
    """A live guardproxy on another port does not make a misconfigured check pass."""
    assert run_healthcheck(free_port())[0] == 1


def test_healthcheck_ignores_http_proxy_variables(healthy_proxy: Guardproxy) -> None:
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    code, _ = run_healthcheck(healthy_proxy.admin_port, http_proxy=dead_proxy, HTTP_PROXY=dead_proxy)
    assert code == 0


class _Unhealthy(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def unhealthy_admin() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unhealthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_healthcheck_fails_on_an_error_status(unhealthy_admin: int) -> None:
    assert run_healthcheck(unhealthy_admin)[0] == 1


def test_healthcheck_gives_up_on_a_hung_listener_before_docker_does() -> None:
    """A listener that accepts and never answers: the probe must fail by itself, not be killed."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        code, elapsed = run_healthcheck(listener.getsockname()[1])
    assert code == 1
    assert elapsed < DOCKER_TIMEOUT
