"""Human-readable summaries of stage runs (rich tables on stderr/stdout)."""

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

from pipelines.runner import StageReport, error_histogram

if TYPE_CHECKING:
    from evaluation.run_records import RunRecords

#: Width of tables written to something that is not a terminal (logs, CI, pipes): rich's
#: default of 80 columns truncates run names, verdicts and intervals there.
LOG_WIDTH = 160


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
        table.add_row(str(n), text)
    return table


def print_status(status: pa.Table, console: Console | None = None) -> dict[str, Any]:
    """Print counts per status and the error histogram of a compiled status table."""
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
