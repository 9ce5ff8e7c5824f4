"""A process that reads Parquet and exits keeps its own exit code (no SIGABRT at exit).

pyarrow reading from Python-owned memory can abort the interpreter at exit ("terminate called
without an active exception", exit 134; apache/arrow#34314): ``imesh benchmark`` refusing a
render-settings mismatch right after reading the evaluation set's manifest exited 134 in 2 of
10 runs, and 14 of 20 short scripts reading that manifest from a file object aborted. Every
Parquet read goes through ``rendering.urls.parquet_from_bytes``, which decodes from an Arrow
buffer; these scripts read and exit at once, as the CLI's checks before Ray do.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.schema import write_parquet
from rendering.urls import parquet_from_bytes

RUNS = 6
"""Processes, one after another; with the former read (a Python file object) 7 of 12 such
processes reading the table of ``_table_file`` aborted, so six clean exits do not happen by
chance (0.4 ** 6 < 1 %)."""

PACKAGES = ("pipelines", "rendering", "filtering", "evaluation", "instantmesh", "training")
ROOT = Path(__file__).resolve().parent.parent


def _table_file(tmp_path: Path) -> Path:
    """16 string columns x 50 rows: more column chunks than a manifest, more reader tasks."""
    table = pa.table({f"c{j}": [f"value {i} {j}" for i in range(50)] for j in range(16)})
    path = tmp_path / "table.parquet"
    write_parquet(table, str(path))
    return path


def _exit_codes(script: str) -> list[tuple[int, str]]:
    runs = [
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        for _ in range(RUNS)
    ]
    return [(r.returncode, r.stderr) for r in runs]


def test_parquet_from_bytes_reads_the_table_and_its_columns(tmp_path: Path) -> None:
    path = _table_file(tmp_path)
    table = parquet_from_bytes(path.read_bytes())
    assert table.equals(pq.read_table(path))
    assert table.num_rows == 50 and table["c3"][7].as_py() == "value 7 3"
    only = parquet_from_bytes(path.read_bytes(), columns=["c1"])
    assert only.column_names == ["c1"]
    with pytest.raises(pa.ArrowInvalid):
        parquet_from_bytes(b"not parquet")


def test_reading_parquet_then_exiting_keeps_the_exit_code(tmp_path: Path) -> None:
    path = _table_file(tmp_path)
    script = (
        "import sys\n"
        "from pipelines.schema import read_parquet\n"
        f"assert read_parquet({str(path)!r}).num_rows == 50\n"
        "sys.exit(2)\n"  # as the CLI's one-line refusals do, straight after reading
    )
    results = _exit_codes(script)
    assert [rc for rc, _ in results] == [2] * RUNS, [err[-300:] for _, err in results]
    assert not any("terminate called" in err for _, err in results)


def test_no_package_reads_parquet_around_the_helper() -> None:
    """``pq.read_table`` / ``pq.ParquetFile`` / pandas' reader appear only in the helper."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            for needle in (
                "pq.read_table(",
                "pq.ParquetFile(",
                "pq.read_pandas(",
                "pd.read_parquet(",
            ):
                if needle in text and path != ROOT / "rendering" / "urls.py":
                    found.append(f"{path.relative_to(ROOT)}: {needle}")
    assert not found, found
