"""What a process tree has cost so far, from /proc: CPU time (user, system) and minor page faults.

Figures per request come from the difference between two readings around a measured run. A
process tree, because nginx serves from a worker process that is the master's child, and a
child's time only reaches its parent's figures once it has exited.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Usage:
    user: float  # seconds
    system: float  # seconds
    minor_faults: int

    def __sub__(self, other: Usage) -> Usage:
        return Usage(self.user - other.user, self.system - other.system, self.minor_faults - other.minor_faults)


def _fields(pid: int) -> list[str]:
    """/proc/PID/stat from field 3 on: the command name (field 2) may contain spaces, so the
    fields are counted from after its closing parenthesis."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()


def tree(pid: int) -> list[int]:
    """`pid` and its descendants, alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(_fields(int(entry))[1])
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def usage(pids: list[int]) -> Usage:
    user = system = 0.0
    faults = 0
    for pid in pids:
        fields = _fields(pid)
        faults += int(fields[7])  # minflt
        user += int(fields[11]) / _CLOCK_TICKS
        system += int(fields[12]) / _CLOCK_TICKS
    return Usage(user, system, faults)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of `pid` and its descendants so far."""
    spent = usage(tree(pid))
    return spent.user, spent.system
