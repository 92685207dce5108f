"""Controlling a running guardproxy from the command line: the pid file `guardproxy run
--pid-file` keeps, and `guardproxy reload`, which sends it SIGHUP (server/reload.py).

A reload is only sent to a process that is guardproxy's main process: a stale pid file or a
mistyped ID must not send SIGHUP to something else (most programs die of it, and PID 1 on a host
is the init system)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path

EXIT_USAGE = 2
EXIT_NOT_SENT = 1


def write_pid_file(path: Path) -> None:
    path.write_text(f"{os.getpid()}\n", encoding="utf-8")


def remove_pid_file(path: Path) -> None:
    """Remove the pid file at exit, unless another process has written its own ID there since."""
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text(encoding="utf-8").strip()) == os.getpid():
            path.unlink()


def is_guardproxy(pid: int) -> bool | None:
    """Whether `pid` runs guardproxy's command (`guardproxy run`, `python -m guardproxy run`);
    None where /proc cannot tell."""
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False if Path("/proc/self/cmdline").exists() else None
    except OSError:
        return None
    return b"run" in arguments and any(
        part == b"guardproxy" or part.endswith(b"/guardproxy") for part in arguments[: arguments.index(b"run")]
    )


def send_reload(pid: int | None, pid_file: Path | None) -> int:
    """`guardproxy reload`: SIGHUP to the process `pid` names, or the one in `pid_file`."""
    if pid_file is not None:
        try:
            pid = int(pid_file.read_text(encoding="utf-8").strip())
        except (OSError, ValueError) as exc:
            print(f"guardproxy: cannot read a process ID from {str(pid_file)!r}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if pid is None or pid <= 0:
        print(f"guardproxy: {pid} is not a process ID", file=sys.stderr)
        return EXIT_USAGE
    if is_guardproxy(pid) is False:
        print(f"guardproxy: process {pid} is not a running `guardproxy run`; nothing sent", file=sys.stderr)
        return EXIT_NOT_SENT
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        print(f"guardproxy: cannot signal process {pid}: {exc.strerror}", file=sys.stderr)
        return EXIT_NOT_SENT
    print(f"guardproxy: reload requested (SIGHUP sent to {pid}); its log says what was applied")
    return 0
