"""Resume follows content: replacing an input file (mesh, texture, GT object, predicted mesh)
redoes the items that read it; uids derived from names are readable, unique and stable, and a
uid collision is a failed row naming every file. Through the real CLI (``pipelines.cli.main``)."""

from __future__ import annotations

import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from bad_corpus import NAME_CASES, good_mesh, write_name_corpus

from pipelines.schema import read_parquet
from rendering import procedural as pg

RUN = ["--run.workers", "1", "--run.no-progress"]
RENDER = ["--backend", "cpu", "--layout", "zero123pp", "--size", "16", *RUN]


def _status(stage_dir: Path) -> dict[str, dict[str, Any]]:
    return {r["uid"]: r for r in read_parquet(str(stage_dir / "status.parquet")).to_pylist()}


def _textured_obj(folder: Path, stem: str, texture_seed: int) -> None:
    mesh = pg.textured(pg.make_shape("box", 0), pg.make_texture("checker", 0))
    pg.make_texture("noise", texture_seed).save(folder / f"{stem}.png")
    (folder / f"{stem}.mtl").write_text(pg.mtl_text(f"{stem}.png"))
    (folder / f"{stem}.obj").write_text(pg.obj_text(mesh, f"{stem}.mtl"))


@pytest.mark.usefixtures("ray_local")
def test_render_redoes_objects_whose_mesh_or_texture_file_was_replaced(tmp_path: Path) -> None:
    from pipelines.cli import main

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    good_mesh(src, "chair.glb")
    good_mesh(src, "lamp.glb")
    _textured_obj(src, "table", texture_seed=0)
    argv = ["render", "--input", str(src), "--out", str(out), *RENDER]
    views = out / "rendering_zero123plus"

    def image(uid: str) -> bytes:
        return (views / uid / "001.png").read_bytes()

    assert main(argv) == 0
    before = {uid: image(uid) for uid in ("chair", "lamp", "table")}
    assert main(argv) == 0  # nothing changed: every object resumed
    assert {u: r["attempt"] for u, r in _status(out / "render-zero123pp").items()} == {
        "chair": 1,
        "lamp": 1,
        "table": 1,
    }

    sphere = pg.textured(pg.make_shape("sphere", 1), pg.make_texture("noise", 1))
    (src / "chair.glb").write_bytes(pg.glb_bytes(sphere))  # another object, same name
    pg.make_texture("checker", 5).save(src / "table.png")  # only the OBJ's texture changes
    assert main(argv) == 0
    rows = _status(out / "render-zero123pp")
    assert rows["chair"]["attempt"] == 2 and rows["chair"]["status"] == "ok"
    assert rows["table"]["attempt"] == 2 and rows["table"]["status"] == "ok"
    assert rows["lamp"]["attempt"] == 1  # untouched: still resumed
    assert image("chair") != before["chair"] and image("table") != before["table"]
    assert image("lamp") == before["lamp"]

    # The resumed output equals what a fresh run renders from the current files.
    fresh = tmp_path / "fresh"
    assert main(["render", "--input", str(src), "--out", str(fresh), *RENDER]) == 0
    for uid in ("chair", "table"):
        assert (fresh / "rendering_zero123plus" / uid / "001.png").read_bytes() == image(uid)


@pytest.mark.usefixtures("ray_local")
def test_render_uids_from_file_names_are_readable_unique_and_collisions_fail(
    tmp_path: Path,
) -> None:
    from pipelines.cli import main

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    good_mesh(src, "a_b.glb")
    argv = ["render", "--input", str(src), "--out", str(out), *RENDER]
    assert main(argv) == 0
    assert _status(out / "render-zero123pp")["a_b"]["status"] == "ok"

    write_name_corpus(src)  # adds "a b.glb" beside "a_b.glb", unicode, spaces, a long name...
    assert main(argv) == 0
    rows = _status(out / "render-zero123pp")
    for kind, (_, uid) in NAME_CASES.items():
        if uid is not None:
            assert rows[uid]["status"] == "ok", (kind, rows[uid]["error"])
    # a_b no longer silently means one of the two files: a failed row naming both.
    assert rows["a_b"]["status"] == "failed" and rows["a_b"]["attempt"] == 2
    assert "'a b.glb'" in rows["a_b"]["error"] and "'a_b.glb'" in rows["a_b"]["error"]
    assert rows["Chair"]["status"] == "failed" and "'chair.glb'" in rows["Chair"]["error"]
    assert "chair" not in rows
    # 244 characters: a capped uid, unique by a hash of the full name, safe as a path component
    (long_uid,) = [u for u in rows if u.startswith("LLLL")]
    assert re.fullmatch(r"L{191}-[0-9a-f]{8}", long_uid) and rows[long_uid]["status"] == "ok"
    # The uid -> file map is recorded beside the status.
    uid_map = {
        r["uid"]: r["input_files"]
        for r in read_parquet(str(out / "render-zero123pp" / "uid_map.parquet")).to_pylist()
    }
    assert uid_map["a_b"] == ["a b.glb", "a_b.glb"]
    assert uid_map["椅子"] == ["椅子.glb"] and uid_map["Coffee_Mug"] == ["Coffee Mug.glb"]
    assert uid_map[long_uid] == ["L" * 244 + ".glb"]
    # Stable: the same names give the same uids on the next run (all resumed or retried).
    assert main(argv) == 0
    assert set(_status(out / "render-zero123pp")) == set(rows)


def test_fingerprints_never_block_and_name_what_they_found(tmp_path: Path) -> None:
    from pipelines.fingerprint import file_digest, mesh_fingerprint, sha256_hex

    fifo = tmp_path / "tex.png"
    os.mkfifo(fifo)
    (tmp_path / "m.mtl").write_text(pg.mtl_text("tex.png") + "map_Bump ../outside.png\n")
    mesh = pg.textured(pg.make_shape("box", 0), pg.make_texture("checker", 0))
    (tmp_path / "m.obj").write_text(pg.obj_text(mesh, "m.mtl"))
    results: dict[str, Any] = {}

    def work() -> None:
        results["fifo"] = file_digest(fifo)
        results["fifo_sha"] = sha256_hex(fifo)
        results["obj"] = mesh_fingerprint(str(tmp_path / "m.obj"))
        results["zero"] = file_digest("/dev/zero")
        results["dir"] = file_digest(tmp_path)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "a fingerprint blocked on a special file"
    assert results["fifo"] == "not a regular file (fifo)" and results["fifo_sha"] is None
    assert results["zero"] == "not a regular file (character device)"
    assert results["dir"] == "not a regular file (directory)"
    refs = results["obj"]["refs"]
    assert refs["m.mtl"].startswith("sha256:") and refs["tex.png"] == "not a regular file (fifo)"
    assert refs["../outside.png"] == "outside the mesh's folder (not read)"
    assert file_digest(tmp_path / "nope.glb") == "missing"


def _gso_root(root: Path) -> None:
    from evaluation.layouts import write_gso_object

    for i, name in enumerate(("Mug", "Bowl")):
        tex = pg.make_texture("checker", i, size=32)
        shape = pg.make_shape("box" if i == 0 else "sphere", i)
        write_gso_object(root, name, pg.textured(shape, tex), tex, "Toys")
    write_name_corpus(root, layout="gso")


@pytest.mark.usefixtures("ray_local")
def test_evalset_names_and_replaced_gt_and_replaced_predictions(tmp_path: Path) -> None:
    from pipelines.cli import main

    gso, es, pred = tmp_path / "gso", tmp_path / "es", tmp_path / "pred"
    _gso_root(gso)
    es_argv = ["evalset", "--dataset", "gso", "--root", str(gso), "--out", str(es)]
    es_argv += ["--n", "50", "--size", "32", *RUN]
    assert main(es_argv) == 0
    rows = _status(es / "gso" / "evalset-build")
    for kind, (_, uid) in NAME_CASES.items():  # odd folder names fail alone, if at all
        if uid is not None:
            assert rows[uid]["status"] == "ok", (kind, rows[uid]["error"])
    assert rows["a_b"]["status"] == "failed"
    assert "'a b'" in rows["a_b"]["error"] and "'a_b'" in rows["a_b"]["error"]
    assert rows["Chair"]["status"] == "failed" and "'chair'" in rows["Chair"]["error"]
    assert rows["Mug"]["status"] == rows["Bowl"]["status"] == "ok"

    # A replaced GT texture rebuilds that object only.
    pg.make_texture("noise", 9, size=32).save(
        gso / "Mug" / "materials" / "textures" / "texture.png"
    )
    assert main(es_argv) == 0
    rows = _status(es / "gso" / "evalset-build")
    assert rows["Mug"]["attempt"] == 2 and rows["Mug"]["status"] == "ok"
    assert rows["Bowl"]["attempt"] == 1

    # mesh-dir predictions: a replaced prediction file is predicted and evaluated again.
    pred.mkdir()
    shutil.copy(es / "gso" / "objects" / "Mug" / "gt_mesh.glb", pred / "Mug.glb")
    bench = ["benchmark", "--evalsets", str(es / "gso"), "--predictor", "mesh-dir"]
    bench += ["--mesh-dir", str(pred), "--convention", "imesh_y_up", "--lpips-net", "none"]
    bench += ["--n-points", "2000", "--no-report", *RUN]

    def fscore(run: Path) -> float:
        geo = read_parquet(str(run / "metrics" / "geometry_metrics.parquet")).to_pylist()
        (value,) = [r["fscore"] for r in geo if r["uid"] == "Mug"]
        return float(value)

    run = tmp_path / "run"
    assert main([*bench, "--out", str(run)]) == 0
    first = fscore(run)
    thin = pg.textured(pg.make_shape("sphere", 3), pg.make_texture("noise", 3))
    thin.apply_scale([1.0, 0.2, 0.2])
    (pred / "Mug.glb").write_bytes(pg.glb_bytes(thin))
    assert main([*bench, "--out", str(run)]) == 0
    assert _status(run / "predict-gso")["Mug"]["attempt"] == 2
    fresh = tmp_path / "fresh"
    assert main([*bench, "--out", str(fresh)]) == 0
    assert fscore(run) == pytest.approx(fscore(fresh))
    assert fscore(run) != pytest.approx(first)
