"""Tests of rendering.normalize on procedural meshes and hand-made bounds."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from rendering import procedural
from rendering.normalize import (
    Y_UP_TO_Z_UP,
    apply_transform_to_points,
    mesh_bounds,
    normalization_transform,
    normalize_mesh,
)


@pytest.mark.parametrize("shape", procedural.SHAPES)
def test_procedural_mesh_lands_in_box_with_longest_side_two(shape: str) -> None:
    mesh = procedural.make_shape(shape, seed=3)
    mesh.apply_scale([3.0, 0.7, 1.9])
    mesh.apply_translation([10.0, -4.0, 2.5])
    original = mesh.vertices.copy()
    out, transform = normalize_mesh(mesh)
    np.testing.assert_array_equal(mesh.vertices, original)  # input untouched
    lo, hi = out.bounds
    assert (lo >= -1.0).all() and (hi <= 1.0).all()
    extent = hi - lo
    assert extent.max() == pytest.approx(2.0, abs=1e-12)
    axis = int(np.argmax(extent))
    assert lo[axis] == pytest.approx(-1.0, abs=1e-12) and hi[axis] == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose((lo + hi) / 2, 0.0, atol=1e-12)
    # proportions kept (uniform scale), the matrix is what was applied
    np.testing.assert_allclose(
        extent / extent.max(), np.ptp(original, axis=0) / np.ptp(original, axis=0).max()
    )
    np.testing.assert_allclose(out.vertices, apply_transform_to_points(original, transform))
    assert np.linalg.det(transform[:3, :3]) > 0
    assert len(out.faces) == len(mesh.faces)


def test_transform_from_bounds_is_exact() -> None:
    t = normalization_transform([[0.0, 0.0, 0.0], [4.0, 2.0, 1.0]])
    expected = np.array([[0.5, 0, 0, -1], [0, 0.5, 0, -0.5], [0, 0, 0.5, -0.25], [0, 0, 0, 1]])
    np.testing.assert_allclose(t, expected)
    p = apply_transform_to_points([[0, 0, 0], [4, 2, 1]], t)
    np.testing.assert_allclose(p, [[-1, -0.5, -0.25], [1, 0.5, 0.25]])


def test_textured_visuals_survive() -> None:
    mesh = procedural.textured(
        procedural.make_shape("box", 1), procedural.make_texture("checker", 1)
    )
    out, _ = normalize_mesh(mesh)
    uv_in, uv_out = getattr(mesh.visual, "uv", None), getattr(out.visual, "uv", None)
    assert uv_in is not None and uv_out is not None
    np.testing.assert_array_equal(np.asarray(uv_out), np.asarray(uv_in))


def test_unreferenced_vertices_ignored() -> None:
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    far = np.vstack([box.vertices, [[100.0, 100.0, 100.0]]])
    mesh = trimesh.Trimesh(far, box.faces, process=False)
    np.testing.assert_allclose(mesh_bounds(mesh), [[-0.5] * 3, [0.5] * 3])
    np.testing.assert_allclose(normalization_transform(mesh)[:3, :3], 2.0 * np.eye(3))


def test_y_up_source() -> None:
    # a tall (along y) box in glTF's Y-up frame becomes tall along z
    mesh = trimesh.creation.box(extents=(0.5, 2.0, 1.0))
    mesh.apply_translation([0.0, 1.0, 0.0])
    out, transform = normalize_mesh(mesh, source_up="y")
    ext = out.bounds[1] - out.bounds[0]
    np.testing.assert_allclose(ext, [0.5, 1.0, 2.0])
    np.testing.assert_allclose(Y_UP_TO_Z_UP[:3, :3] @ [0, 1, 0], [0, 0, 1])
    np.testing.assert_allclose(Y_UP_TO_Z_UP[:3, :3] @ [0, 0, 1], [0, -1, 0])
    assert np.linalg.det(transform[:3, :3]) > 0
    with pytest.raises(ValueError, match="source_up"):
        normalize_mesh(mesh, source_up="x")  # type: ignore[arg-type]


def test_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        normalize_mesh(trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=int)))
    with pytest.raises(ValueError, match="empty"):
        normalization_transform(trimesh.Trimesh(np.eye(3), np.zeros((0, 3), dtype=int)))
    box = trimesh.creation.box()
    verts = box.vertices.copy()
    verts[0, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        normalize_mesh(trimesh.Trimesh(verts, box.faces, process=False))
    with pytest.raises(ValueError, match="NaN or infinite"):
        normalization_transform(np.array([[0.0, 0.0, 0.0], [np.inf, 1.0, 1.0]]))
    with pytest.raises(ValueError, match="shape"):
        normalization_transform([[0, 0, 0]])
    with pytest.raises(ValueError, match="exceeds"):
        normalization_transform([[1, 0, 0], [0, 1, 1]])
    with pytest.raises(ValueError, match="degenerate"):
        normalization_transform([[1, 1, 1], [1, 1, 1]])
