"""The metric registry is the one truth for run-record columns, table columns, directions and
compare defaults: every consumer reads it, and a new entry shows up everywhere."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from evaluation.compare import (
    DEFAULT_THRESHOLDS,
    compare_runs,
    default_thresholds,
    default_thresholds_yaml,
    load_thresholds,
)
from evaluation.metric_registry import METRICS, Metric, default_max_drop, metric_names
from evaluation.run_records import (
    GEOMETRY_METRICS_SCHEMA,
    IMAGE_METRICS_SCHEMA,
    RunInfo,
    RunRecords,
    geometry_metrics_schema,
    image_metrics_schema,
    read_run,
    write_run_records,
)
from evaluation.tables import GEOMETRY_METRICS, IMAGE_METRICS, paper_tables

TOY_VIEW = Metric(
    "toy_view", "TV", False, "", "view", ".1f", 0.25, "toy per-view metric", required=False
)
TOY_OBJECT = Metric("toy_object", "TO", True, "", "object", ".2f", 0.5, "toy per-object metric")


def test_directions_units_and_scopes_are_the_documented_ones() -> None:
    higher = {n for n, m in METRICS.items() if m.higher_is_better}
    assert higher == {"psnr", "ssim", "fscore", "fscore_aligned"}
    assert {n for n, m in METRICS.items() if not m.higher_is_better} == {
        "lpips",
        "chamfer",
        "chamfer_aligned",
    }
    assert {n: m.sign for n, m in METRICS.items()} == {
        "psnr": 1.0,
        "ssim": 1.0,
        "lpips": -1.0,
        "chamfer": -1.0,
        "fscore": 1.0,
        "chamfer_aligned": -1.0,
        "fscore_aligned": 1.0,
    }
    assert metric_names("view") == ("psnr", "ssim", "lpips")
    assert metric_names("object") == ("chamfer", "fscore", "chamfer_aligned", "fscore_aligned")
    assert metric_names(optional=True) == ("chamfer_aligned", "fscore_aligned")
    assert (IMAGE_METRICS, GEOMETRY_METRICS) == (("psnr", "ssim", "lpips"), ("chamfer", "fscore"))
    assert {n: m.label for n, m in METRICS.items()}["chamfer"] == "CD"
    assert METRICS["psnr"].unit == "dB" and METRICS["psnr"].fmt == ".2f"
    # the aligned columns mirror their protocol columns
    for name in ("chamfer", "fscore"):
        protocol, aligned = METRICS[name], METRICS[f"{name}_aligned"]
        assert (aligned.higher_is_better, aligned.max_drop, aligned.scope, aligned.unit) == (
            protocol.higher_is_better,
            protocol.max_drop,
            protocol.scope,
            protocol.unit,
        )
        assert aligned.optional and not aligned.required


def test_entry_checks() -> None:
    with pytest.raises(ValueError, match="scope"):
        Metric("x", "X", True, "", "pixel", ".1f", 0.1, "")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="optional metric cannot be required"):
        Metric("x", "X", True, "", "view", ".1f", 0.1, "", required=True, optional=True)
    with pytest.raises(ValueError, match="max_drop"):
        Metric("x", "X", True, "", "view", ".1f", -1.0, "")


def test_compare_defaults_are_the_entries() -> None:
    th = load_thresholds(None)
    assert th.max_drop == {n: m.max_drop for n, m in METRICS.items()}
    assert th.max_drop == default_max_drop()
    assert {k: th.max_drop[k] for k in ("psnr", "ssim", "lpips", "chamfer", "fscore")} == {
        "psnr": 0.5,
        "ssim": 0.01,
        "lpips": 0.01,
        "chamfer": 0.005,
        "fscore": 0.01,
    }
    # a user file still overrides key by key
    over = load_thresholds({"chamfer_aligned": {"max_drop": 0.5}})
    assert over.max_drop["chamfer_aligned"] == 0.5 and over.max_drop["chamfer"] == 0.005


def test_packaged_thresholds_yaml_is_generated_from_the_registry() -> None:
    text = DEFAULT_THRESHOLDS.read_text()
    assert text == default_thresholds_yaml(), (
        "evaluation/data/default_thresholds.yaml is stale: regenerate it with "
        "python -c 'from evaluation.compare import *; "
        "DEFAULT_THRESHOLDS.write_text(default_thresholds_yaml())'"
    )
    data = yaml.safe_load(text)
    assert {k: v["max_drop"] for k, v in data.items() if k in METRICS} == default_max_drop()
    assert load_thresholds(str(DEFAULT_THRESHOLDS)) == load_thresholds(None)
    assert "psnr: {max_drop: 0.5}  # PSNR (dB), higher is better" in text


def test_schemas_are_built_from_the_registry() -> None:
    image_metric_cols = [
        f.name for f in IMAGE_METRICS_SCHEMA if f.name in METRICS and f.type == pa.float64()
    ]
    assert image_metric_cols == list(metric_names("view"))
    geometry_metric_cols = [f.name for f in GEOMETRY_METRICS_SCHEMA if f.name in METRICS]
    assert geometry_metric_cols == list(metric_names("object"))
    for schema in (IMAGE_METRICS_SCHEMA, GEOMETRY_METRICS_SCHEMA):
        for f in schema:
            if f.name in METRICS:
                assert f.nullable == (not METRICS[f.name].required), f.name
    assert not IMAGE_METRICS_SCHEMA.field("psnr").nullable
    assert IMAGE_METRICS_SCHEMA.field("lpips").nullable
    assert GEOMETRY_METRICS_SCHEMA.field("chamfer_aligned").nullable


def test_a_toy_registry_passed_as_argument_reaches_schemas_and_thresholds() -> None:
    toy = {**METRICS, TOY_VIEW.name: TOY_VIEW, TOY_OBJECT.name: TOY_OBJECT}
    image = image_metrics_schema(toy)
    geometry = geometry_metrics_schema(toy)
    assert image.names[-3:] == ["toy_view", "pred_uri", "gt_uri"]
    assert image.field("toy_view").type == pa.float64() and image.field("toy_view").nullable
    assert "toy_view" not in geometry.names
    assert geometry.names.index("toy_object") == geometry.names.index("fscore_aligned") + 1
    assert not geometry.field("toy_object").nullable
    assert default_thresholds(toy).max_drop["toy_object"] == 0.5
    assert "toy_view: {max_drop: 0.25}  # TV (unitless), lower is better" in (
        default_thresholds_yaml(toy)
    )


def _toy_run(run_id: str, shift: float) -> RunRecords:
    info = RunInfo.new(
        run_id, "oracle", datasets=["gso"], config={"evaluate": {"gso": {"lpips_net": "none"}}}
    )
    image, geometry = [], []
    for i, uid in enumerate("abcdef"):
        for v in range(2):
            image.append(
                {
                    "dataset": "gso",
                    "uid": uid,
                    "view_set": "orbit",
                    "view": v,
                    "psnr": 20.0 + i,
                    "ssim": 0.9,
                    "toy_view": 1.0 + v + shift,
                }
            )
        geometry.append(
            {
                "dataset": "gso",
                "uid": uid,
                "chamfer": 0.1,
                "fscore": 0.8,
                "toy_object": 2.0 + i - shift,
                "precision": 0.8,
                "recall": 0.8,
                "fscore_threshold": 0.2,
            }
        )
    objects = [{"dataset": "gso", "uid": u, "status": "ok"} for u in "abcdef"]
    return RunRecords.from_rows(info, image, geometry, objects)


def test_a_new_entry_appears_in_records_tables_and_compare(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Adding a metric = its compute function + one entry: with two toy entries registered,
    the run records keep their columns, the tables show them (label, arrow, format) and
    compare checks them with the entry's direction and default tolerance."""
    monkeypatch.setitem(METRICS, TOY_VIEW.name, TOY_VIEW)
    monkeypatch.setitem(METRICS, TOY_OBJECT.name, TOY_OBJECT)
    base = _toy_run("base", 0.0)
    assert base.image_metrics.schema.field("toy_view").nullable
    assert not base.geometry_metrics.schema.field("toy_object").nullable
    write_run_records(str(tmp_path / "base"), base)
    back = read_run(str(tmp_path / "base"))
    assert back.geometry_metrics.column("toy_object").to_pylist()[:2] == [2.0, 3.0]

    (table,) = paper_tables([back], {"tables": []})
    assert table.metrics == ("psnr", "ssim", "lpips", "toy_view", "chamfer", "fscore", "toy_object")
    assert table.header_cells()[4] == "TV↓" and table.header_cells()[7] == "TO↑"
    (row,) = table.rows
    assert row.label == "oracle (ours, base)"
    # toy_view: each object's views are 1.0 and 2.0 -> 1.5; toy_object: mean of 2..7 = 4.5
    assert row.cell("toy_view") == "1.5" and row.cell("toy_object") == "4.50"

    worse = _toy_run("new", 1.0)  # toy_view up by 1 (lower is better), toy_object down by 1
    result = compare_runs(back, worse)
    by_metric = {m.metric: m for m in result.metrics}
    assert by_metric["toy_view"].max_drop == 0.25 and by_metric["toy_object"].max_drop == 0.5
    assert by_metric["toy_view"].oriented_delta == pytest.approx(-1.0)
    assert by_metric["toy_object"].oriented_delta == pytest.approx(-1.0)
    assert by_metric["toy_view"].verdict == by_metric["toy_object"].verdict == "regression"
    assert "| TV↓ |" in result.to_markdown()
    assert load_thresholds({"toy_view": {"max_drop": 2.0}}).max_drop["toy_view"] == 2.0


def test_a_file_without_the_optional_columns_reads_as_null(tmp_path: Any) -> None:
    """Runs written before the aligned columns were schema columns still read."""
    run = _toy_run_plain()
    uri = str(tmp_path / "old")
    write_run_records(uri, run)
    path = tmp_path / "old" / "metrics" / "geometry_metrics.parquet"
    old = pq.read_table(path).drop_columns(["chamfer_aligned", "fscore_aligned"])
    pq.write_table(old, path)
    back = read_run(uri)
    assert back.geometry_metrics.column("chamfer_aligned").to_pylist() == [None]
    assert back.geometry_metrics.schema.equals(GEOMETRY_METRICS_SCHEMA)


def test_a_run_written_before_a_new_metric_still_reads_and_compares(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """A stored run (a nightly baseline) written before an entry was added reads with that
    column all null: the tables say it is missing, compare has no data for it and still
    compares the other metrics (was: 'missing required column(s)' for every stored run)."""
    write_run_records(str(tmp_path / "base"), _toy_run("base", 0.0))
    for name, column in (("image_metrics", "toy_view"), ("geometry_metrics", "toy_object")):
        path = tmp_path / "base" / "metrics" / f"{name}.parquet"  # as written before the entry
        pq.write_table(pq.read_table(path).drop_columns([column]), path)
    monkeypatch.setitem(METRICS, TOY_VIEW.name, TOY_VIEW)
    monkeypatch.setitem(METRICS, TOY_OBJECT.name, TOY_OBJECT)  # required: no nulls in new runs
    old = read_run(str(tmp_path / "base"))
    assert old.geometry_metrics.column("toy_object").to_pylist() == [None] * 6
    assert old.image_metrics.column("toy_view").null_count == 12
    (table,) = paper_tables([old], {"tables": []})
    (row,) = table.rows
    assert row.cell("toy_object") == "n/a" and row.cell("chamfer") == "0.100"
    assert "oracle (ours, base): TO missing for 6 object(s); not shown." in table.all_notes()
    new = _toy_run("new", 1.0)
    assert new.geometry_metrics.column("toy_object").null_count == 0
    by_metric = {m.metric: m for m in compare_runs(old, new).metrics}
    assert by_metric["toy_object"].verdict == by_metric["toy_view"].verdict == "no_data"
    assert by_metric["chamfer"].verdict == "no_change"


def _toy_run_plain() -> RunRecords:
    info = RunInfo.new("old", "oracle", datasets=["gso"])
    geometry = [
        {
            "dataset": "gso",
            "uid": "a",
            "chamfer": 0.1,
            "fscore": 0.8,
            "precision": 0.8,
            "recall": 0.8,
            "fscore_threshold": 0.2,
        }
    ]
    return RunRecords.from_rows(
        info, [], geometry, [{"dataset": "gso", "uid": "a", "status": "ok"}]
    )
