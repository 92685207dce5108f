"""The benchmark: guardproxy (defaults) against nginx and a naive Starlette + httpx proxy.

All three sit in front of the same static nginx upstream and are measured with wrk in one
interleaved run (round after round, each proxy in turn), so machine noise hits them alike; the
report uses each proxy's median round. Figures are only meaningful as ratios within one run.
Besides req/s and p99, each proxy's CPU time per request (user and system, of its whole process
tree, from /proc) is reported: a steadier figure than req/s on a shared machine.

Usage: python bench/run.py [--rounds 3] [--duration 5] [--connections 64]
       [--variant 'NAME:GUARDPROXY_X=1,GUARDPROXY_Y=2' ...]   more guardproxy instances with
       other settings (environment variables; PYTHON=path picks the interpreter, PYTHONPATH=src
       of another checkout runs other code), measured in the same interleaved rounds
       [--fixed-rate 2000,5000 [--fixed-duration 5] [--fixed-clients 100]]   then, for nginx and
       every guardproxy, p50/p99/p99.9 latency added at those fixed request rates (open loop,
       h2load; see bench/fixed_rate.py), interleaved with runs straight at the upstream
Needs: wrk and nginx on PATH (Debian packages wrk, nginx-light), guardproxy installed; h2load
(nghttp2-client) for --fixed-rate.
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

from fixed_rate import PERCENTILES, RateResult, added, h2load_present
from fixed_rate import measure as measure_fixed_rate
from procstat import tree, usage

BENCH_DIR = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, timeout: float = 60.0) -> None:  # several Python starts on a busy machine
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
    pid: int
    rps: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    bytes_per_response: list[float] = field(default_factory=list)
    user_us: list[float] = field(default_factory=list)
    sys_us: list[float] = field(default_factory=list)
    fixed_rate: dict[int, RateResult] = field(default_factory=dict)

    def measure(self, duration: float, connections: int, headers: list[str]) -> None:
        """One wrk round, and the CPU time the proxy's processes spent on it."""
        pids = tree(self.pid)  # nginx answers from its worker, the master's child
        before = usage(pids)
        rps, p99, size, requests = run_wrk(self.url, duration, connections, headers)
        spent = usage(pids) - before
        self.rps.append(rps)
        self.p99_ms.append(p99)
        self.bytes_per_response.append(size)
        self.user_us.append(spent.user * 1e6 / requests)
        self.sys_us.append(spent.system * 1e6 / requests)


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(url: str, duration: float, connections: int, headers: list[str]) -> tuple[float, float, float, int]:
    """req/s, p99 in ms, bytes per response and the number of responses of one wrk run."""
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
    return rps, float(value) * _UNITS[unit], read / int(requests), int(requests)


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
    upstream: str, port: int, admin_port: int, env: dict[str, str], log: Path, *, log_pipe: bool = False
) -> subprocess.Popen[bytes]:
    """guardproxy with its log going to a file, as nginx's does (the terminal is no log
    collector), or with `log_pipe` to a pipe that `cat` empties into that file, as under Docker
    or systemd: the sink then writes in PIPE_BUF blocks instead of whole buffers."""
    env = dict(env)
    python = env.pop("PYTHON", sys.executable)  # a variant may run another interpreter (its venv's python)
    command = [
        python, "-m", "guardproxy", "run", "--upstream", upstream, "--listen", f"127.0.0.1:{port}",
        "--admin-listen", f"127.0.0.1:{admin_port}",
    ]  # fmt: skip
    environment = {**os.environ, "PYTHONOPTIMIZE": "1", **env}
    with log.open("ab") as output:
        if not log_pipe:
            return subprocess.Popen(command, env=environment, stdout=output)
        # cat exits at end of file, once guardproxy has exited.
        consumer = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=output)
        assert consumer.stdin is not None
        try:
            return subprocess.Popen(command, env=environment, stdout=consumer.stdin)
        finally:
            consumer.stdin.close()


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
    parser.add_argument(
        "--fixed-rate",
        type=lambda text: [int(rate) for rate in text.split(",")],
        default=[],
        metavar="RATE,...",
        help="also measure added latency at these request rates with h2load, e.g. 2000,5000",
    )
    parser.add_argument("--fixed-duration", type=float, default=5.0, help="seconds per fixed-rate run [5]")
    parser.add_argument("--fixed-clients", type=int, default=100, help="h2load connections per fixed-rate run [100]")
    return parser.parse_args()


def main() -> int:
    options = parse_options()
    if not tools_present() or (options.fixed_rate and not h2load_present()):
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
            upstream_process = start_nginx("nginx-upstream.conf", workdir, "upstream", **ports)
            processes.append(upstream_process)
            processes.append(start_nginx("nginx-proxy.conf", workdir, "proxy", **ports))
            processes.append(
                start_guardproxy(upstream, ports["guardproxy_port"], ports["admin_port"], {}, workdir / "gp.log")
            )
            targets = [
                Target("nginx", f"http://127.0.0.1:{ports['nginx_port']}{options.path}", processes[1].pid),
                Target("guardproxy", f"http://127.0.0.1:{ports['guardproxy_port']}{options.path}", processes[2].pid),
            ]
            for name, env in variants:
                port = free_port()
                processes.append(start_guardproxy(upstream, port, free_port(), env, workdir / f"gp-{port}.log"))
                url = f"http://127.0.0.1:{port}{options.path}"
                targets.append(Target(f"guardproxy {name}", url, processes[-1].pid))
            if not options.skip_naive:
                naive = [sys.executable, str(BENCH_DIR / "naive_proxy.py"), upstream, str(ports["naive_port"])]
                processes.append(subprocess.Popen(naive, stderr=subprocess.DEVNULL))  # its tracebacks are noise
                url = f"http://127.0.0.1:{ports['naive_port']}{options.path}"
                targets.append(Target("naive starlette+httpx", url, processes[-1].pid))
            wait_for(upstream)
            for target in targets:
                wait_for(target.url)
                run_wrk(
                    target.url, 1, options.connections, options.header
                )  # warm-up: pools, caches, JIT-free but still
            for _ in range(options.rounds):
                for target in targets:
                    target.measure(options.duration, options.connections, options.header)
            # Fixed rates: nginx and every guardproxy (the naive proxy cannot keep up with
            # 2k req/s), each round also straight at the upstream, for the added latency.
            direct = Target("upstream", f"{upstream}{options.path}", upstream_process.pid)
            paced = [direct] + [target for target in targets if not target.name.startswith("naive")]
            measure_fixed_rates(options, paced, workdir / "h2load.tsv")
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=30)

    report(options, targets)
    if options.fixed_rate:
        report_fixed_rate(options, paced)
    return 0


def report(options: argparse.Namespace, targets: list[Target]) -> None:
    nginx_rps = statistics.median(targets[0].rps)
    guard_rps = statistics.median(targets[1].rps)
    print(f"wrk -t1 -c{options.connections} -d{options.duration:g}s, {options.rounds} interleaved rounds, median")
    print(
        f"{'proxy':<24}{'req/s':>10}{'p99 ms':>10}{'vs nginx':>10}{'bytes/resp':>12}"
        f"{'user µs':>10}{'sys µs':>10}{'CPU µs':>10}"
    )
    for target in targets:
        rps = statistics.median(target.rps)
        p99 = statistics.median(target.p99_ms)
        size = statistics.median(target.bytes_per_response)
        user, system = statistics.median(target.user_us), statistics.median(target.sys_us)
        total = statistics.median(u + s for u, s in zip(target.user_us, target.sys_us, strict=True))
        print(
            f"{target.name:<24}{rps:>10.0f}{p99:>10.2f}{rps / nginx_rps:>10.2f}{size:>12.0f}"
            f"{user:>10.1f}{system:>10.1f}{total:>10.1f}"
        )
    print("(µs: CPU time per request of the proxy's processes, user and system)")
    naive = [target for target in targets if target.name.startswith("naive")]
    if naive:
        print(f"guardproxy / naive: {guard_rps / statistics.median(naive[0].rps):.1f}x")


def measure_fixed_rates(options: argparse.Namespace, paced: list[Target], log: Path) -> None:
    for rate in options.fixed_rate:
        for _ in range(options.rounds):
            for target in paced:
                result = target.fixed_rate.setdefault(rate, RateResult())
                measure_fixed_rate(target.url, rate, options.fixed_duration, options.fixed_clients, log, result)


def report_fixed_rate(options: argparse.Namespace, paced: list[Target]) -> None:
    direct = paced[0]
    print(
        f"\nfixed rate: h2load --h1 -c{options.fixed_clients} --rps=RATE/{options.fixed_clients} (connections "
        f"out of phase), {options.fixed_duration:g} s, {options.rounds} interleaved rounds, median; ms added "
        "over the same round straight at the upstream (its own figures: absolute)"
    )
    labels = "".join(f"{'p' + format(pct, 'g'):>10}" for pct in PERCENTILES)
    print(f"{'proxy':<24}{'rate':>8}{'achieved':>10}{labels}")
    for rate in options.fixed_rate:
        for target in paced:
            result = target.fixed_rate[rate]
            achieved = statistics.median(result.achieved)
            if target is direct:  # the reference: its own latency, not an added one
                figures = [statistics.median(p[index] for p in result.percentiles) for index in range(len(PERCENTILES))]
                name = "upstream, absolute"
            else:
                figures, name = added(result, direct.fixed_rate[rate]), target.name
            print(f"{name:<24}{rate:>8}{achieved:>10.0f}" + "".join(f"{figure:>10.2f}" for figure in figures))


if __name__ == "__main__":
    raise SystemExit(main())
