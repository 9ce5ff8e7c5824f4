"""Human-readable summaries of stage runs (rich tables on stderr/stdout).

Failures are shown twice: grouped by cause (error type + the start of the message with paths
and uids masked: how many objects share a cause) and one row per failed object with its full,
untruncated cause (which object, at which attempt, failed how). The per-object table shows the
first :data:`FAILED_SHOWN` rows and says how many more there are (``imesh status PATH --all``).
Cells are plain text, never rich markup (messages hold ``[at file.py:12]`` and paths).
"""

from __future__ import annotations

import collections
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pipelines.runner import StageReport, error_histogram, stage_dir

if TYPE_CHECKING:
    from evaluation.run_records import RunRecords

#: Width of tables written to something that is not a terminal (logs, CI, pipes): rich's
#: default of 80 columns truncates run names, verdicts and intervals there.
LOG_WIDTH = 160
FAILED_SHOWN = 20
"""Failed objects listed by default (``imesh status PATH --all`` lists every one)."""


def make_console(stderr: bool = False) -> Console:
    """The console every command prints through: the terminal's width on a terminal (or
    ``$COLUMNS``), :data:`LOG_WIDTH` otherwise."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if os.environ.get("COLUMNS") or stream.isatty() else LOG_WIDTH
    return Console(stderr=stderr, width=width)


def _short_outputs(outs: list[str]) -> list[str]:
    """Output roots relative to their common prefix (so equal stage names of different evaluation
    sets or runs can be told apart); unchanged when they share none."""
    try:
        common = os.path.commonpath(outs)
    except ValueError:  # mixed absolute/relative or URL schemes
        return outs
    if len(set(outs)) < 2 or common in ("", "/"):
        return outs
    return [os.path.relpath(o, common) for o in outs]


def stage_table(reports: list[StageReport]) -> Table:
    table = Table(title="stages", show_lines=False)
    columns = ("stage", "output", "objects", "ok", "failed", "skipped", "resumed", "seconds")
    for col in columns:
        table.add_column(col, justify="left" if col in ("stage", "output") else "right")
    for r, where in zip(reports, _short_outputs([r.out for r in reports]), strict=True):
        table.add_row(
            r.stage,
            where,
            str(r.total),
            str(r.ok),
            str(r.failed),
            str(r.counts.get("skipped", 0)),
            str(r.skipped_done),
            f"{r.seconds:.1f}",
        )
    return table


def errors_table(errors: list[tuple[str, int]], title: str = "failures by cause") -> Table:
    table = Table(title=title)
    table.add_column("count", justify="right")
    table.add_column("error")
    for text, n in errors:
        table.add_row(str(n), Text(text))
    return table


def failed_rows(status: pa.Table) -> list[dict[str, Any]]:
    """The failed rows of a compiled status table, by stage then uid."""
    failed = status.filter(pc.equal(status["status"], "failed"))
    columns = [
        c for c in ("uid", "stage", "attempt", "error_type", "error") if c in failed.schema.names
    ]
    rows = failed.select(columns).to_pylist()
    return sorted(rows, key=lambda r: (str(r.get("stage")), str(r["uid"])))


def failures_table(rows: list[dict[str, Any]], title: str = "failed objects") -> Table:
    """One row per failed object: uid, stage, attempt, error type and the full message."""
    table = Table(title=title)
    table.add_column("uid", overflow="fold")
    table.add_column("stage")
    table.add_column("attempt", justify="right")
    table.add_column("error type")
    table.add_column("error", overflow="fold", ratio=1)
    for r in rows:
        table.add_row(
            Text(str(r["uid"])),
            Text(str(r.get("stage") or "")),
            str(r.get("attempt") or ""),
            Text(str(r.get("error_type") or "")),
            Text(str(r.get("error") or "")),
        )
    return table


def print_failures(
    status: pa.Table,
    console: Console | None = None,
    limit: int | None = FAILED_SHOWN,
    where: str | None = None,
    title: str = "failed objects",
) -> int:
    """Print the failed objects of ``status`` (the first ``limit``; all with ``None``) and, when
    some are left out, how many and the command that lists them (``where``: the stage folder).
    Returns the number of failed objects."""
    console = console or make_console()
    rows = failed_rows(status)
    if not rows:
        return 0
    shown = rows if limit is None else rows[:limit]
    console.print(failures_table(shown, title=f"{title} ({len(shown)} of {len(rows)})"))
    left = len(rows) - len(shown)
    if left:
        command = f"imesh status {where or 'STAGE_DIR'} --all"
        console.print(Text(f"... and {left} more failed object(s): `{command}` lists them all"))
    return len(rows)


def print_report_failures(
    reports: Sequence[StageReport], console: Console | None = None, limit: int | None = FAILED_SHOWN
) -> None:
    """For each stage run with failures: failures by cause, then the failed objects."""
    from pipelines.schema import read_parquet

    console = console or make_console()
    for r in reports:
        if not r.failed:
            continue
        console.print(errors_table(r.errors, title=f"{r.stage}: failures by cause"))
        where = stage_dir(r.out, r.stage)
        print_failures(
            read_parquet(r.status_uri), console, limit, where, title=f"{r.stage}: failed objects"
        )


def print_status(
    status: pa.Table,
    console: Console | None = None,
    limit: int | None = FAILED_SHOWN,
    where: str | None = None,
) -> dict[str, Any]:
    """Print counts per status, failures by cause and the failed objects (the first ``limit``,
    all with ``None``; ``where`` names the stage folder in the hint) of a compiled status
    table."""
    console = console or make_console()
    counts = collections.Counter(status["status"].to_pylist())
    stages = sorted(set(status["stage"].to_pylist()))
    if status.num_rows == 0:
        console.print("no items in this status table (the stage ran on an empty manifest)")
        return {"counts": {}, "errors": []}
    console.print(
        f"stage(s) {', '.join(stages)}: {status.num_rows} items, "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    )
    errors = error_histogram(status)
    if errors:
        console.print(errors_table(errors))
        print_failures(status, console, limit, where)
    seconds = status.filter(pc.equal(status["status"], "ok"))["seconds"]
    if len(seconds):
        console.print(
            f"per-item seconds (ok): mean {pc.mean(seconds).as_py():.3f}, "
            f"max {pc.max(seconds).as_py():.3f}"
        )
    return {"counts": dict(counts), "errors": errors}


def print_lpips_hints(runs: Sequence[RunRecords], console: Console | None = None) -> list[str]:
    """Say, once per missing LPIPS backbone of ``runs``, which file is needed, where it goes
    and the one command that installs it from a local copy (an LPIPS column that reads ``n/a``
    for lack of weights). Returns the lines printed."""
    from evaluation.tables import lpips_hints

    lines = lpips_hints(runs)
    console = console or make_console()
    for line in lines:
        console.print(f"LPIPS n/a: {line}", markup=False, highlight=False, soft_wrap=True)
    return lines
