"""`imesh status` and the demo summary name every failed object with its full cause."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pyarrow as pa
import pytest
from rich.console import Console

from pipelines.cli import main
from pipelines.runner import StageReport, error_histogram
from pipelines.schema import STATUS_COLUMNS, STATUS_SCHEMA, write_parquet
from pipelines.summary import (
    FAILED_SHOWN,
    print_failures,
    print_report_failures,
    print_status,
)

N_FAILED = FAILED_SHOWN + 5


def _message(i: int) -> str:
    """A long message with a path, a uid-like hash and a source location (no two alike)."""
    return (
        f"/data/objaverse/glbs/000-{i:03d}/{i:032x}.glb: truncated GLB, the buffer view {i} "
        f"ends at byte {1000 + i} of {900 + i} [at mesh_io.py:{100 + i}]; "
        + "the loader gave up after reading every chunk header "
        * 3
    ).strip()


def _status_table(stage: str = "inspect") -> pa.Table:
    rows = []
    for i in range(N_FAILED):
        rows.append(
            {
                "uid": f"obj_{i:03d}",
                "stage": stage,
                "status": "failed",
                "error_type": "MeshLoadError",
                "error": _message(i),
                "seconds": 0.1,
                "attempt": 1 + i % 3,
                "output_uri": None,
                "config_hash": "abc",
            }
        )
    for i in range(4):
        rows.append(
            {
                "uid": f"good_{i}",
                "stage": stage,
                "status": "ok",
                "error_type": None,
                "error": None,
                "seconds": 0.2,
                "attempt": 1,
                "output_uri": f"/out/{i}",
                "config_hash": "abc",
            }
        )
    schema = pa.schema([STATUS_SCHEMA.field(c) for c in STATUS_COLUMNS])
    now = dt.datetime.now(dt.UTC)
    return pa.Table.from_pylist(
        [{**r, "run_id": "r1", "finished_at": now} for r in rows],
        schema=schema,
    )


def _console(width: int = 600) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=width, color_system=None), buf


def test_status_lists_failed_objects_with_their_full_cause_and_says_how_many_more() -> None:
    console, buf = _console()
    status = _status_table()
    summary = print_status(status, console, where="job/inspect")
    text = buf.getvalue()
    assert summary["counts"] == {"failed": N_FAILED, "ok": 4}
    # grouping by cause is kept: paths and uids masked, one bucket for all of them
    assert summary["errors"] == error_histogram(status)
    assert "failures by cause" in text and "<path>" in text
    # the first FAILED_SHOWN objects by uid, each with its full message, attempt and type
    for i in range(FAILED_SHOWN):
        line = next(ln for ln in text.splitlines() if f"obj_{i:03d}" in ln)
        assert _message(i) in line, line
        assert "MeshLoadError" in line and f" {1 + i % 3} " in line
    for i in range(FAILED_SHOWN, N_FAILED):
        assert f"obj_{i:03d}" not in text
    assert f"({FAILED_SHOWN} of {N_FAILED})" in text
    assert "... and 5 more failed object(s): `imesh status job/inspect --all`" in text
    assert "good_0" not in text


def test_all_lists_every_failed_object() -> None:
    console, buf = _console()
    assert print_failures(_status_table(), console, limit=None) == N_FAILED
    text = buf.getvalue()
    assert all(_message(i) in text for i in range(N_FAILED))
    assert "more failed" not in text


def test_cause_text_is_not_read_as_markup() -> None:
    """Messages hold ``[at file.py:12]``: rich markup would silently drop it."""
    console, buf = _console()
    print_status(_status_table(), console)
    assert "[at mesh_io.py:100]" in buf.getvalue()
    assert error_histogram(_status_table())[0][0].endswith("…")


def test_imesh_status_all_and_its_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "600")
    stage = tmp_path / "job" / "inspect"
    write_parquet(_status_table(), str(stage / "status.parquet"))
    assert main(["status", str(stage)]) == 0
    out = capsys.readouterr().out
    assert sum(f"obj_{i:03d}" in out for i in range(N_FAILED)) == FAILED_SHOWN
    assert f"imesh status {stage} --all" in out
    assert main(["status", str(stage / "status.parquet"), "--all"]) == 0
    out = capsys.readouterr().out
    assert all(_message(i) in out for i in range(N_FAILED))
    assert main(["status", "--help"]) == 0
    usage = capsys.readouterr().out
    assert "imesh status [-h] PATH" in usage and "STR" not in usage and "--all" in usage


def test_demo_summary_names_the_failed_objects_of_each_stage(tmp_path: Path) -> None:
    reports = []
    for stage, n_failed in (("inspect", N_FAILED), ("render", 0), ("filter-files", 2)):
        table = _status_table(stage).slice(N_FAILED - n_failed)
        sdir = tmp_path / stage
        write_parquet(table, str(sdir / "status.parquet"))
        counts = {"failed": n_failed, "ok": 4} if n_failed else {"ok": 4}
        reports.append(
            StageReport(
                stage=stage,
                out=str(tmp_path),
                total=table.num_rows,
                skipped_done=0,
                processed=table.num_rows,
                counts=counts,
                errors=error_histogram(table),
                seconds=1.0,
                status_uri=str(sdir / "status.parquet"),
                results_uri=str(sdir / "results.parquet"),
            )
        )
    console, buf = _console()
    print_report_failures(reports, console)
    text = buf.getvalue()
    assert "inspect: failures by cause" in text and "filter-files: failures by cause" in text
    assert "render:" not in text
    assert f"inspect: failed objects ({FAILED_SHOWN} of {N_FAILED})" in text
    assert f"imesh status {tmp_path / 'inspect'} --all" in text
    assert "filter-files: failed objects (2 of 2)" in text
    for i in (N_FAILED - 2, N_FAILED - 1):
        assert _message(i) in text
