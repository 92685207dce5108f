"""The processes a load or chaos run needs, on free loopback ports: the upstream app
(tests/support/upstream_app.py), optionally a Redis server of its own, and guardproxy started
through its CLI from a config file, with its output in a log file. Each part can be killed and
started again on the same port, which is what scripts/chaos does to them."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until `predicate` held; raises after `timeout`."""
    started = time.monotonic()
    for _ in range(int(timeout / 0.05) + 1):
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    raise RuntimeError(f"{what}: not within {timeout}s")


@dataclass
class Stack:
    workdir: Path
    workers: int
    config: Callable[[str], dict[str, Any]]
    redis: bool = False
    upstream_port: int = field(default_factory=free_port)
    redis_port: int = field(default_factory=free_port)
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @classmethod
    @contextlib.contextmanager
    def start(
        cls, workdir: Path, *, workers: int, config: Callable[[str], dict[str, Any]], redis: bool = False
    ) -> Iterator[Stack]:
        workdir.mkdir(parents=True, exist_ok=True)
        stack = cls(workdir, workers, config, redis)
        try:
            if redis:
                stack.start_redis()
            stack.start_upstream()
            stack.write_config()
            stack.start_guardproxy()
            yield stack
        finally:
            stack.stop_all()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def upstream_url(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def config_path(self) -> Path:
        return self.workdir / "guardproxy.yaml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "guardproxy.log"

    def write_config(self, **overrides: Any) -> None:
        values = self.config(self.upstream_url)
        if self.redis:
            values.setdefault("rate_limit", {})["redis_url"] = self.redis_url
        values.update(overrides)
        self.config_path.write_text(yaml.safe_dump(values))

    def start_upstream(self) -> None:
        command = [sys.executable, str(ROOT / "tests/support/upstream_app.py"), str(self.upstream_port)]
        self.processes["upstream"] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open(self.upstream_port), 20, "the upstream app listening")

    def start_redis(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is not installed (Debian package redis-server)")
        command = [server, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.processes["redis"] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open(self.redis_port), 20, "redis-server listening")

    def start_guardproxy(self) -> None:
        command = [
            sys.executable,
            "-m",
            "guardproxy",
            "run",
            "--config",
            str(self.config_path),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--admin-listen",
            f"127.0.0.1:{self.admin_port}",
            "--workers",
            str(self.workers),
        ]
        env = {**os.environ, "GUARDPROXY_SERVER__DRAIN_DELAY": "0"}
        with self.log_path.open("ab") as log:
            self.processes["guardproxy"] = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        wait_for(self.ready, 40, "guardproxy ready")
        if self.workers > 1:
            wait_for(lambda: len(self.worker_pids()) == self.workers, 40, "every worker started")

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.admin_url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def guardproxy_pid(self) -> int:
        return self.processes["guardproxy"].pid

    def worker_pids(self) -> list[int]:
        """The worker processes (with one worker, guardproxy itself)."""
        if self.workers == 1:
            return [self.guardproxy_pid]
        with contextlib.suppress(psutil.Error):
            children = psutil.Process(self.guardproxy_pid).children()
            return [
                child.pid
                for child in children
                if child.is_running()
                and child.status() != psutil.STATUS_ZOMBIE
                and "spawn_main" in " ".join(child.cmdline())
            ]
        return []

    def kill(self, name: str) -> None:
        process = self.processes[name]
        if process.poll() is None:
            process.kill()
            process.wait(10)

    def signal_guardproxy(self, signum: int) -> None:
        os.kill(self.guardproxy_pid, signum)

    def stop_guardproxy(self, timeout: float = 40) -> int:
        process = self.processes["guardproxy"]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        return process.returncode

    def stop_all(self) -> None:
        self.stop_guardproxy()
        for name in ("upstream", "redis"):
            if name in self.processes:
                self.kill(name)
