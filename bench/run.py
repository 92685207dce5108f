"""The benchmark: guardproxy (defaults) against nginx and a naive Starlette + httpx proxy.

All three sit in front of the same static nginx upstream and are measured with wrk in one
interleaved run (round after round, each proxy in turn), so machine noise hits them alike; the
report uses each proxy's median round. Figures are only meaningful as ratios within one run.

Usage: python bench/run.py [--rounds 3] [--duration 5] [--connections 64]
       [--variant 'NAME:GUARDPROXY_X=1,GUARDPROXY_Y=2' ...]   more guardproxy instances with
       other settings (environment variables; PYTHON=path picks the interpreter, PYTHONPATH=src
       of another checkout runs other code), measured in the same interleaved rounds
Needs: wrk and nginx on PATH (Debian packages wrk, nginx-light), guardproxy installed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

BENCH_DIR = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up within {timeout}s")


@dataclass
class Target:
    name: str
    url: str
    rps: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    bytes_per_response: list[float] = field(default_factory=list)


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(url: str, duration: float, connections: int, headers: list[str]) -> tuple[float, float, float]:
    header_args = [arg for header in headers for arg in ("-H", header)]
    output = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{int(duration)}s", "--latency", *header_args, url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", output, re.M).groups()  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        raise RuntimeError(f"{url}: {non_2xx.group(1)} error responses during the run")
    requests, amount, size_unit = re.search(r"(\d+) requests in [\d.]+\w+, ([\d.]+)(B|KB|MB|GB) read", output).groups()  # type: ignore[union-attr]
    read = float(amount) * {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[size_unit]
    return rps, float(value) * _UNITS[unit], read / int(requests)


def start_nginx(template: str, workdir: Path, name: str, **ports: int) -> subprocess.Popen[bytes]:
    config = workdir / f"{name}.conf"
    config.write_text((BENCH_DIR / template).read_text().format(workdir=workdir, **ports))
    return subprocess.Popen(["nginx", "-c", str(config), "-p", str(workdir)], stderr=subprocess.DEVNULL)


def sample_json(size: int) -> bytes:
    """A JSON array of API-like records, about `size` bytes: what a list endpoint returns."""
    records = []
    index = 0
    while sum(map(len, records)) < size:
        active = "true" if index % 3 == 0 else "false"
        records.append(
            f'{{"id":{index},"name":"user-{index}","email":"user{index}@example.com","active":{active},'
            f'"score":{index * 7 % 1000},"tags":["alpha","beta"]}}'
        )
        index += 1
    return ("[" + ",".join(records) + "]").encode()


def tools_present() -> bool:
    """wrk and nginx are on PATH, or say which is missing."""
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is not on PATH (apt-get install wrk nginx-light)", file=sys.stderr)
            return False
    return True


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    name, _, assignments = spec.partition(":")
    env = dict(item.split("=", 1) for item in assignments.split(",") if item)
    return name, env


def start_guardproxy(
    upstream: str, port: int, admin_port: int, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    env = dict(env)
    python = env.pop("PYTHON", sys.executable)  # a variant may run another interpreter (its venv's python)
    command = [
        python, "-m", "guardproxy", "run", "--upstream", upstream, "--listen", f"127.0.0.1:{port}",
        "--admin-listen", f"127.0.0.1:{admin_port}",
    ]  # fmt: skip
    # Its access log goes to a file, as nginx's does: the terminal is no log collector.
    with log.open("ab") as output:
        return subprocess.Popen(command, env={**os.environ, "PYTHONOPTIMIZE": "1", **env}, stdout=output)


def parse_options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--skip-naive", action="store_true", help="leave out the Starlette + httpx proxy")
    parser.add_argument("--path", default="/", help="request path [/]; /json60k is a 60 KB JSON document")
    parser.add_argument(
        "--header", action="append", default=[], help="request header for wrk, e.g. 'Accept-Encoding: gzip'"
    )
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:ENV=VALUE,...")
    return parser.parse_args()


def main() -> int:
    options = parse_options()
    if not tools_present():
        return 2

    names = ("upstream_port", "nginx_port", "guardproxy_port", "admin_port", "naive_port")
    ports = {name: free_port() for name in names}
    variants = [parse_variant(spec) for spec in options.variant]
    upstream = f"http://127.0.0.1:{ports['upstream_port']}"
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="guardproxy-bench-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)  # nginx workers (user nobody) serve the sample document from here
        (workdir / "json60k.json").write_bytes(sample_json(60_000))
        try:
            processes.append(start_nginx("nginx-upstream.conf", workdir, "upstream", **ports))
            processes.append(start_nginx("nginx-proxy.conf", workdir, "proxy", **ports))
            processes.append(
                start_guardproxy(upstream, ports["guardproxy_port"], ports["admin_port"], {}, workdir / "gp.log")
            )
            targets = [
                Target("nginx", f"http://127.0.0.1:{ports['nginx_port']}{options.path}"),
                Target("guardproxy", f"http://127.0.0.1:{ports['guardproxy_port']}{options.path}"),
            ]
            for name, env in variants:
                port = free_port()
                processes.append(start_guardproxy(upstream, port, free_port(), env, workdir / f"gp-{port}.log"))
                targets.append(Target(f"guardproxy {name}", f"http://127.0.0.1:{port}{options.path}"))
            if not options.skip_naive:
                naive = [sys.executable, str(BENCH_DIR / "naive_proxy.py"), upstream, str(ports["naive_port"])]
                processes.append(subprocess.Popen(naive, stderr=subprocess.DEVNULL))  # its tracebacks are noise
                targets.append(Target("naive starlette+httpx", f"http://127.0.0.1:{ports['naive_port']}{options.path}"))
            wait_for(upstream)
            for target in targets:
                wait_for(target.url)
                run_wrk(
                    target.url, 1, options.connections, options.header
                )  # warm-up: pools, caches, JIT-free but still
            for _ in range(options.rounds):
                for target in targets:
                    rps, p99, size = run_wrk(target.url, options.duration, options.connections, options.header)
                    target.rps.append(rps)
                    target.p99_ms.append(p99)
                    target.bytes_per_response.append(size)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=30)

    nginx_rps = statistics.median(targets[0].rps)
    guard_rps = statistics.median(targets[1].rps)
    print(f"wrk -t1 -c{options.connections} -d{options.duration:g}s, {options.rounds} interleaved rounds, median")
    print(f"{'proxy':<24}{'req/s':>10}{'p99 ms':>10}{'vs nginx':>10}{'bytes/resp':>12}")
    for target in targets:
        rps = statistics.median(target.rps)
        p99 = statistics.median(target.p99_ms)
        size = statistics.median(target.bytes_per_response)
        print(f"{target.name:<24}{rps:>10.0f}{p99:>10.2f}{rps / nginx_rps:>10.2f}{size:>12.0f}")
    naive = [target for target in targets if target.name.startswith("naive")]
    if naive:
        print(f"guardproxy / naive: {guard_rps / statistics.median(naive[0].rps):.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
