"""Parquet data contracts: object manifests and per-item status rows.

Manifest (input of every job): one row per object with at least

=========== ========= ===============================================================
column      type      meaning
=========== ========= ===============================================================
uid         string    unique object id; a safe path component (see ``storage.check_uid``)
source      string    ``objaverse`` | ``gso`` | ``omni3d`` | ``synthetic``
mesh_uri    string    URL/path of the mesh file (GLB, OBJ, ...)
sha256      string    hex digest of the mesh file (null when not computed/available)
=========== ========= ===============================================================

plus any source-specific metadata columns.

Status (output of every job stage): one row per item per stage, see ``STATUS_SCHEMA``.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.storage import atomic_write_bytes, filesystem
from rendering.urls import parquet_from_bytes

SOURCES = ("objaverse", "gso", "omni3d", "synthetic")
Status = Literal["ok", "failed", "skipped"]
STATUSES: tuple[Status, ...] = ("ok", "failed", "skipped")

MANIFEST_REQUIRED = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("mesh_uri", pa.string(), nullable=False),
        pa.field("sha256", pa.string()),
    ]
)

STATUS_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error_type", pa.string()),
        pa.field("error", pa.string()),
        pa.field("seconds", pa.float64()),
        pa.field("attempt", pa.int32(), nullable=False),
        pa.field("output_uri", pa.string()),
        pa.field("config_hash", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("finished_at", pa.timestamp("ms", tz="UTC"), nullable=False),
    ]
)
STATUS_COLUMNS = tuple(STATUS_SCHEMA.names)


class ManifestError(ValueError):
    """A manifest that does not satisfy the manifest contract."""


def validate_manifest(table: pa.Table, *, where: str = "manifest") -> pa.Table:
    """Check the manifest contract; return the table with required columns cast to their types.

    Raises ``ManifestError`` naming the problem: missing columns, null required values,
    duplicated uids or an unknown ``source``.
    """
    missing = [n for n in MANIFEST_REQUIRED.names if n not in table.column_names]
    if missing:
        raise ManifestError(f"{where}: missing required column(s) {', '.join(missing)}")
    for field in MANIFEST_REQUIRED:
        col = table.column(field.name)
        if not col.type.equals(field.type):
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise ManifestError(f"{where}: column {field.name} is not {field.type}") from e
            table = table.set_column(table.schema.get_field_index(field.name), field.name, col)
        if not field.nullable and col.null_count:
            raise ManifestError(f"{where}: column {field.name} has {col.null_count} null value(s)")
    uids = table.column("uid").to_pylist()
    if len(set(uids)) != len(uids):
        seen: set[str] = set()
        dups = sorted({u for u in uids if u in seen or seen.add(u)})  # type: ignore[func-returns-value]
        raise ManifestError(f"{where}: duplicated uid(s) {', '.join(dups[:5])}")
    bad = sorted(set(table.column("source").to_pylist()) - set(SOURCES))
    if bad:
        raise ManifestError(f"{where}: unknown source(s) {bad}; expected one of {SOURCES}")
    return table


def write_parquet(table: pa.Table, url: str) -> None:
    """Write a table as one Parquet file atomically (readers never see a partial file)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    atomic_write_bytes(url, buf.getvalue())


def read_parquet(url: str) -> pa.Table:
    """Read one Parquet file; a missing file is FileNotFoundError, a directory or a file that is
    not Parquet is a :class:`ManifestError` naming it."""
    fs, path = filesystem(url)
    if not fs.exists(path):
        raise FileNotFoundError(f"no Parquet file at {url}")
    if fs.isdir(path):
        raise ManifestError(f"{url} is a directory, expected a Parquet file")
    try:
        with fs.open(path, "rb") as f:
            data = f.read()
        return parquet_from_bytes(data)
    except (pa.ArrowInvalid, OSError) as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise ManifestError(f"{url} is not a readable Parquet file ({first})") from e


def read_manifest(url: str) -> pa.Table:
    return validate_manifest(read_parquet(url), where=url)


def write_manifest(table: pa.Table, url: str) -> None:
    write_parquet(validate_manifest(table, where=url), url)


def manifest_from_rows(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Build a validated manifest table from dict rows (metadata columns inferred)."""
    rows = list(rows)
    if not rows:
        return MANIFEST_REQUIRED.empty_table()
    return validate_manifest(pa.Table.from_pylist(rows))


def status_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    rows = list(rows)
    for r in rows:
        if r["status"] not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {r['status']!r}")
    return pa.Table.from_pylist(rows, schema=STATUS_SCHEMA)
