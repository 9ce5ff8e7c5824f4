"""Adding a metric is one compute function and one registry entry: a registered entry is
computed by the evaluate stage, lands in the stage results and the run records, and is shown
by the tables and checked by compare, with no change to ``pipelines/benchmark.py``."""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import ray.cloudpickle
from PIL import Image

from evaluation.metric_functions import ObjectInputs, ViewInputs, view_metric_values
from evaluation.metric_registry import METRICS, Metric
from pipelines.runner import RunOptions

# Ray workers cannot import this test module: ship its functions (the toy metrics) by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

OPTS = RunOptions(workers=1, shard_size=4, progress=False)
REPO = Path(__file__).resolve().parents[1]


def mean_absolute_error(pred: np.ndarray, gt: np.ndarray, inputs: ViewInputs) -> np.ndarray:
    """Toy per-view metric: mean absolute difference of the composited images."""
    return np.abs(pred - gt).mean(axis=(1, 2, 3))


def area_error(inputs: ObjectInputs) -> float:
    """Toy per-object metric: relative error of the predicted surface area."""
    return abs(float(inputs.pred.area) / float(inputs.gt.area) - 1.0)


MAE = Metric(
    "mae", "MAE", False, "", "view", ".4f", 0.01, "mean absolute error", compute=mean_absolute_error
)
AREA = Metric("area_error", "AE", False, "", "object", ".3f", 0.05, "area", compute=area_error)


@pytest.fixture(scope="module")
def gso_evalset(fixture_set: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipelines.evalset import EvalsetConfig, run_evalset

    out = tmp_path_factory.mktemp("evalsets")
    root = str(fixture_set["paths"]["gso"])
    report = run_evalset(
        EvalsetConfig(dataset="gso", root=root, out=str(out), n=2, size=48, run=OPTS)
    )
    assert report.ok == 2
    return out / "gso"


def _white(path: str) -> np.ndarray:
    """A PNG as the evaluation reads it (float32 / 255), composited on white in float64."""
    with Image.open(path) as im:
        rgba = (np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0).astype(np.float64)
    return rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])


@pytest.mark.usefixtures("ray_local")
def test_a_registered_metric_flows_through_evaluate_records_tables_and_compare(
    gso_evalset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from evaluation.compare import compare_runs
    from evaluation.run_records import RunRecords, read_run
    from evaluation.tables import paper_tables
    from pipelines.benchmark import BenchmarkConfig, run_benchmark
    from pipelines.schema import read_parquet
    from rendering.mesh_io import load_world_mesh

    monkeypatch.setitem(METRICS, MAE.name, MAE)
    monkeypatch.setitem(METRICS, AREA.name, AREA)
    run = tmp_path / "run"
    _, records = run_benchmark(
        BenchmarkConfig(
            evalsets=[str(gso_evalset)],
            out=str(run),
            predictor="visual-hull",
            resolution=16,
            lpips_net="none",
            n_points=2000,
            report=False,
            run=OPTS,
        )
    )
    assert set(records.objects["status"].to_pylist()) == {"ok"}

    # evaluate stage results: the new columns, computed in the Ray workers
    results = read_parquet(str(run / "evaluate-gso" / "results.parquet"))
    assert results.schema.field("mae").type == pa.list_(pa.float64())
    assert results.schema.field("area_error").type == pa.float64()

    # run records: each value equals the toy function on the files the run wrote
    back = read_run(str(run))
    image = back.image_metrics.to_pylist()
    assert len(image) == 2 * 21
    for row in image:
        expected = np.abs(_white(row["pred_uri"]) - _white(row["gt_uri"])).mean()
        assert row["mae"] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert max(r["mae"] for r in image) > 0.001  # a voxel hull is not the GT
    for row in back.geometry_metrics.to_pylist():
        pred = load_world_mesh(run / "predictions" / "gso" / row["uid"] / "mesh.glb")
        gt = load_world_mesh(gso_evalset / "objects" / row["uid"] / "gt_mesh.glb")
        assert row["area_error"] == pytest.approx(abs(pred.area / gt.area - 1.0), rel=1e-12)
        assert row["area_error"] > 0.0

    # tables: the columns with their labels, arrows and formats
    (table,) = paper_tables([back], {"tables": []})
    assert table.metrics == ("psnr", "ssim", "lpips", "mae", "chamfer", "fscore", "area_error")
    assert "MAE↓" in table.header_cells() and "AE↓" in table.header_cells()
    per_object = {}
    for row in image:
        per_object.setdefault(row["uid"], []).append(row["mae"])
    mean_mae = float(np.mean([np.mean(v) for v in per_object.values()]))
    (row,) = table.rows
    assert row.cell("mae") == format(mean_mae, ".4f")
    areas = back.geometry_metrics.column("area_error").to_pylist()
    assert row.cell("area_error") == format(float(np.mean(areas)), ".3f")

    # compare: the entry's direction and default tolerance
    worse = RunRecords(
        info=back.info,
        image_metrics=back.image_metrics.set_column(
            back.image_metrics.schema.get_field_index("mae"),
            MAE.column,
            pa.array([r["mae"] + 0.02 for r in image], pa.float64()),
        ),
        geometry_metrics=back.geometry_metrics,
        objects=back.objects,
    )
    verdicts = {m.metric: m for m in compare_runs(back, worse).metrics}
    assert verdicts["mae"].max_drop == 0.01
    assert verdicts["mae"].oriented_delta == pytest.approx(-0.02)
    assert verdicts["mae"].verdict == "regression"
    assert verdicts["area_error"].oriented_delta == 0.0
    assert verdicts["area_error"].verdict != "regression"


def test_the_evaluate_stage_names_no_metric() -> None:
    """pipelines/benchmark.py loops over the registry: no metric name appears in its code
    (docstrings aside), so adding one needs no edit there."""
    tree = ast.parse((REPO / "pipelines" / "benchmark.py").read_text())
    docs = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    named = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            named.add(node.value)
        elif isinstance(node, ast.Name):
            named.add(node.id)
        elif isinstance(node, ast.Attribute):
            named.add(node.attr)
        elif isinstance(node, ast.keyword | ast.arg) and node.arg is not None:
            named.add(node.arg)
    assert not named & set(METRICS), sorted(named & set(METRICS))


def test_view_metric_values_are_image_metrics() -> None:
    """The registry's per-view functions give exactly ``image_metrics``' numbers."""
    from evaluation.metrics import composite, image_metrics

    rng = np.random.default_rng(0)
    pred = rng.random((3, 24, 32, 4))
    gt = rng.random((3, 24, 32, 4))
    expected = image_metrics(pred, gt, lpips_net=None)
    got = view_metric_values(
        composite(pred), composite(gt), ViewInputs(lpips_net=None), METRICS.values()
    )
    assert list(got) == ["psnr", "ssim", "lpips"]
    for name in ("psnr", "ssim"):
        np.testing.assert_array_equal(got[name], expected[name])
    assert np.isnan(got["lpips"]).all() and np.isnan(expected["lpips"]).all()


def test_entries_without_a_usable_compute_function_are_refused() -> None:
    from pipelines.benchmark import evaluate_stage

    with pytest.raises(ValueError, match="module:function"):
        Metric("x", "X", True, "", "view", ".1f", 0.1, "", compute="no_colon")
    bare = Metric("bare", "B", True, "", "view", ".1f", 0.1, "")
    with pytest.raises(ValueError, match="'bare' has no compute function"):
        evaluate_stage("gso", registry={**METRICS, "bare": bare})
    missing = Metric(
        "gone", "G", True, "", "view", ".1f", 0.1, "", compute="evaluation.metrics:gone"
    )
    with pytest.raises(ValueError, match=r"'gone': compute function 'evaluation\.metrics:gone'"):
        evaluate_stage("gso", registry={**METRICS, "gone": missing})
    with pytest.raises(ValueError, match="'mae' returned values of shape"):
        view_metric_values(
            np.zeros((2, 8, 8, 3)),
            np.zeros((2, 8, 8, 3)),
            ViewInputs(),
            [Metric("mae", "M", False, "", "view", ".1f", 0.1, "", compute=lambda p, g, i: [0.0])],
        )
