from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pytest
import yaml

from pipelines.configs import (
    NO_HASH,
    ConfigError,
    config_hash,
    load_config,
    write_resolved_config,
)
from pipelines.schema import (
    STATUS_COLUMNS,
    ManifestError,
    manifest_from_rows,
    read_manifest,
    status_table,
    write_manifest,
    write_parquet,
)


def _row(uid: str, **kw: object) -> dict[str, object]:
    return {"uid": uid, "source": "synthetic", "mesh_uri": f"/m/{uid}.glb", "sha256": None, **kw}


def test_manifest_roundtrip_keeps_metadata_columns(tmp_path: Path) -> None:
    table = manifest_from_rows([_row("a", tags=["x"]), _row("b", tags=[])])
    write_manifest(table, str(tmp_path / "m.parquet"))
    back = read_manifest(str(tmp_path / "m.parquet"))
    assert back["uid"].to_pylist() == ["a", "b"]
    assert back["tags"].to_pylist() == [["x"], []]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"uid": "a", "source": "gso"}], "missing required column"),
        ([_row("a"), _row("a")], "duplicated uid"),
        ([_row("a", source="shapenet")], "unknown source"),
    ],
)
def test_manifest_contract_violations_are_named(
    rows: list[dict[str, object]], message: str
) -> None:
    with pytest.raises(ManifestError, match=message):
        manifest_from_rows(rows)


def test_manifest_null_uid_is_refused() -> None:
    table = pa.table({"uid": [None], "source": ["gso"], "mesh_uri": ["x"], "sha256": [None]})
    with pytest.raises(ManifestError, match="uid has 1 null"):
        write_manifest(table, "memory://never/written.parquet")


def test_status_table_is_readable_by_pandas_and_duckdb(tmp_path: Path) -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rows = [
        {
            "uid": "a",
            "stage": "s",
            "status": "ok",
            "error_type": None,
            "error": None,
            "seconds": 0.5,
            "attempt": 1,
            "output_uri": "/o/a",
            "config_hash": "h",
            "run_id": "r",
            "finished_at": now,
        },
        {
            "uid": "b",
            "stage": "s",
            "status": "failed",
            "error_type": "MeshLoadError",
            "error": "bad",
            "seconds": 0.1,
            "attempt": 2,
            "output_uri": None,
            "config_hash": "h",
            "run_id": "r",
            "finished_at": now,
        },
    ]
    path = tmp_path / "status.parquet"
    write_parquet(status_table(rows), str(path))
    df = pd.read_parquet(path)
    assert tuple(df.columns) == STATUS_COLUMNS
    assert df.set_index("uid").loc["b", "attempt"] == 2
    n_failed = duckdb.sql(f"select count(*) from '{path}' where status = 'failed'").fetchall()
    assert n_failed == [(1,)]


def test_status_value_is_checked() -> None:
    with pytest.raises(ValueError, match="status must be one of"):
        status_table([{"uid": "a", "status": "done"}])


@dataclass
class Inner:
    steps: int = 4


@dataclass
class Job:
    out: str
    scale: float = 1.0
    inner: Inner = field(default_factory=Inner)
    workers: int = field(default=1, metadata=NO_HASH)


def test_yaml_config_loads_nested_and_converts(tmp_path: Path) -> None:
    p = tmp_path / "job.yaml"
    p.write_text("out: /x\nscale: 2\ninner:\n  steps: 9\n")
    cfg = load_config(Job, p)
    assert cfg == Job(out="/x", scale=2.0, inner=Inner(steps=9))
    assert isinstance(cfg.scale, float)


def test_unknown_yaml_key_is_named(tmp_path: Path) -> None:
    p = tmp_path / "job.yaml"
    p.write_text("out: /x\ninner:\n  stepz: 9\n")
    with pytest.raises(ConfigError, match=r"inner: unknown key\(s\) stepz; valid keys: steps"):
        load_config(Job, p)


def test_config_hash_ignores_execution_settings() -> None:
    base = config_hash(Job(out="/x"))
    assert config_hash(Job(out="/x", workers=8)) == base
    assert config_hash(Job(out="/x", inner=Inner(steps=5))) != base
    assert len(base) == 16


def test_resolved_config_round_trips_with_provenance(tmp_path: Path) -> None:
    cfg = Job(out="/x", scale=3.0)
    path = tmp_path / "config.yaml"
    write_resolved_config(cfg, str(path))
    data = yaml.safe_load(path.read_text())
    assert data["_provenance"]["config_hash"] == config_hash(cfg)
    assert data["_provenance"]["version"]
    assert "git_commit" in data["_provenance"]
    assert load_config(Job, path) == cfg
