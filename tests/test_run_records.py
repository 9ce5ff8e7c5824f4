from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evaluation.run_records import (
    GEOMETRY_METRICS_SCHEMA,
    IMAGE_METRICS_SCHEMA,
    OBJECTS_SCHEMA,
    EvaluationInputError,
    RunInfo,
    RunRecordError,
    RunRecords,
    read_run,
    validate_records,
    write_run_records,
)


def _info(**kw: Any) -> RunInfo:
    base: dict[str, Any] = dict(
        run_id="run-1",
        predictor="instantmesh",
        variant="mesh-large",
        datasets=["gso"],
        config={"seed": 0},
        git_commit="abc123",
        lpips_backbone="vgg",
        lpips_available=True,
    )
    base.update(kw)
    return RunInfo.new(**base)


def _records(info: RunInfo | None = None, **overrides: Any) -> RunRecords:
    info = info or _info()
    image = [
        {
            "dataset": "gso",
            "uid": "a",
            "view_set": "orbit",
            "view": v,
            "psnr": 20.0 + v,
            "ssim": 0.8,
            "lpips": 0.1,
            "pred_uri": f"/p/a/{v}.png",
            "gt_uri": None,
        }
        for v in range(3)
    ]
    geometry = [
        {
            "dataset": "gso",
            "uid": "a",
            "chamfer": 0.1,
            "fscore": 0.8,
            "precision": 0.7,
            "recall": 0.9,
            "fscore_threshold": 0.2,
        }
    ]
    objects = [
        {"dataset": "gso", "uid": "a", "status": "ok"},
        {
            "dataset": "gso",
            "uid": "b",
            "status": "failed",
            "error_type": "GeometryError",
            "error": "empty mesh",
        },
    ]
    rows = {"image_rows": image, "geometry_rows": geometry, "object_rows": objects}
    rows.update(overrides)
    return RunRecords.from_rows(info, **rows)


def test_schemas_have_the_documented_columns() -> None:
    assert IMAGE_METRICS_SCHEMA.names == [
        "run_id",
        "predictor",
        "dataset",
        "uid",
        "view_set",
        "view",
        "psnr",
        "ssim",
        "lpips",
        "pred_uri",
        "gt_uri",
    ]
    assert IMAGE_METRICS_SCHEMA.field("view").type == pa.int32()
    assert IMAGE_METRICS_SCHEMA.field("lpips").nullable
    assert not IMAGE_METRICS_SCHEMA.field("psnr").nullable
    assert GEOMETRY_METRICS_SCHEMA.names[4:] == [
        "chamfer",
        "fscore",
        "chamfer_aligned",
        "fscore_aligned",
        "precision",
        "recall",
        "fscore_threshold",
    ]
    assert OBJECTS_SCHEMA.names[4:] == ["status", "error_type", "error"]
    assert issubclass(RunRecordError, ValueError)
    assert issubclass(RunRecordError, EvaluationInputError)


@pytest.mark.parametrize("scheme", ["local", "memory"])
def test_write_read_round_trip(tmp_path: Path, scheme: str) -> None:
    records = _records()
    uri = str(tmp_path / "run") if scheme == "local" else "memory://rr-test/run"
    assert write_run_records(uri, records) == uri
    back = read_run(uri)
    assert back.uri == uri
    assert back.info.run_id == "run-1" and back.info.variant == "mesh-large"
    assert back.info.versions["python"] and "torch" in back.info.versions
    assert back.image_metrics.schema.equals(IMAGE_METRICS_SCHEMA)
    assert back.image_metrics.column("psnr").to_pylist() == [20.0, 21.0, 22.0]
    assert back.image_metrics.column("run_id").to_pylist() == ["run-1"] * 3
    assert back.objects.column("error").to_pylist() == [None, "empty mesh"]
    assert back.geometry_metrics.num_rows == 1


def test_run_json_round_trip_keeps_unknown_keys(tmp_path: Path) -> None:
    records = _records()
    uri = str(tmp_path / "run")
    write_run_records(uri, records)
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert set(meta) >= {
        "run_id",
        "predictor",
        "variant",
        "datasets",
        "created_at",
        "config",
        "versions",
        "git_commit",
        "lpips_backbone",
        "lpips_available",
    }
    meta["future_field"] = {"x": 1}
    (tmp_path / "run" / "run.json").write_text(json.dumps(meta))
    back = read_run(uri)
    assert back.info.extra == {"future_field": {"x": 1}}
    assert json.loads(back.info.to_json())["future_field"] == {"x": 1}


def test_read_run_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(RunRecordError, match="run directory not found"):
        read_run(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunRecordError, match=r"run\.json not found"):
        read_run(str(tmp_path / "empty"))
    uri = str(tmp_path / "run")
    write_run_records(uri, _records())
    (tmp_path / "run" / "metrics" / "objects.parquet").unlink()
    with pytest.raises(RunRecordError, match=r"metrics/objects\.parquet not found"):
        read_run(uri)


def test_read_run_rejects_bad_json_and_types(tmp_path: Path) -> None:
    uri = str(tmp_path / "run")
    write_run_records(uri, _records())
    (tmp_path / "run" / "run.json").write_text("{not json")
    with pytest.raises(RunRecordError, match="not valid JSON"):
        read_run(uri)
    (tmp_path / "run" / "run.json").write_text(json.dumps({"run_id": "run-1"}))
    with pytest.raises(RunRecordError, match=r"missing required key.*predictor"):
        read_run(uri)
    (tmp_path / "run" / "run.json").write_text(
        json.dumps({"run_id": "run-1", "predictor": "x", "lpips_available": "yes"})
    )
    with pytest.raises(RunRecordError, match="lpips_available must be true or false"):
        read_run(uri)


def test_read_run_validates_parquet_contents(tmp_path: Path) -> None:
    uri = str(tmp_path / "run")
    write_run_records(uri, _records())
    path = tmp_path / "run" / "metrics" / "image_metrics.parquet"
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(["view"]), path)
    with pytest.raises(
        RunRecordError, match=r"image_metrics\.parquet: missing required column\(s\) view"
    ):
        read_run(uri)
    # a metric column a file lacks is a metric that run did not compute (written before its
    # registry entry existed): all null, not an error (test_metric_registry)
    pq.write_table(table.drop_columns(["ssim"]), path)
    assert read_run(uri).image_metrics.column("ssim").null_count == table.num_rows


def test_types_are_cast_and_extra_columns_kept() -> None:
    rec = _records()
    t = rec.image_metrics
    t = t.set_column(t.schema.get_field_index("view"), "view", t.column("view").cast(pa.int64()))
    t = t.append_column("render_seconds", pa.array([0.1, 0.2, 0.3]))
    out = validate_records(RunRecords(rec.info, t, rec.geometry_metrics, rec.objects))
    assert out.image_metrics.schema.field("view").type == pa.int32()
    assert out.image_metrics.column_names[-1] == "render_seconds"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"object_rows": [{"dataset": "gso", "uid": "a", "status": "ok"}] * 2},
            "duplicated key",
        ),
        (
            {
                "image_rows": [
                    {
                        "dataset": "gso",
                        "uid": "a",
                        "view_set": "side",
                        "view": 0,
                        "psnr": 1.0,
                        "ssim": 1.0,
                    }
                ]
            },
            r"view_set value\(s\) \['side'\]",
        ),
        (
            {"object_rows": [{"dataset": "gso", "uid": "a", "status": "maybe"}]},
            r"status value\(s\) \['maybe'\]",
        ),
        (
            {
                "image_rows": [
                    {
                        "dataset": "gso",
                        "uid": "a",
                        "view_set": "orbit",
                        "view": 0,
                        "psnr": None,
                        "ssim": 1.0,
                    }
                ]
            },
            "column psnr has 1 null",
        ),
        (
            {"object_rows": [{"dataset": "gso", "uid": "a", "status": "failed"}]},
            "failed object.*have metric rows",
        ),
        (
            {"object_rows": [{"dataset": "gso", "uid": "zzz", "status": "ok"}]},
            "no row in metrics/objects.parquet",
        ),
        (
            {
                "geometry_rows": [
                    {
                        "run_id": "other",
                        "dataset": "gso",
                        "uid": "a",
                        "chamfer": 0.1,
                        "fscore": 0.8,
                        "precision": 0.7,
                        "recall": 0.9,
                        "fscore_threshold": 0.2,
                    }
                ]
            },
            "differ from run.json run_id",
        ),
    ],
)
def test_contract_violations_are_named(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(RunRecordError, match=message):
        _records(**overrides)


def test_lpips_values_refused_when_run_says_unavailable() -> None:
    with pytest.raises(RunRecordError, match="lpips_available is false"):
        _records(_info(lpips_available=False, lpips_backbone=None))
    image = [
        {"dataset": "gso", "uid": "a", "view_set": "orbit", "view": 0, "psnr": 20.0, "ssim": 0.8}
    ]
    rec = _records(_info(lpips_available=False, lpips_backbone=None), image_rows=image)
    assert rec.image_metrics.column("lpips").null_count == 1
    assert not rec.info.lpips_usable
    assert not _info(lpips_backbone="alex-random").lpips_usable
