"""Real processes on loopback ports: guardproxy through its own CLI, and upstream apps."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

SUPPORT_DIR = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class UpstreamProcess:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def drain(self) -> None:
        """Stop as a rollout stops a replica: SIGTERM, so the server finishes the requests it
        has started and closes its idle connections before it exits."""
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)


def start_support_server(script: Path, port: int | None = None) -> UpstreamProcess:
    """Run a server script of tests/support (`python SCRIPT PORT`) and wait until it listens."""
    port = port or free_port()
    process = subprocess.Popen([sys.executable, str(script), str(port)], cwd=SUPPORT_DIR.parents[1])
    upstream = UpstreamProcess(port, process)
    try:
        wait_until(lambda: port_open(port))
    except AssertionError:
        upstream.stop()
        raise
    return upstream


def start_upstream_app(port: int | None = None) -> UpstreamProcess:
    return start_support_server(SUPPORT_DIR / "upstream_app.py", port)


@dataclass
class Guardproxy:
    """guardproxy started through its own CLI (`python -m guardproxy run ...`)."""

    port: int
    admin_port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        if self.process.poll() is None:
            if sig == signal.SIGKILL:
                self.kill()
            else:
                self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                self.process.wait()
                raise AssertionError(f"guardproxy did not stop within {timeout}s") from None
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL for guardproxy and its workers: a killed supervisor cannot stop them, and
        orphaned workers would keep serving (and taking CPU) for the rest of the run."""
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(self.process.pid) == self.process.pid:  # started in a session of its own
                os.killpg(self.process.pid, signal.SIGKILL)
            else:
                self.process.kill()


def start_guardproxy(
    upstream_url: str,
    *extra_args: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
    wait_ready: bool = False,
    port: int | None = None,
) -> Guardproxy:
    port, admin_port = port or free_port(), free_port()
    args = [
        sys.executable,
        "-m",
        "guardproxy",
        "run",
        "--upstream",
        upstream_url,
        "--listen",
        f"127.0.0.1:{port}",
        "--admin-listen",
        f"127.0.0.1:{admin_port}",
        *extra_args,
    ]
    log_path = log_dir / f"guardproxy-{port}.log"
    log_file = log_path.open("wb")
    # No drain delay unless a test asks for one: most tests stop guardproxy and move on.
    env = {**os.environ, "GUARDPROXY_SERVER__DRAIN_DELAY": "0", **(env or {})}
    # A process group of its own, so that kill() reaches the workers too.
    process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    log_file.close()
    proxy = Guardproxy(port, admin_port, process, log_path, args)

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"guardproxy exited with {process.returncode}:\n{proxy.log_text()}")
        try:
            response = httpx.get(f"{proxy.admin_url}/{'readyz' if wait_ready else 'healthz'}", timeout=0.5)
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and port_open(proxy.port)

    try:
        # Generous: spawned workers on a loaded 2-core machine, under coverage, took 10 s to start.
        wait_until(up, timeout=30)
    except BaseException:
        proxy.stop(signal.SIGKILL)
        raise
    return proxy


def echoed_headers(echo: dict) -> dict[str, list[str]]:  # type: ignore[type-arg]
    """The request headers the upstream app's /echo saw, by name (repeated fields kept)."""
    headers: dict[str, list[str]] = {}
    for name, value in echo["headers"]:
        headers.setdefault(name, []).append(value)
    return headers
