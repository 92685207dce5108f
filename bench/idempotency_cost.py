"""What Idempotency-Key handling costs: CPU µs per request of the guardproxy process, interleaved.

Every instance sits in front of the static nginx upstream and gets POSTs with a fresh
Idempotency-Key each (a wrk Lua script numbers them), except `redis-replay`, which repeats one
key so that every request after the first is a replay. The instances:

  off            the route exists, idempotency is off everywhere: the guard is not in the chain
  other-route    another route has idempotency on; these requests go to a route without it
  no-key         idempotency on, requests without a key (not required): forwarded unprotected
  memory         idempotency on, in-memory store: read + hash the body, lock, forward, store
  redis          the same with a Redis store (a redis-server of its own, on this machine)
  redis-replay   idempotency on, Redis, one key: answered from the store, never forwarded

Redis' own CPU is reported as well for the Redis instances (it shares the two cores here).
Figures are noisy on a shared machine: compare them within one run only.
Usage: python bench/idempotency_cost.py [--rounds 5] [--duration 3] [--connections 64]
Needs: wrk, nginx and redis-server on PATH.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from procstat import cpu_seconds
from run import free_port, start_guardproxy, start_nginx, tools_present, wait_for

_SCRIPT = """
local prefix, counter, fixed = "k", 0, false
function init(args)
  prefix = args[1]
  fixed = args[2] == "fixed"
end
function request()
  counter = counter + 1
  local headers = {["Content-Type"] = "application/json"}
  if prefix ~= "none" then
    headers["Idempotency-Key"] = fixed and prefix or (prefix .. "-" .. counter)
  end
  return wrk.format("POST", nil, headers, '{"amount":42,"currency":"eur"}')
end
"""
_BODY = b'{"amount":42,"currency":"eur"}'

_CONFIG = """
idempotency:
  ttl: 120
  lock_ttl: 10
routes:
  - name: pay
    path: /pay
    idempotency: {{enabled: {enabled}}}
  - name: other
    path: /other
"""


@dataclass
class Instance:
    name: str
    url: str
    pid: int
    keys: str  # "unique", "fixed" or "none"
    redis_pid: int | None = None
    log: Path | None = None
    user_us: list[float] = field(default_factory=list)
    sys_us: list[float] = field(default_factory=list)
    redis_us: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)


def run_wrk(instance: Instance, script: Path, duration: float, connections: int) -> tuple[int, float]:
    prefix = "none" if instance.keys == "none" else uuid.uuid4().hex
    if instance.keys == "fixed":
        prefix = f"fixed-{instance.name}"
    output = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{int(duration)}s", "-s", str(script), instance.url, "--", prefix]
        + (["fixed"] if instance.keys == "fixed" else []),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    if "Non-2xx" in output:
        log = instance.log.read_text(errors="replace").splitlines()[-3:] if instance.log else []
        raise RuntimeError(f"{instance.name}: error responses during the run:\n{output}\n" + "\n".join(log))
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    return requests, rps


def measure(instance: Instance, script: Path, duration: float, connections: int) -> None:
    user_before, sys_before = cpu_seconds(instance.pid)
    redis_before = sum(cpu_seconds(instance.redis_pid)) if instance.redis_pid else 0.0
    requests, rps = run_wrk(instance, script, duration, connections)
    user_after, sys_after = cpu_seconds(instance.pid)
    instance.user_us.append((user_after - user_before) * 1e6 / requests)
    instance.sys_us.append((sys_after - sys_before) * 1e6 / requests)
    if instance.redis_pid:
        instance.redis_us.append((sum(cpu_seconds(instance.redis_pid)) - redis_before) * 1e6 / requests)
    instance.rps.append(rps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=64)
    options = parser.parse_args()
    if not tools_present() or shutil.which("redis-server") is None:
        return 2
    processes: list[subprocess.Popen[bytes]] = []
    instances: list[Instance] = []
    with tempfile.TemporaryDirectory(prefix="guardproxy-idem-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        (workdir / "json60k.json").write_bytes(b"[]")
        script = workdir / "keys.lua"
        script.write_text(_SCRIPT)
        for enabled in ("true", "false"):
            (workdir / f"idem-{enabled}.yaml").write_text(_CONFIG.format(enabled=enabled))
        try:
            upstream_port, redis_port = free_port(), free_port()
            processes.append(start_nginx("nginx-upstream.conf", workdir, "upstream", upstream_port=upstream_port))
            redis = subprocess.Popen(
                ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL,
            )
            processes.append(redis)
            redis_env = {"GUARDPROXY_IDEMPOTENCY__REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}
            specs = [
                ("off", "false", "/pay", "unique", {}),
                ("other-route", "true", "/other", "unique", {}),
                ("no-key", "true", "/pay", "none", {}),
                ("memory", "true", "/pay", "unique", {}),
                ("redis", "true", "/pay", "unique", redis_env),
                ("redis-replay", "true", "/pay", "fixed", redis_env),
            ]
            for name, enabled, path, keys, store_env in specs:
                port = free_port()
                env = {**store_env, "GUARDPROXY_CONFIG": str(workdir / f"idem-{enabled}.yaml")}
                log = workdir / f"gp-{port}.log"
                process = start_guardproxy(f"http://127.0.0.1:{upstream_port}", port, free_port(), env, log)
                processes.append(process)
                instance = Instance(name, f"http://127.0.0.1:{port}{path}", process.pid, keys, log=log)
                instance.redis_pid = redis.pid if store_env else None
                instances.append(instance)
            wait_for(f"http://127.0.0.1:{upstream_port}/")
            for instance in instances:
                wait_for(instance.url.rsplit("/", 1)[0] + "/", timeout=60)
                if instance.keys == "fixed":
                    # The first request with the key runs; every later one is its replay.
                    httpx.post(instance.url, content=_BODY, headers={"Idempotency-Key": f"fixed-{instance.name}"})
                run_wrk(instance, script, 1, options.connections)  # warm-up: pool, caches, scripts
            for _ in range(options.rounds):
                for instance in instances:
                    measure(instance, script, options.duration, options.connections)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=30)

    print(f"wrk -t1 -c{options.connections} -d{options.duration:g}s, {options.rounds} interleaved rounds, median")
    print(f"{'instance':<16}{'user µs':>10}{'sys µs':>10}{'total µs':>10}{'redis µs':>10}{'req/s':>10}")
    for instance in instances:
        user = statistics.median(instance.user_us)
        system = statistics.median(instance.sys_us)
        total = statistics.median(u + s for u, s in zip(instance.user_us, instance.sys_us, strict=True))
        redis_us = f"{statistics.median(instance.redis_us):>10.1f}" if instance.redis_us else f"{'-':>10}"
        rps = statistics.median(instance.rps)
        print(f"{instance.name:<16}{user:>10.1f}{system:>10.1f}{total:>10.1f}{redis_us}{rps:>10.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
