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


def _render_features(backend: str, tmp_path: Path, extra: dict[str, Path] | None = None) -> tuple:
    from bad_corpus import write_gltf_feature_corpus

    from pipelines.render import RenderConfig, run_render
    from pipelines.schema import read_parquet

    src = tmp_path / "in"
    files = write_gltf_feature_corpus(src)
    files.update(extra or {})
    cfg = RenderConfig(
        input=str(src),
        out=str(tmp_path / "out"),
        backend=backend,  # type: ignore[arg-type]
        layout="zero123pp",
        size=32,
        samples=1,
        shading="unlit",
        run=RunOptions(workers=1, shard_size=20, progress=False),
    )
    report = run_render(cfg)
    rows = {r["uid"]: r for r in read_parquet(report.status_uri).to_pylist()}
    assert set(rows) == set(files)
    return rows, tmp_path / "out" / "rendering_zero123plus"


def _centre_rgb(folder: Path) -> list[tuple[int, ...]]:
    """The centre pixel of the six target views (the object's middle in every one)."""
    from PIL import Image

    out = []
    for i in range(1, 7):
        with Image.open(folder / f"{i:03d}.png") as im:
            out.append(im.convert("RGBA").getpixel((16, 16)))
    return out


def _assert_textured(folder: Path) -> None:
    from bad_corpus import TEXTURE_RGB

    for pixel in _centre_rgb(folder):
        assert pixel[3] == 255
        assert max(abs(a - b) for a, b in zip(pixel[:3], TEXTURE_RGB, strict=True)) <= 3, pixel


BLENDER_ONLY = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("bpy") is None, reason="bpy not installed"
)


@BLENDER_ONLY
@pytest.mark.usefixtures("ray_local")
def test_gltf_features_blender_renders_what_trimesh_sees_or_fails_precisely(
    tmp_path: Path,
) -> None:
    """Blender poses skinned/animated files (trimesh: the static mesh): refused with the cause,
    not published empty; sparse, Draco (ours and Blender's own exporter's), spec-gloss and
    TEXCOORD_1 + KHR_texture_transform render the texture; a transparent object is an empty
    render naming its views."""
    import subprocess
    import sys

    blender_draco = tmp_path / "blender_draco.glb"
    specgloss = tmp_path / "spec_src"
    from bad_corpus import write_gltf_feature_corpus

    source = write_gltf_feature_corpus(specgloss)["specgloss"]
    script = (
        "import bpy, sys\n"
        "bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)\n"
        "bpy.ops.import_scene.gltf(filepath=sys.argv[1])\n"
        "bpy.ops.export_scene.gltf(filepath=sys.argv[2], "
        "export_draco_mesh_compression_enable=True)\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(source), str(blender_draco)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert b"KHR_draco_mesh_compression" in blender_draco.read_bytes()
    target = tmp_path / "in"
    target.mkdir()
    (target / "blender_draco.glb").write_bytes(blender_draco.read_bytes())
    rows, published = _render_features(
        "blender", tmp_path, {"blender_draco": target / "blender_draco.glb"}
    )
    for uid, feature in (("skinned", "skins (1)"), ("animated", "animations (1)")):
        assert rows[uid]["status"] == "failed", uid
        error = rows[uid]["error"]
        assert f"{uid}.glb" in error and "blender's imported geometry is not where" in error.lower()
        assert feature in error, error
    assert rows["transparent"]["status"] == "failed"
    assert "empty render: 7 of 7 views" in rows["transparent"]["error"]
    assert "views/000" in rows["transparent"]["error"]
    for uid in ("sparse", "draco", "blender_draco", "specgloss", "texcoord1"):
        assert rows[uid]["status"] == "ok", (uid, rows[uid]["error"])
        _assert_textured(published / uid)
    assert not (published / "skinned").exists() and not (published / "transparent").exists()


@pytest.mark.usefixtures("ray_local")
def test_gltf_features_cpu_backend(tmp_path: Path) -> None:
    """The rasterizer (trimesh) renders the static mesh of skinned/animated files, decodes
    sparse and Draco geometry, and refuses TEXCOORD_1 + KHR_texture_transform precisely
    instead of sampling the texture with TEXCOORD_0."""
    rows, published = _render_features("cpu", tmp_path)
    for uid in ("skinned", "animated", "sparse", "draco", "specgloss"):
        assert rows[uid]["status"] == "ok", (uid, rows[uid]["error"])
        _assert_textured(published / uid)
    error = rows["texcoord1"]["error"]
    assert rows["texcoord1"]["status"] == "failed" and "texcoord1.glb" in error
    assert "base-colour texture on TEXCOORD_1" in error and "KHR_texture_transform" in error


def test_blender_binding_report_is_checked_against_trimesh() -> None:
    """The client-side comparison of the worker's report (no Blender needed)."""
    import numpy as np

    from rendering.backends.base import RenderObject
    from rendering.backends.blender import binding_problems

    obj = RenderObject(
        path=Path("x.glb"),
        file_to_world=np.eye(4),
        file_bounds=np.array([[-1.0] * 3, [1.0] * 3]),
        textures_decoded=1,
    )
    image = {"name": "Image_0", "has_data": True, "size": [8, 8], "uv_map": ""}
    good = {"bounds": [[-1.0] * 3, [1.0] * 3], "materials": [{"name": "m", "images": [image]}]}
    assert binding_problems(good, obj, ".glb") == []
    magenta = {**good, "materials": [{"name": "m", "images": [{**image, "has_data": False}]}]}
    (problem, flat) = binding_problems(magenta, obj, ".glb")
    assert "cannot load texture image 'Image_0' of material 'm'" in problem and "magenta" in problem
    assert "bound none" in flat
    untextured = {**good, "materials": [{"name": "m", "images": []}]}
    assert "bound none" in binding_problems(untextured, obj, ".glb")[0]
    extra = binding_problems(good, RenderObject(**{**obj.__dict__, "textures_decoded": 0}), ".glb")
    assert "that the loaded mesh does not have" in extra[0]
    moved = {**good, "bounds": [[49.0, -1, -1], [51.0, 1, 1]]}
    assert "not where the loaded mesh is" in binding_problems(moved, obj, ".glb")[0]
    assert binding_problems(None, obj, ".glb") == ["the Blender worker sent no import report"]
