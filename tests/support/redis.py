"""Redis servers of a test's own, on free ports, for tests that kill, restart or cluster them.
Tests that only need a Redis use the machine's, at 127.0.0.1:6379, with a key prefix of their own."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import redis

from tests.support.processes import free_port, port_open, wait_until

SHARED_REDIS_URL = "redis://127.0.0.1:6379/0"


def unique_prefix() -> str:
    return f"gp-test-{uuid.uuid4().hex[:12]}:"


def shared_redis() -> redis.Redis:
    return redis.Redis.from_url(SHARED_REDIS_URL)


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]
    directory: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000, Redis' fixed offset) is free too."""
    while True:
        port = free_port()
        if port + 10000 <= 65535:
            try:
                with socket.create_server(("127.0.0.1", port + 10000)):
                    return port
            except OSError:
                continue


def start_redis(directory: Path, *args: str, port: int | None = None) -> RedisServer:
    executable = shutil.which("redis-server")
    assert executable, "redis-server is not installed (./scripts/test installs it)"
    port = port or free_port()
    directory.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            executable,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = RedisServer(port, process, directory)
    try:
        wait_until(lambda: port_open(port))
    except AssertionError:
        server.kill()
        raise
    return server
