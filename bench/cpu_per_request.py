"""CPU time per request of the guardproxy process: steadier than req/s on a shared machine.

Each guardproxy instance sits in front of a static nginx upstream. For every round, wrk runs at a
fixed concurrency against each instance in turn (interleaved, like run.py), and the process's
user and system CPU time and minor page faults (/proc/PID/stat utime, stime, minflt) before and
after are divided by the requests wrk completed. The report is the median round per instance. A
lower figure is a cheaper request whatever else the machine is doing; req/s is printed only as a
sanity check.

Usage: python bench/cpu_per_request.py [--rounds 5] [--duration 4] [--connections 64]
       [--variant 'NAME:GUARDPROXY_X=1,PYTHONPATH=/other/checkout/src' ...]
       [--log-pipe]   guardproxy's stdout is a pipe (emptied by cat), as under Docker
       [--strace]     one more round per instance under `strace -c -f`: system calls per request
                      (strace slows the process down: those figures are counts, not times)
The first instance runs with the defaults; each --variant adds one (same syntax as run.py).
Needs: wrk and nginx on PATH, Linux (/proc); strace for --strace.
"""

from __future__ import annotations

import argparse
import re
import signal
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from procstat import tree, usage
from run import free_port, parse_variant, start_guardproxy, start_nginx, tools_present, wait_for


@dataclass
class Instance:
    name: str
    url: str
    pid: int
    user_us: list[float] = field(default_factory=list)
    sys_us: list[float] = field(default_factory=list)
    faults: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    syscalls: Counter[str] = field(default_factory=Counter)  # per request, from the strace round


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
    pids = tree(instance.pid)
    before = usage(pids)
    requests, rps = run_wrk(instance.url, duration, connections)
    spent = usage(pids) - before
    instance.user_us.append(spent.user * 1e6 / requests)
    instance.sys_us.append(spent.system * 1e6 / requests)
    instance.faults.append(spent.minor_faults / requests)
    instance.rps.append(rps)


_STRACE_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", re.M)


def count_syscalls(instance: Instance, duration: float, connections: int, workdir: Path) -> None:
    """System calls per request, over one wrk run with strace attached to the whole process."""
    output = workdir / f"strace-{instance.pid}.txt"
    tracer = subprocess.Popen(
        ["strace", "-c", "-f", "-o", str(output), "-p", str(instance.pid)], stderr=subprocess.DEVNULL
    )
    time.sleep(0.5)  # attached
    requests, _ = run_wrk(instance.url, duration, connections)
    tracer.send_signal(signal.SIGINT)
    tracer.wait(timeout=30)
    for calls, name in _STRACE_ROW.findall(output.read_text()):
        instance.syscalls[name] = int(calls) / requests


def parse_options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--path", default="/")
    parser.add_argument("--skip-defaults", action="store_true", help="measure only the --variant instances")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:ENV=VALUE,...")
    parser.add_argument("--log-pipe", action="store_true", help="guardproxy's stdout is a pipe, not a file")
    parser.add_argument("--strace", action="store_true", help="count system calls per request in one more round")
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
                log = workdir / f"gp-{port}.log"
                process = start_guardproxy(upstream, port, free_port(), env, log, log_pipe=options.log_pipe)
                processes.append(process)
                instances.append(Instance(name, f"http://127.0.0.1:{port}{options.path}", process.pid))
            wait_for(upstream)
            for instance in instances:
                wait_for(instance.url)
                run_wrk(instance.url, 1, options.connections)  # warm-up: pool, caches
            for _ in range(options.rounds):
                for instance in instances:
                    measure(instance, options.duration, options.connections)
            if options.strace:
                for instance in instances:
                    count_syscalls(instance, options.duration, options.connections, workdir)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=30)

    report(options, instances)
    return 0


def report(options: argparse.Namespace, instances: list[Instance]) -> None:
    print(f"wrk -t1 -c{options.connections} -d{options.duration:g}s, {options.rounds} interleaved rounds, median")
    print(f"{'guardproxy':<24}{'user µs':>10}{'sys µs':>10}{'total µs':>10}{'faults':>10}{'req/s':>10}")
    for instance in instances:
        user = statistics.median(instance.user_us)
        system = statistics.median(instance.sys_us)
        total = statistics.median(u + s for u, s in zip(instance.user_us, instance.sys_us, strict=True))
        faults = statistics.median(instance.faults)
        rps = statistics.median(instance.rps)
        print(f"{instance.name:<24}{user:>10.1f}{system:>10.1f}{total:>10.1f}{faults:>10.3f}{rps:>10.0f}")
    print("(faults: minor page faults per request; every round's total µs:", end="")
    for instance in instances:
        rounds = ", ".join(f"{u + s:.0f}" for u, s in zip(instance.user_us, instance.sys_us, strict=True))
        print(f" {instance.name} [{rounds}]", end="")
    print(")")
    if options.strace:
        names = sorted({name for instance in instances for name in instance.syscalls})
        print("system calls per request (strace -c -f, one round):")
        print(f"{'syscall':<24}" + "".join(f"{instance.name[:14]:>16}" for instance in instances))
        for name in sorted(names, key=lambda n: -max(i.syscalls[n] for i in instances)):
            if max(instance.syscalls[name] for instance in instances) >= 0.001:
                print(f"{name:<24}" + "".join(f"{instance.syscalls[name]:>16.3f}" for instance in instances))


if __name__ == "__main__":
    raise SystemExit(main())
