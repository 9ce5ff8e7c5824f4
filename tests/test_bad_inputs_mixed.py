"""One folder mixing every generated bad input with good objects, through `imesh render`,
`inspect`, `evalset` and `benchmark` (the CLI a user runs): each command finishes within its
timeouts, every good object is `ok`, every bad one a failed row naming its cause."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from bad_corpus import (
    NAME_CASES,
    deep_pbtxt,
    good_mesh,
    obj_with_mtllib,
    write_big_meshes,
    write_mesh_corpus,
    write_name_corpus,
    write_special_files,
)

from evaluation.layouts import write_gso_object
from pipelines.schema import read_parquet
from rendering import procedural as pg

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.timeout(900)]
RUN = ["--run.workers", "1", "--run.no-progress", "--run.item-timeout-s", "120"]
MAX_FACES = 3000


def _status(stage: Path) -> dict[str, dict[str, Any]]:
    return {r["uid"]: r for r in read_parquet(str(stage / "status.parquet")).to_pylist()}


def test_a_folder_of_everything_through_render_and_inspect(tmp_path: Path) -> None:
    from pipelines.cli import main
    from pipelines.render import manifest_from_input
    from pipelines.schema import write_parquet

    src = tmp_path / "in"
    bad = {**write_mesh_corpus(src), **write_special_files(src)}
    for kind, path in write_big_meshes(tmp_path / "big", faces=4 * MAX_FACES).items():
        dest = src / f"big_{kind}{path.suffix}"  # one stem per file (no uid collisions here)
        shutil.move(path, dest)
        bad[f"big_{kind}"] = (dest, "exceed the limit of")
    outside = tmp_path / "elsewhere.mtl"
    outside.write_text("newmtl m\n")
    bad["mtllib_outside"] = (
        obj_with_mtllib(src, str(outside), "escape.obj"),
        "outside the mesh's folder",
    )
    good = [good_mesh(src, f"good_{i}.glb").stem for i in range(2)]
    good += [uid for _, uid in NAME_CASES.values() if uid is not None]
    write_name_corpus(src)

    out = tmp_path / "out"
    argv = ["render", "--input", str(src), "--out", str(out), "--backend", "cpu"]
    argv += ["--layout", "zero123pp", "--size", "32", "--max-faces", str(MAX_FACES), *RUN]
    assert main(argv) == 0
    rows = _status(out / "render-zero123pp")
    (long_uid,) = [u for u in rows if u.startswith("LLLL")]  # the 244-character name, capped
    assert len(long_uid.encode()) <= 200
    good.append(long_uid)
    for uid in good:
        assert rows[uid]["status"] == "ok", (uid, rows[uid]["error"])
    for kind, (path, cause) in bad.items():
        (row,) = [r for u, r in rows.items() if u == path.stem]
        assert row["status"] == "failed", kind
        assert cause in row["error"].lower(), (kind, row["error"])
    assert rows["a_b"]["status"] == rows["Chair"]["status"] == "failed"  # name collisions
    published = {p.name for p in (out / "rendering_zero123plus").iterdir()} - {".staging"}
    assert published == set(good)

    manifest = tmp_path / "manifest.parquet"
    write_parquet(manifest_from_input(str(src)), str(manifest))
    assert main(["inspect", "--manifest", str(manifest), "--out", str(tmp_path / "ins"), *RUN]) == 0
    rows = _status(tmp_path / "ins" / "inspect")
    for uid in good:
        assert rows[uid]["status"] == "ok", (uid, rows[uid]["error"])
    for kind in ("fifo", "directory_named_glb", "truncated_glb", "nan_vertices", "empty_file"):
        path, _ = bad[kind]
        assert rows[path.stem]["status"] == "failed", kind


def test_a_gso_root_of_everything_through_evalset_and_benchmark(tmp_path: Path) -> None:
    from pipelines.cli import main

    corpus = write_mesh_corpus(tmp_path / "corpus")
    root = tmp_path / "gso"
    good = [uid for _, uid in NAME_CASES.values() if uid is not None]
    write_name_corpus(root, layout="gso")
    for i in range(2):
        tex = pg.make_texture("checker", i, size=32)
        write_gso_object(root, f"Good_{i}", pg.textured(pg.make_shape("box", i), tex), tex, "Toys")
        good.append(f"Good_{i}")
    expected_bad = {}
    for kind in ("nan_vertices", "zero_faces", "degenerate_faces"):
        tex = pg.make_texture("noise", 0, size=32)
        name = f"Bad_{kind}"
        folder = write_gso_object(
            root, name, pg.textured(pg.make_shape("box", 0), tex), tex, "Toys"
        )
        shutil.copy(corpus[kind][0], folder / "meshes" / "model.obj")
        expected_bad[name] = corpus[kind][1]
    tex = pg.make_texture("noise", 1, size=32)
    deep = write_gso_object(
        root, "Deep_meta", pg.textured(pg.make_shape("box", 1), tex), tex, "Toys"
    )
    (deep / "metadata.pbtxt").write_text(deep_pbtxt(50_000))
    good.append("Deep_meta")  # a deeply nested metadata file parses (iteratively)
    (root / "Garbage" / "meshes").mkdir(parents=True)
    (root / "Garbage" / "meshes" / "model.obj").write_bytes(b"\x00\x01garbage")
    expected_bad["Garbage"] = "garbage"

    es = tmp_path / "es"
    argv = ["evalset", "--dataset", "gso", "--root", str(root), "--out", str(es)]
    assert main([*argv, "--n", "100", "--size", "32", *RUN]) == 0
    rows = _status(es / "gso" / "evalset-build")
    for uid in good:
        assert rows[uid]["status"] == "ok", (uid, rows[uid]["error"])
    for uid, cause in expected_bad.items():
        assert rows[uid]["status"] == "failed" and cause in rows[uid]["error"].lower(), uid

    run = tmp_path / "run"
    bench = ["benchmark", "--evalsets", str(es / "gso"), "--out", str(run)]
    bench += ["--predictor", "visual-hull", "--resolution", "24", "--lpips-net", "none"]
    assert main([*bench, "--n-points", "1000", "--no-report", *RUN]) == 0
    objects = {
        r["uid"]: r for r in read_parquet(str(run / "metrics" / "objects.parquet")).to_pylist()
    }
    for uid in good:
        assert objects[uid]["status"] == "ok", (uid, objects[uid]["error"])
    for uid in expected_bad:
        assert objects[uid]["status"] == "failed"
        assert objects[uid]["error"].startswith("evaluation set:"), objects[uid]["error"]
