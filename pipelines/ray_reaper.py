"""Watchdog that removes a local embedded Ray when its driver dies without shutting it down.

Ray 2.60 leaves its per-node agents (``DashboardAgent``, ``RuntimeEnvAgent``) running after the
driver that started a local instance is SIGKILLed. ``ray_session`` starts this watchdog next to
every local instance: it polls the driver's pid and, once the driver is gone, kills every
process whose command line names that Ray session's directory. On a normal exit the driver shuts
Ray down itself and terminates the watchdog. A process belongs to the session when its command
line or one of its open files names the session directory. Linux only (reads ``/proc``); elsewhere it is not
started.

Usage: ``python -m pipelines.ray_reaper <driver_pid> <ray_session_dir>``
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

POLL_SECONDS = 0.5


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def session_pids(session_dir: str) -> list[int]:
    me = os.getpid()
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if session_dir in cmdline or _has_open_file_under(entry, session_dir):
            out.append(int(entry.name))
    return out


def _has_open_file_under(proc: Path, session_dir: str) -> bool:
    """Ray renames some processes (``ray::DashboardAgent``), so their command line no longer
    names the session; their open log files under the session directory still do."""
    try:
        fds = list((proc / "fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd).startswith(session_dir):
                return True
        except OSError:
            continue
    return False


def reap(session_dir: str, rounds: int = 5) -> int:
    killed = 0
    for _ in range(rounds):
        pids = session_pids(session_dir)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # it exited on its own meanwhile
                os.kill(pid, signal.SIGKILL)
                killed += 1
        time.sleep(0.2)
    return killed


def main(argv: list[str]) -> int:
    driver, session_dir = int(argv[0]), argv[1]
    if not session_dir or len(session_dir) < 8:
        return 2  # refuse to match on a too-generic string
    while alive(driver):
        time.sleep(POLL_SECONDS)
    reap(session_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
