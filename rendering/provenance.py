"""Where outputs came from: the package and library versions and the git commit of the source.

One implementation for everything that records provenance: the ``_provenance`` block of every
resolved job config (:func:`provenance`) and a run's ``run.json`` (``versions``, ``git_commit``).
Versions are read from installed distribution metadata, so nothing heavy (torch) is imported to
learn them. This module sits in the lowest library package so that the libraries (which never
import the job layer) and the job layer share it.
"""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

PACKAGE = "instantmesh-pipeline"
"""The distribution name of this project."""

__all__ = ["PACKAGE", "dist_version", "git_commit", "provenance", "versions"]


def dist_version(name: str = PACKAGE) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """``{"python", "torch", "package"}`` versions (None for what is not installed): the
    ``versions`` of a run's ``run.json``."""
    return {
        "python": platform.python_version(),
        "torch": dist_version("torch"),
        "package": dist_version(PACKAGE),
    }


def git_commit() -> str | None:
    """The git commit of the source tree this package runs from, if it is a git checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance() -> dict[str, Any]:
    """Package, version, git commit, Python and torch versions, platform, command line and
    time (UTC): the ``_provenance`` block written beside every resolved job config."""
    found = versions()
    return {
        "package": PACKAGE,
        "version": found["package"],
        "git_commit": git_commit(),
        "python": found["python"],
        "torch": found["torch"],
        "platform": platform.platform(),
        "command": " ".join(sys.argv),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
