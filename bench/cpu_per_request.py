"""CPU time per request of the guardproxy process: steadier than req/s on a shared machine.

Each guardproxy instance sits in front of a static nginx upstream. For every round, wrk runs at a
fixed concurrency against each instance in turn (interleaved, like run.py), and the process's
user and system CPU time (/proc/PID/stat utime and stime) before and after are divided by the
requests wrk completed. The report is the median round per instance. A lower figure is a
cheaper request whatever else the machine is doing; req/s is printed only as a sanity check.

Usage: python bench/cpu_per_request.py [--rounds 5] [--duration 4] [--connections 64]
       [--variant 'NAME:GUARDPROXY_X=1,PYTHONPATH=/other/checkout/src' ...]
The first instance runs with the defaults; each --variant adds one (same syntax as run.py).
Needs: wrk and nginx on PATH, Linux (/proc).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from run import free_port, parse_variant, start_guardproxy, start_nginx, tools_present, wait_for

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Instance:
    name: str
    url: str
    pid: int
    user_us: list[float] = field(default_factory=list)
    sys_us: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of a process so far. The command name (field 2) may contain
    spaces, so fields are counted from after its closing parenthesis."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) / _CLOCK_TICKS, int(fields[12]) / _CLOCK_TICKS


def run_wrk(url: str, duration: float, connections: int) -> tuple[int, float]:
    output = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{int(duration)}s", url], check=True, capture_output=True, text=True
    ).stdout
    if "Non-2xx" in output:
        raise RuntimeError(f"{url}: error responses during the run")
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    return requests, rps


def measure(instance: Instance, duration: float, connections: int) -> None:
    user_before, sys_before = cpu_seconds(instance.pid)
    requests, rps = run_wrk(instance.url, duration, connections)
    user_after, sys_after = cpu_seconds(instance.pid)
    instance.user_us.append((user_after - user_before) * 1e6 / requests)
    instance.sys_us.append((sys_after - sys_before) * 1e6 / requests)
    instance.rps.append(rps)


def parse_options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--path", default="/")
    parser.add_argument("--skip-defaults", action="store_true", help="measure only the --variant instances")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:ENV=VALUE,...")
    return parser.parse_args()


def main() -> int:
    options = parse_options()
    if not tools_present():
        return 2
    specs = [] if options.skip_defaults else [("defaults", {})]
    specs += [parse_variant(spec) for spec in options.variant]
    upstream_port = free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    processes: list[subprocess.Popen[bytes]] = []
    instances: list[Instance] = []
    with tempfile.TemporaryDirectory(prefix="guardproxy-cpu-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        (workdir / "json60k.json").write_bytes(b"[]")
        try:
            processes.append(start_nginx("nginx-upstream.conf", workdir, "upstream", upstream_port=upstream_port))
            for name, env in specs:
                port = free_port()
                process = start_guardproxy(upstream, port, free_port(), env, workdir / f"gp-{port}.log")
                processes.append(process)
                instances.append(Instance(name, f"http://127.0.0.1:{port}{options.path}", process.pid))
            wait_for(upstream)
            for instance in instances:
                wait_for(instance.url)
                run_wrk(instance.url, 1, options.connections)  # warm-up: pool, caches
            for _ in range(options.rounds):
                for instance in instances:
                    measure(instance, options.duration, options.connections)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=30)

    print(f"wrk -t1 -c{options.connections} -d{options.duration:g}s, {options.rounds} interleaved rounds, median")
    print(f"{'guardproxy':<24}{'user µs':>10}{'sys µs':>10}{'total µs':>10}{'req/s':>10}")
    for instance in instances:
        user = statistics.median(instance.user_us)
        system = statistics.median(instance.sys_us)
        total = statistics.median(u + s for u, s in zip(instance.user_us, instance.sys_us, strict=True))
        print(f"{instance.name:<24}{user:>10.1f}{system:>10.1f}{total:>10.1f}{statistics.median(instance.rps):>10.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
