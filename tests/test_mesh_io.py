from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trimesh

from rendering import procedural as pg
from rendering.mesh_io import MeshLoadError, connected_components, load_mesh, mesh_stats


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_box_stats_are_exact(tmp_path: Path) -> None:
    box = trimesh.creation.box(extents=(2.0, 1.0, 0.5))
    tex = pg.make_texture("checker", 0)
    p = _write(tmp_path, "box.glb", pg.glb_bytes(pg.textured(box, tex)))
    s = mesh_stats(p)
    assert s["n_faces"] == 12
    assert s["bbox_min"] == pytest.approx([-1.0, -0.5, -0.25])
    assert s["bbox_max"] == pytest.approx([1.0, 0.5, 0.25])
    assert s["surface_area"] == pytest.approx(2 * (2 * 1 + 2 * 0.5 + 1 * 0.5))
    assert s["n_components"] == 1
    assert (s["textures_declared"], s["textures_decoded"], s["has_texture"]) == (1, 1, True)


def test_components_weld_uv_seams_but_count_separate_parts() -> None:
    sphere = pg.textured(pg.make_shape("sphere", 0), pg.make_texture("noise", 0))
    # split every face into its own vertices, as a UV-seamed export does
    split = trimesh.Trimesh(
        sphere.vertices[sphere.faces].reshape(-1, 3),
        np.arange(len(sphere.faces) * 3).reshape(-1, 3),
        process=False,
    )
    assert connected_components(split) == 1
    cube = trimesh.creation.box()
    four = pg.combine([cube] * 4, [(0, 0, 0), (3, 0, 0), (0, 3, 0), (3, 3, 0)])
    assert connected_components(four) == 4


def test_vertex_colours_and_flat_factors_are_not_textures(tmp_path: Path) -> None:
    sphere = pg.make_shape("sphere", 1)
    for name, mesh in (("vc", pg.vertex_colored(sphere, 1)), ("flat", pg.flat_colored(sphere, 1))):
        s = mesh_stats(_write(tmp_path, f"{name}.glb", pg.glb_bytes(mesh)))
        assert s["has_texture"] is False, name
        assert s["textures_decoded"] == 0


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("empty.glb", b"", "empty file"),
        ("garbage.glb", b"glTF\x02\x00\x00\x00" + b"\x00" * 20, "cannot parse"),
        ("text.obj", b"this is not an obj\n", "no triangles"),
    ],
)
def test_unusable_files_raise_with_path_and_cause(
    tmp_path: Path, name: str, data: bytes, message: str
) -> None:
    p = _write(tmp_path, name, data)
    with pytest.raises(MeshLoadError, match=message) as e:
        load_mesh(p)
    assert str(p) in str(e.value)


def test_truncated_glb_and_missing_file(tmp_path: Path) -> None:
    data = pg.glb_bytes(pg.textured(pg.make_shape("torus", 0), pg.make_texture("checker", 0)))
    with pytest.raises(MeshLoadError, match="cannot parse"):
        load_mesh(_write(tmp_path, "t.glb", data[: len(data) // 2]))
    with pytest.raises(MeshLoadError, match="file not found"):
        load_mesh(tmp_path / "nope.glb")


def test_nan_vertices_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "nan.obj"
    p.write_text("v 0 0 0\nv 1 0 0\nv nan 1 0\nf 1 2 3\n")
    with pytest.raises(MeshLoadError, match="NaN or infinite"):
        load_mesh(p)
