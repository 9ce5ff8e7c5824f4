"""Start (or join) Ray quietly: embedded local Ray by default, a cluster with an address.

``ray_session(address=None)`` starts a local embedded Ray (``ray.init()`` with no address), sized
to the machine's CPUs unless told otherwise, with the dashboard off and worker logs not forwarded,
and shuts it down on exit. With ``address`` (or ``RAY_ADDRESS`` in the environment) it connects
to an existing cluster instead and leaves that cluster running. If Ray is already initialised in
this process (tests use one session-wide instance) it is reused and left as it was.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


def quiet_ray_data() -> None:
    """Silence Ray Data's own progress bars and execution logs (we draw our own progress)."""
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.ERROR)
    logging.getLogger("ray").setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    ctx.verbose_stats_logs = False


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    # Ray's C++ core writes its errors to stderr too, among them a notice about "actor
    # constructor arguments in the object store" for every Ray Data actor pool (Ray Data always
    # passes them so): keep only fatal core messages unless the user chose a level.
    own_log_level = "RAY_BACKEND_LOG_LEVEL" not in os.environ
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    import ray

    if ray.is_initialized():
        quiet_ray_data()
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, object] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.ERROR,
        "configure_logging": True,
    }
    if address is None:
        kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
    if address is not None:
        check_reachable(address)
    try:
        with _dropping_stderr_lines(LOG_LEVEL_NOTICE if own_log_level else None):
            ray.init(address=address, **kwargs)  # type: ignore[arg-type]
    except ConnectionError as e:
        from pipelines.configs import ConfigError

        raise ConfigError(
            f"cannot connect to a Ray cluster at address {address!r} ({e}); start one with "
            "`ray start --head`, or leave out --address / RAY_ADDRESS for a local Ray"
        ) from e
    reaper = _start_reaper() if address is None else None
    try:
        quiet_ray_data()
        yield
    finally:
        ray.shutdown()
        if reaper is not None:
            reaper.terminate()
            reaper.wait(timeout=10)


LOG_LEVEL_NOTICE = b"Set ray log level from environment variable RAY_BACKEND_LOG_LEVEL"
"""What Ray's core prints (``logging.cc:303``, level INFO, before applying the level it reads)
on stderr when it starts in a process with ``RAY_BACKEND_LOG_LEVEL`` set."""


@contextmanager
def _dropping_stderr_lines(marker: bytes | None) -> Iterator[None]:
    """While the block runs, file descriptor 2 goes to a temporary file; afterwards everything
    written there is passed on to stderr except the lines containing ``marker``. For
    ``ray.init()``: the C++ core writes to the descriptor, not to ``sys.stderr``, and the Ray
    processes it starts write to their own log files, so nothing else is held back."""
    if marker is None:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().splitlines(keepends=True) if marker not in line]
            data = b"".join(kept)
            while data:
                data = data[os.write(2, data) :]


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail fast on a ``host:port`` (or ``ray://host:port``) address nobody answers on: Ray's own
    connection loop retries for minutes. ``auto`` / ``local`` and addresses without a port are
    left to Ray."""
    import socket

    from pipelines.configs import ConfigError

    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise ConfigError(
            f"no Ray cluster answers at {address} ({e or 'timed out'} after <= {timeout_s:g} s); "
            "check --address / RAY_ADDRESS, or leave both out for a local Ray"
        ) from e


def _start_reaper() -> subprocess.Popen[bytes] | None:
    """Start the watchdog that cleans up this local Ray if the driver is killed (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    import ray

    node = ray._private.worker._global_node
    session_dir = node.get_session_dir_path() if node is not None else None
    if not session_dir:
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.ray_reaper", str(os.getpid()), session_dir],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
