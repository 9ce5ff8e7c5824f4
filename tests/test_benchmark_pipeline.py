"""Evaluation sets -> predictors -> metrics -> run records, on the procedural GSO/Omni3D fixtures."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.runner import RunOptions

pytestmark = pytest.mark.usefixtures("ray_local")

OPTS = RunOptions(workers=1, shard_size=4, progress=False)


@pytest.fixture(scope="module")
def evalsets(
    fixture_set: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    from pipelines.evalset import EvalsetConfig, run_evalset

    out = tmp_path_factory.mktemp("evalsets")
    paths = fixture_set["paths"]
    gso = run_evalset(
        EvalsetConfig(dataset="gso", root=str(paths["gso"]), out=str(out), n=3, size=48, run=OPTS)
    )
    omni = run_evalset(
        EvalsetConfig(
            dataset="omni3d",
            root=str(paths["omni3d"]),
            out=str(out),
            categories=["apple", "toy_train"],
            per_category=2,
            size=48,
            run=OPTS,
        )
    )
    return {"out": out, "gso": gso, "omni3d": omni}


def test_evalset_layout_and_selection(evalsets: dict[str, Any]) -> None:
    from evaluation.evalsets import read_selection_list

    out: Path = evalsets["out"]
    assert evalsets["gso"].ok == 3 and evalsets["omni3d"].ok == 4
    sel = read_selection_list(out / "gso" / "selection.json")
    assert len(sel.uids) == 3 and sel.spec.seed == 0
    for uid in sel.uids:
        folder = out / "gso" / "objects" / uid
        assert (folder / "gt_mesh.glb").is_file() and (folder / "input.png").is_file()
        assert len(list((folder / "orbit").glob("???.png"))) == 21
        assert len(list((folder / "zero123pp").glob("???.png"))) == 6
        assert not (folder / "benchmark").exists()
    omni = read_selection_list(out / "omni3d" / "selection.json")
    assert omni.uids == ["apple_001", "apple_002", "toy_train_001", "toy_train_002"]
    results = {
        r["uid"]: r
        for r in __import__("pipelines.schema", fromlist=["x"])
        .read_parquet(str(out / "omni3d" / "evalset-build" / "results.parquet"))
        .to_pylist()
    }
    # The first scan of each fixture category ships a transforms.json: its cameras are used.
    assert results["apple_001"]["benchmark_source"] == "transforms.json"
    assert results["apple_002"]["benchmark_source"] == "seeded"
    assert len(list((out / "omni3d" / "objects" / "apple_001" / "benchmark").glob("???.png"))) == 16


def test_benchmark_camera_mapping_sees_the_object(evalsets: dict[str, Any]) -> None:
    """transforms.json cameras (render frame) mapped into the normalized frame look at the
    object: every benchmark view has the object in frame."""
    record = json.loads(
        (evalsets["out"] / "omni3d" / "objects" / "apple_001" / "render.json").read_text()
    )
    cov = record["view_sets"]["benchmark"]["coverage"]
    assert min(cov) > 0.02


def _benchmark(evalsets: dict[str, Any], out: Path, **kw: Any) -> Any:
    from pipelines.benchmark import BenchmarkConfig, run_benchmark

    cfg = BenchmarkConfig(
        evalsets=[str(evalsets["out"] / "gso"), str(evalsets["out"] / "omni3d")],
        out=str(out),
        lpips_net="none",
        n_points=4000,
        report=False,
        run=OPTS,
        **kw,
    )
    return run_benchmark(cfg)


def test_oracle_gets_perfect_scores_and_visual_hull_real_ones(
    evalsets: dict[str, Any], tmp_path: Path
) -> None:
    _, oracle = _benchmark(evalsets, tmp_path / "oracle", predictor="oracle")
    assert set(oracle.objects["status"].to_pylist()) == {"ok"}
    assert oracle.objects.num_rows == 7
    psnr = np.array(oracle.image_metrics["psnr"].to_pylist())
    # Same mesh, renderer and cameras (the stored ones made the GT pixels): identical pixels.
    assert np.isinf(psnr).all()
    assert min(oracle.geometry_metrics["fscore"].to_pylist()) == pytest.approx(1.0)
    assert max(oracle.geometry_metrics["chamfer"].to_pylist()) < 0.05
    views = oracle.image_metrics.to_pylist()
    bench = [v for v in views if v["view_set"] == "benchmark"]
    assert len(bench) == 4 * 16 and len(views) == 7 * 21 + 4 * 16
    assert all(v["lpips"] is None for v in views)

    _, hull = _benchmark(evalsets, tmp_path / "hull", predictor="visual-hull", resolution=32)
    assert set(hull.objects["status"].to_pylist()) == {"ok"}
    hpsnr = np.array(hull.image_metrics["psnr"].to_pylist())
    assert np.isfinite(hpsnr).all() and 8.0 < hpsnr.mean() < 40.0
    fs = np.array(hull.geometry_metrics["fscore"].to_pylist())
    assert 0.3 < fs.mean() < 1.0
    assert np.array(hull.geometry_metrics["chamfer"].to_pylist()).mean() > 0.01
    run_json = json.loads((tmp_path / "hull" / "run.json").read_text())
    assert run_json["predictor"] == "visual-hull" and run_json["lpips_available"] is False
    for dataset in ("gso", "omni3d"):  # one config per evaluation set
        assert run_json["config"]["evaluate"][dataset]["device"] == "cpu"  # auto, CPU cluster
        assert run_json["config"]["predict"][dataset]["evalset"].endswith(dataset)
    assert sorted(run_json["datasets"]) == ["gso", "omni3d"]
    first = hull.image_metrics.to_pylist()[0]
    assert Path(first["pred_uri"]).is_file() and Path(first["gt_uri"]).is_file()


def test_missing_predictions_are_failed_objects(evalsets: dict[str, Any], tmp_path: Path) -> None:
    from rendering.mesh_io import load_world_mesh

    mesh_dir = tmp_path / "meshes"
    mesh_dir.mkdir()
    gso_objects = sorted(
        p for p in (evalsets["out"] / "gso" / "objects").iterdir() if not p.name.startswith(".")
    )
    # One real prediction (the GT itself, already in the evaluation set's world frame), one
    # corrupt, rest missing.
    gt = load_world_mesh(gso_objects[0] / "gt_mesh.glb")
    gt.export(mesh_dir / f"{gso_objects[0].name}.ply")
    (mesh_dir / f"{gso_objects[1].name}.glb").write_bytes(b"glTF\x02\x00\x00\x00garbage")
    (mesh_dir / "predictor.yaml").write_text("convention: identity\n")
    from pipelines.benchmark import BenchmarkConfig, run_benchmark

    _, records = run_benchmark(
        BenchmarkConfig(
            evalsets=[str(evalsets["out"] / "gso")],
            out=str(tmp_path / "run"),
            predictor="mesh-dir",
            mesh_dir=str(mesh_dir),
            lpips_net="none",
            n_points=2000,
            report=False,
            run=OPTS,
        )
    )
    status = {r["uid"]: r for r in records.objects.to_pylist()}
    assert len(status) == 3
    # The GT mesh declared with the matching convention (world frame) scores perfectly.
    assert status[gso_objects[0].name]["status"] == "ok"
    assert records.geometry_metrics["fscore"].to_pylist() == [pytest.approx(1.0)]
    assert status[gso_objects[1].name]["status"] == "failed"
    assert "glb" in status[gso_objects[1].name]["error"].lower()
    missing = status[gso_objects[2].name]
    assert missing["status"] == "failed" and missing["error_type"] == "PredictionMissing"
    assert {r["uid"] for r in records.image_metrics.to_pylist()} == {gso_objects[0].name}
    assert not math.isnan(records.geometry_metrics["chamfer"].to_pylist()[0])


def test_nightly_passes_then_catches_a_deliberately_degraded_predictor(
    evalsets: dict[str, Any], tmp_path: Path
) -> None:
    from pipelines.nightly import NightlyConfig, run_nightly

    def nightly(name: str, resolution: int) -> tuple[int, str]:
        return run_nightly(
            NightlyConfig(
                evalsets=[str(evalsets["out"] / "gso"), str(evalsets["out"] / "omni3d")],
                out=str(tmp_path / "nightly"),
                predictor="visual-hull",
                resolution=resolution,
                lpips_net="none",
                n_points=3000,
                name=name,
                run=OPTS,
            )
        )

    code, summary = nightly("n1", 40)
    assert code == 0 and "now the baseline" in summary
    assert (tmp_path / "nightly" / "BASELINE").read_text().strip().endswith("n1")
    code, summary = nightly("n2", 40)  # same predictor: no regression
    assert code == 0, summary
    # A degraded predictor (an 8^3 voxel hull is a blob) must fail the nightly job.
    code, summary = nightly("n3", 8)
    assert code == 3, summary
    assert "REGRESSION" in summary
    assert (tmp_path / "nightly" / "latest.md").read_text() == summary
    assert (tmp_path / "nightly" / "runs" / "n3" / "report" / "report.html").is_file()


def test_instantmesh_predictor_runs_a_saved_tiny_model_through_the_pipeline(
    evalsets: dict[str, Any], tmp_path: Path
) -> None:
    import torch

    from evaluation.instantmesh_predictor import InstantMeshPredictor
    from evaluation.predictors import InstantMeshOptions, PredictorInput
    from instantmesh import build_model
    from instantmesh.checkpoint import save_model
    from pipelines.benchmark import BenchmarkConfig, run_benchmark

    torch.manual_seed(0)
    ckpt = save_model(build_model("tiny-nerf"), tmp_path / "tiny")
    folder = next(
        p for p in sorted((evalsets["out"] / "gso" / "objects").iterdir()) if p.name[0] != "."
    )
    item = PredictorInput(folder.name, "gso", folder)
    # Random weights: pick the iso-level inside the density range so a surface exists.
    probe = InstantMeshPredictor(
        InstantMeshOptions(
            checkpoint=str(ckpt), mc_resolution=24, density_threshold=1e9, views="ground-truth"
        )
    )
    with pytest.raises(Exception, match="no surface"):
        probe.predict(item)
    from instantmesh.reconstruct import views_tensor

    images = views_tensor(item.six_views()[0], probe.model.cfg.input_size, torch.device("cpu"))
    planes = probe.model.forward_planes(
        images, __import__("instantmesh").input_cameras(batch_size=1)
    )
    sigma = probe.model.synthesizer.forward_grid(planes, 24)["sigma"].detach()
    level = float(sigma.median())
    pred = InstantMeshPredictor(
        InstantMeshOptions(
            checkpoint=str(ckpt), mc_resolution=24, density_threshold=level, views="ground-truth"
        )
    ).predict(item)
    assert len(pred.mesh.faces) > 0 and pred.convention == "instantmesh_lrm"
    assert pred.mesh.visual.vertex_colors.shape == (len(pred.mesh.vertices), 4)

    _, records = run_benchmark(
        BenchmarkConfig(
            evalsets=[str(evalsets["out"] / "gso")],
            out=str(tmp_path / "run"),
            predictor="instantmesh",
            views="ground-truth",
            checkpoint=str(ckpt),
            mc_resolution=24,
            density_threshold=level,
            lpips_net="none",
            n_points=2000,
            report=False,
            run=OPTS,
        )
    )
    statuses = records.objects["status"].to_pylist()
    assert len(statuses) == 3
    assert statuses.count("ok") >= 1  # random weights: other objects may have no surface...
    for row in records.objects.to_pylist():
        if row["status"] != "ok":  # ... and then say so
            assert "no surface" in row["error"]


def test_bad_predictions_are_failed_objects_with_their_cause(
    evalsets: dict[str, Any], tmp_path: Path
) -> None:
    from pipelines.benchmark import BenchmarkConfig, run_benchmark

    uids = sorted(
        p.name for p in (evalsets["out"] / "gso" / "objects").iterdir() if p.name[0] != "."
    )
    mesh_dir = tmp_path / "meshes"
    mesh_dir.mkdir()
    (mesh_dir / f"{uids[0]}.obj").write_text("v nan 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    (mesh_dir / f"{uids[1]}.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")  # no faces
    # A single open triangle: non-manifold but a valid surface, so it is scored (badly).
    (mesh_dir / f"{uids[2]}.obj").write_text("v -1 0 -1\nv 1 0 -1\nv 0 0 1\nf 1 2 3\n")
    _, records = run_benchmark(
        BenchmarkConfig(
            evalsets=[str(evalsets["out"] / "gso")],
            out=str(tmp_path / "run"),
            predictor="mesh-dir",
            mesh_dir=str(mesh_dir),
            convention="identity",
            lpips_net="none",
            n_points=2000,
            report=False,
            run=OPTS,
        )
    )
    status = {r["uid"]: r for r in records.objects.to_pylist()}
    assert status[uids[0]]["status"] == "failed" and "non-finite" in status[uids[0]]["error"]
    assert status[uids[1]]["status"] == "failed" and "no triangles" in status[uids[1]]["error"]
    assert status[uids[2]]["status"] == "ok"
    fs = records.geometry_metrics["fscore"].to_pylist()
    assert len(fs) == 1 and fs[0] < 0.5


@pytest.mark.parametrize(
    ("device", "backend", "gpus", "expected"),
    [
        ("auto", "cpu", 0.0, "cpu"),
        ("auto", "cpu", 2.0, "cuda"),
        ("cpu", "cpu", 2.0, "cpu"),
        ("cuda", "cpu", 1.0, "cuda"),
        ("auto", "nvdiffrast", 1.0, "cuda"),
        ("cuda", "cpu", 0.0, "needs GPUs"),
        ("auto", "nvdiffrast", 0.0, "nvdiffrast needs GPUs"),
        ("cpu", "nvdiffrast", 4.0, "renders on CUDA"),
    ],
)
def test_metrics_device_resolution(device: str, backend: str, gpus: float, expected: str) -> None:
    from pipelines.benchmark import EvaluateConfig, resolve_metrics_device
    from pipelines.configs import ConfigError

    cfg = EvaluateConfig(evalset="e", out="o", device=device, backend=backend)  # type: ignore[arg-type]
    if expected in ("cpu", "cuda"):
        assert resolve_metrics_device(cfg, gpus) == expected
    else:
        with pytest.raises(ConfigError, match=expected):
            resolve_metrics_device(cfg, gpus)


def test_evaluate_on_a_cpu_cluster_refuses_device_cuda(
    evalsets: dict[str, Any], tmp_path: Path
) -> None:
    """Through the CLI: a clear one-line error and exit code 2, nothing evaluated."""
    from pipelines.cli import main

    run = tmp_path / "run"
    common = ["--evalset", str(evalsets["out"] / "gso"), "--out", str(run), "--run.no-progress"]
    assert main(["predict", *common, "--predictor", "oracle", "--run.workers", "1"]) == 0
    assert main(["evaluate", *common, "--device", "cuda", "--lpips-net", "none"]) == 2
    assert not (run / "evaluate-gso").exists()


def test_evaluate_redoes_objects_whose_prediction_changed(
    evalsets: dict[str, Any], tmp_path: Path
) -> None:
    """A user re-predicted into the same run with another predictor: the next evaluate must
    score the new meshes, not resume the old predictor's metrics under the new name."""
    from pipelines.benchmark import EvaluateConfig, PredictConfig, run_evaluate, run_predict

    gso, run = str(evalsets["out"] / "gso"), str(tmp_path / "run")
    evaluate = EvaluateConfig(evalset=gso, out=run, lpips_net="none", n_points=2000, run=OPTS)

    def chamfer_after(predictor: str, **kw: Any) -> tuple[list[float], int]:
        run_predict(PredictConfig(evalset=gso, out=run, predictor=predictor, run=OPTS, **kw))
        report, records = run_evaluate(evaluate)
        return records.geometry_metrics["chamfer"].to_pylist(), report.skipped_done

    hull, _ = chamfer_after("visual-hull", resolution=12)
    again, resumed = chamfer_after("visual-hull", resolution=12)  # nothing changed: resumed
    assert resumed == 3 and again == hull
    oracle, resumed = chamfer_after("oracle")
    assert resumed == 0
    # The oracle's own metrics, not the hull's resumed: every object's number changed (a
    # 12^3 hull is a fair hull of these convex fixtures now, so no gap is implied).
    assert max(oracle) < 0.05 and all(o != h for o, h in zip(oracle, hull, strict=True))
