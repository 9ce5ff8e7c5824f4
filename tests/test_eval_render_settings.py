"""``imesh evaluate`` renders predictions like the evaluation set's GT views: backend, shading,
size and samples come from the set's records unless given; a given value that differs is
refused (exit 2, one line) unless ``--force-render-settings``, which is recorded in run.json."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipelines.runner import RunOptions

pytestmark = pytest.mark.usefixtures("ray_local")

OPTS = RunOptions(workers=1, shard_size=4, progress=False)
SIZE = 40
HAVE_BPY = importlib.util.find_spec("bpy") is not None


@pytest.fixture(scope="module")
def cpu_run(
    fixture_set: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """A one-object GSO set rendered with cpu / unlit / SIZE px and oracle predictions."""
    from pipelines.benchmark import PredictConfig, run_predict
    from pipelines.evalset import EvalsetConfig, run_evalset

    out = tmp_path_factory.mktemp("evalsets_rs")
    report = run_evalset(
        EvalsetConfig(
            dataset="gso",
            root=str(fixture_set["paths"]["gso"]),
            out=str(out),
            n=1,
            size=SIZE,
            backend="cpu",
            shading="unlit",
            samples=8,
            run=OPTS,
        )
    )
    assert report.ok == 1
    evalset = out / "gso"
    run = tmp_path_factory.mktemp("runs_rs") / "oracle"
    run_predict(PredictConfig(evalset=str(evalset), out=str(run), predictor="oracle", run=OPTS))
    return {"evalset": evalset, "run": run}


def _evaluate_args(paths: dict[str, Path], run: Path) -> list[str]:
    return [
        "evaluate",
        "--evalset",
        str(paths["evalset"]),
        "--out",
        str(run),
        "--lpips-net",
        "none",
        "--n-points",
        "2000",
        "--run.no-progress",
        "--run.workers",
        "1",
    ]


def _fresh_run(paths: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of the oracle run's predictions (each test evaluates into its own run)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(paths["run"], run)
    return run


def test_evalset_records_its_render_settings(cpu_run: dict[str, Path]) -> None:
    from pipelines.benchmark import evalset_render_settings

    info = json.loads((cpu_run["evalset"] / "evalset.json").read_text())
    assert {k: info[k] for k in ("backend", "shading", "size", "samples")} == {
        "backend": "cpu",
        "shading": "unlit",
        "size": SIZE,
        "samples": 8,
    }
    assert evalset_render_settings(str(cpu_run["evalset"])) == {
        "backend": "cpu",
        "shading": "unlit",
        "size": SIZE,
        "samples": 8,
    }


def test_evaluate_without_flags_renders_like_the_evaluation_set(
    cpu_run: dict[str, Path], tmp_path: Path
) -> None:
    from pipelines.cli import main

    run = _fresh_run(cpu_run, tmp_path)
    assert main(_evaluate_args(cpu_run, run)) == 0
    info = json.loads((run / "run.json").read_text())
    used = {"backend": "cpu", "shading": "unlit", "size": SIZE, "samples": 8}
    assert info["config"]["render_settings"]["gso"] == {
        "evaluation_set": used,
        "used": used,
        "forced": [],
    }
    evaluate = info["config"]["evaluate"]["gso"]
    assert {k: evaluate[k] for k in used} == used
    assert evaluate["force_render_settings"] is False
    renders = sorted((run / "eval_renders" / "gso").glob("*/orbit/*.png"))
    assert len(renders) == 21
    with Image.open(renders[0]) as im:
        assert im.size == (SIZE, SIZE)
    psnr = np.array([r["psnr"] for r in _image_rows(run) if r["view_set"] == "orbit"])
    assert len(psnr) == 21 and psnr.min() > 60.0  # the oracle, rendered like the GT


def _image_rows(run: Path) -> list[dict[str, Any]]:
    from evaluation.run_records import read_run

    return list(read_run(str(run)).image_metrics.to_pylist())


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--backend", "blender", "--backend blender (evaluation set: cpu)"),
        ("--shading", "lit", "--shading lit (evaluation set: unlit)"),
        ("--size", "64", f"--size 64 (evaluation set: {SIZE})"),
    ],
)
def test_an_explicit_mismatch_exits_2_with_one_line(
    cpu_run: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    option: str,
    value: str,
    expected: str,
) -> None:
    from pipelines.cli import main

    run = _fresh_run(cpu_run, tmp_path)
    capsys.readouterr()
    assert main([*_evaluate_args(cpu_run, run), option, value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert expected in err and "--force-render-settings" in err
    assert str(cpu_run["evalset"]) in err
    assert not (run / "evaluate-gso").exists() and not (run / "run.json").exists()


def test_the_same_values_given_explicitly_are_no_mismatch(cpu_run: dict[str, Path]) -> None:
    from pipelines.benchmark import EvaluateConfig, resolve_render_settings

    given = EvaluateConfig(
        evalset=str(cpu_run["evalset"]),
        out="o",
        backend="cpu",
        shading="unlit",
        size=SIZE,
        samples=2,  # the cpu backend ignores samples: not a mismatch
    )
    resolved, record = resolve_render_settings(given, given.evalset)
    assert record["forced"] == [] and resolved.samples == 2 and resolved.backend == "cpu"


def test_force_render_settings_proceeds_and_is_recorded(
    cpu_run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.cli import main

    run = _fresh_run(cpu_run, tmp_path)
    small = SIZE // 2
    args = [*_evaluate_args(cpu_run, run), "--size", str(small), "--force-render-settings"]
    assert main(args) == 0
    assert f"--size {small} (evaluation set: {SIZE})" in capsys.readouterr().out
    record = json.loads((run / "run.json").read_text())["config"]["render_settings"]["gso"]
    assert record["forced"] == ["size"]
    assert record["used"]["size"] == small and record["evaluation_set"]["size"] == SIZE
    assert "--force-render-settings" in record["note"]
    renders = sorted((run / "eval_renders" / "gso").glob("*/orbit/*.png"))
    with Image.open(renders[0]) as im:
        assert im.size == (small, small)
    # the GT views were resampled to the forced size: the oracle still scores well
    psnr = np.array([r["psnr"] for r in _image_rows(run) if r["view_set"] == "orbit"])
    assert 15.0 < np.median(psnr) and np.isfinite(psnr).any()


@pytest.mark.skipif(not HAVE_BPY, reason="needs bpy (pip install 'instantmesh-pipeline[render]')")
def test_evaluate_with_blender_on_one_object(fixture_set: dict[str, Any], tmp_path: Path) -> None:
    """An evaluation set rendered with Blender: evaluate renders the predictions with Blender
    (Cycles on the CPU, the set's samples), and the oracle matches its GT views."""
    from pipelines.benchmark import EvaluateConfig, PredictConfig, run_evaluate, run_predict
    from pipelines.evalset import EvalsetConfig, run_evalset

    out = tmp_path / "evalsets"
    run_evalset(
        EvalsetConfig(
            dataset="gso",
            root=str(fixture_set["paths"]["gso"]),
            out=str(out),
            n=1,
            size=32,
            backend="blender",
            shading="unlit",
            samples=2,
            run=OPTS,
        )
    )
    evalset, run = str(out / "gso"), str(tmp_path / "run")
    run_predict(PredictConfig(evalset=evalset, out=run, predictor="oracle", run=OPTS))
    report, records = run_evaluate(
        EvaluateConfig(evalset=evalset, out=run, lpips_net="none", n_points=2000, run=OPTS)
    )
    assert report.ok == 1 and records.objects["status"].to_pylist() == ["ok"]
    info = json.loads((Path(run) / "run.json").read_text())
    assert info["config"]["render_settings"]["gso"]["used"] == {
        "backend": "blender",
        "shading": "unlit",
        "size": 32,
        "samples": 2,
    }
    psnr = np.array([r["psnr"] for r in records.image_metrics.to_pylist()])
    # Same renderer, samples and seed: identical pixels (measured: inf on every view; the
    # cpu rasterizer against these Blender GT views gives a median of ~26 dB).
    assert len(psnr) == 21 and np.median(psnr) > 40.0


@pytest.mark.skipif(not HAVE_BPY, reason="needs bpy (pip install 'instantmesh-pipeline[render]')")
def test_vertex_coloured_predictions_render_alike_on_cpu_and_blender() -> None:
    """Predicted vertex colours are display (sRGB) values; Blender renders them as such (a
    glTF COLOR_0 would be decoded as linear and come out ~0.1 brighter)."""
    import trimesh

    from evaluation.evaluate_object import render_mesh
    from rendering.backends import RenderSettings, make_backend
    from rendering.cameras import camera_from_spherical

    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.8)
    colours = np.full((len(mesh.vertices), 4), 255, np.uint8)
    colours[:, :3] = [200, 120, 40]
    colours[mesh.vertices[:, 2] > 0, :3] = [40, 90, 210]
    mesh.visual.vertex_colors = colours
    cams = [camera_from_spherical(a, 20.0, 2.5, 40.0, 32) for a in (0.0, 140.0)]
    views = {}
    for name in ("cpu", "blender"):
        backend = make_backend(name, RenderSettings(shading="unlit", samples=4, threads=1))
        try:
            views[name] = render_mesh(backend, mesh, cams)
        finally:
            backend.close()
    for a, b in zip(views["cpu"], views["blender"], strict=True):
        both = a.mask & b.mask
        assert both.mean() > 0.3
        diff = a.rgba[both, :3] - b.rgba[both, :3]
        assert abs(float(diff.mean())) < 0.01 and float(np.abs(diff).mean()) < 0.03
