"""The bad-input corpus through the evaluation-set build (GT meshes) and predict/evaluate
(predicted meshes): each bad object is a failed row naming its cause, the rest go on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from bad_corpus import write_mesh_corpus

from evaluation.layouts import write_gso_object
from pipelines.runner import RunOptions
from rendering import procedural as pg

pytestmark = pytest.mark.usefixtures("ray_local")
OPTS = RunOptions(workers=1, shard_size=8, progress=False)

GT_KINDS = {  # corpus kind -> substring of the failure
    "nan_vertices": "non-finite",
    "zero_faces": "no triangles",
    "degenerate_faces": "degenerate",
}


def _gso_tree(root: Path, corpus: dict[str, tuple[Path, str]]) -> dict[str, str]:
    expected = {}
    for i in range(2):
        name = f"Good_{i}"
        tex = pg.make_texture("checker", i, size=32)
        write_gso_object(root, name, pg.textured(pg.make_shape("box", i), tex), tex, "Toys")
        expected[name] = ""
    for kind, cause in GT_KINDS.items():
        name = f"Bad_{kind}"
        tex = pg.make_texture("noise", 0, size=32)
        folder = write_gso_object(
            root, name, pg.textured(pg.make_shape("box", 0), tex), tex, "Toys"
        )
        shutil.copy(corpus[kind][0], folder / "meshes" / "model.obj")
        expected[name] = cause
    # GT whose texture is gone, and one whose texture is a decompression bomb header.
    tex = pg.make_texture("noise", 1, size=32)
    folder = write_gso_object(
        root, "Bad_no_texture", pg.textured(pg.make_shape("box", 1), tex), tex, "Toys"
    )
    (folder / "materials" / "textures" / "texture.png").unlink()
    expected["Bad_no_texture"] = "texture"
    folder = write_gso_object(
        root, "Bad_bomb", pg.textured(pg.make_shape("box", 2), tex), tex, "Toys"
    )
    shutil.copy(
        corpus["decompression_bomb"][0].with_suffix(".png"),
        folder / "materials" / "textures" / "texture.png",
    )
    expected["Bad_bomb"] = "texture"
    (root / "Bad_garbage" / "meshes").mkdir(parents=True)
    (root / "Bad_garbage" / "meshes" / "model.obj").write_bytes(b"\x00\x01garbage")
    expected["Bad_garbage"] = "bad_garbage"
    return expected


def test_bad_gt_meshes_and_bad_predictions_are_failed_rows(tmp_path: Path) -> None:
    from pipelines.benchmark import BenchmarkConfig, run_benchmark
    from pipelines.evalset import EvalsetConfig, run_evalset
    from pipelines.schema import read_parquet

    corpus = write_mesh_corpus(tmp_path / "corpus")
    expected = _gso_tree(tmp_path / "gso", corpus)
    report = run_evalset(
        EvalsetConfig(
            dataset="gso",
            root=str(tmp_path / "gso"),
            out=str(tmp_path / "es"),
            n=50,
            size=32,
            run=OPTS,
        )
    )
    rows = {r["uid"]: r for r in read_parquet(report.status_uri).to_pylist()}
    assert set(rows) == set(expected)
    for uid, cause in expected.items():
        if not cause:
            assert rows[uid]["status"] == "ok", rows[uid]["error"]
        else:
            assert rows[uid]["status"] == "failed", uid
            assert cause in rows[uid]["error"].lower(), (uid, rows[uid]["error"])

    # Predictions from a mesh folder: the GLB kinds of the corpus for the good objects.
    mesh_dir = tmp_path / "pred"
    mesh_dir.mkdir()
    shutil.copy(corpus["truncated_glb"][0], mesh_dir / "Good_0.glb")
    shutil.copy(corpus["lying_json_chunk"][0], mesh_dir / "Good_1.glb")
    _, records = run_benchmark(
        BenchmarkConfig(
            evalsets=[str(tmp_path / "es" / "gso")],
            out=str(tmp_path / "run"),
            predictor="mesh-dir",
            mesh_dir=str(mesh_dir),
            convention="imesh_y_up",
            lpips_net="none",
            n_points=1000,
            report=False,
            run=OPTS,
        )
    )
    objects = {r["uid"]: r for r in records.objects.to_pylist()}
    assert set(objects) == set(expected)  # every object is accounted for
    assert all(r["status"] == "failed" for r in objects.values())
    assert (
        "cannot parse" in objects["Good_0"]["error"]
        and "cannot parse" in objects["Good_1"]["error"]
    )
    assert records.image_metrics.num_rows == 0
    # Objects whose GT could not be built report that cause, not a consequence of it.
    assert objects["Bad_nan_vertices"]["error"].startswith("evaluation set:")
    assert "non-finite" in objects["Bad_nan_vertices"]["error"]
