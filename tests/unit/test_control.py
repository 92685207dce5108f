"""control.py: the pid file and `guardproxy reload`'s refusal to signal anything but guardproxy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from guardproxy import control
from tests.support.processes import wait_until


def test_a_process_that_is_not_guardproxy_is_never_signalled(capsys: pytest.CaptureFixture[str]) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        assert control.is_guardproxy(sleeper.pid) is False
        assert control.send_reload(sleeper.pid, None) == control.EXIT_NOT_SENT
        assert sleeper.poll() is None  # SIGHUP would have killed it
        assert "is not a running `guardproxy run`" in capsys.readouterr().err
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_guardproxy_command_line_is_recognised() -> None:
    # `python -m guardproxy run`, without starting a server: the process only sleeps.
    code = "import sys, time; time.sleep(30)"
    fake = subprocess.Popen([sys.executable, "-c", code, "guardproxy", "run"])
    try:
        # Until the child has exec'd, /proc shows the parent's command line (pytest's): a loaded
        # machine made the first look come too early.
        wait_until(lambda: control.is_guardproxy(fake.pid), timeout=10)
    finally:
        fake.kill()
        fake.wait()
    assert control.is_guardproxy(os.getpid()) is False  # pytest


def test_a_process_that_is_gone_is_reported_not_signalled(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert control.send_reload(gone.pid, None) == control.EXIT_NOT_SENT


@pytest.mark.parametrize("content", ["", "abc", "-5\n", "0"])
def test_a_pid_file_without_a_usable_id_is_a_usage_error(tmp_path: Path, content: str) -> None:
    pid_file = tmp_path / "gp.pid"
    pid_file.write_text(content)
    assert control.send_reload(None, pid_file) == control.EXIT_USAGE


def test_the_pid_file_is_removed_only_while_it_holds_this_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "gp.pid"
    control.write_pid_file(pid_file)
    assert pid_file.read_text() == f"{os.getpid()}\n"
    control.remove_pid_file(pid_file)
    assert not pid_file.exists()
    pid_file.write_text("1\n")  # another instance took the file over
    control.remove_pid_file(pid_file)
    assert pid_file.read_text() == "1\n"
    control.remove_pid_file(tmp_path / "absent.pid")  # no error
