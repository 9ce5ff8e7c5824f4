"""Every bad mesh file ends as a failed render status row naming its cause; the others render."""

from __future__ import annotations

from pathlib import Path

import pytest
from bad_corpus import good_mesh, write_mesh_corpus

from pipelines.runner import RunOptions

BACKENDS = [
    "cpu",
    pytest.param(
        "blender",
        marks=pytest.mark.skipif(
            __import__("importlib.util").util.find_spec("bpy") is None, reason="bpy not installed"
        ),
    ),
]


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs_are_failed_rows_and_good_objects_render(backend: str, tmp_path: Path) -> None:
    from pipelines.render import RenderConfig, run_render
    from pipelines.schema import read_parquet

    src = tmp_path / "in"
    corpus = write_mesh_corpus(src)
    good_mesh(src, "good_a.glb")
    good_mesh(src, "good_b.glb")
    cfg = RenderConfig(
        input=str(src),
        out=str(tmp_path / "out"),
        backend=backend,  # type: ignore[arg-type]
        layout="zero123pp",
        size=32,
        samples=1,
        run=RunOptions(workers=1, shard_size=20, progress=False),
    )
    report = run_render(cfg)
    rows = {r["uid"]: r for r in read_parquet(report.status_uri).to_pylist()}
    assert rows["good_a"]["status"] == "ok" and rows["good_b"]["status"] == "ok"
    for kind, (path, cause) in corpus.items():
        uid = path.stem
        assert rows[uid]["status"] == "failed", kind
        assert cause in rows[uid]["error"].lower(), (kind, rows[uid]["error"])
        assert path.name in rows[uid]["error"], kind  # the message names the file
    published = {p.name for p in (tmp_path / "out" / "rendering_zero123plus").iterdir()}
    assert published - {".staging"} == {"good_a", "good_b"}


def test_face_limit_refuses_big_meshes_before_loading(tmp_path: Path) -> None:
    from bad_corpus import big_mesh

    from rendering import procedural as pg
    from rendering.backends import prepare_object
    from rendering.mesh_io import MeshTooLarge, declared_face_count

    mesh = big_mesh(5000)  # 5120 faces
    glb = tmp_path / "big.glb"
    glb.write_bytes(pg.glb_bytes(mesh))
    obj = tmp_path / "big.obj"
    obj.write_text(mesh.export(file_type="obj"))
    assert declared_face_count(glb) == len(mesh.faces) == declared_face_count(obj)
    for path in (glb, obj):
        with pytest.raises(MeshTooLarge, match="5120 faces exceed the limit of 1000"):
            prepare_object(path, max_faces=1000)
        prepare_object(path, max_faces=10_000)  # under the limit: loads


@pytest.mark.usefixtures("ray_local")
def test_symlinks_and_texture_paths_leading_outside_are_refused(tmp_path: Path) -> None:
    from pipelines.render import RenderConfig, run_render
    from pipelines.schema import read_parquet
    from rendering import procedural as pg

    outside = tmp_path / "outside"
    outside.mkdir()
    secret = good_mesh(outside, "secret.glb")
    src = tmp_path / "in"
    src.mkdir()
    good_mesh(src, "good.glb")
    (src / "link.glb").symlink_to(secret)
    (outside / "tex.png").write_bytes(b"")  # a texture outside the mesh's folder
    mesh = pg.textured(pg.make_shape("box", 0), pg.make_texture("checker", 0))
    (src / "escape.mtl").write_text(pg.mtl_text("../outside/tex.png"))
    (src / "escape.obj").write_text(pg.obj_text(mesh, "escape.mtl"))
    report = run_render(
        RenderConfig(
            input=str(src),
            out=str(tmp_path / "out"),
            backend="cpu",
            layout="zero123pp",
            size=16,
            run=RunOptions(workers=1, progress=False),
        )
    )
    rows = {r["uid"]: r for r in read_parquet(report.status_uri).to_pylist()}
    assert rows["good"]["status"] == "ok"
    assert (
        rows["link"]["status"] == "failed" and "outside the input folder" in rows["link"]["error"]
    )
    assert (
        rows["escape"]["status"] == "failed"
        and "outside the mesh's folder" in rows["escape"]["error"]
    )
