"""The ``cpu`` rendering backend (software rasterizer) against analytic expectations.

Cameras are ``camera_from_spherical(0, 0, d, fov, size)``: on the +x axis looking at the origin,
so image right is world +y and image up is world +z. Odd image sizes put the centre of pixel
``(size // 2, size // 2)`` exactly on the principal point (the optical axis).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from trimesh.visual.material import PBRMaterial, SimpleMaterial
from trimesh.visual.texture import TextureVisuals

import rendering.rasterizer as raster
from rendering import procedural
from rendering.backends import make_backend, prepare_object
from rendering.backends.base import RenderError, RenderObject, RenderSettings, View
from rendering.backends.cpu import CpuBackend, RasterMesh, rasterize, sample_texture
from rendering.cameras import Camera, camera_from_spherical
from rendering.mesh_io import MeshLoadError, load_scene

FOV = 50.0
SIZE = 129
C = SIZE // 2  # the pixel whose centre is on the optical axis

RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)


def side_camera(distance: float = 3.0, size: int | tuple[int, int] = SIZE) -> Camera:
    return camera_from_spherical(0.0, 0.0, distance, FOV, size)


def check_view_invariants(view: View) -> None:
    h, w = view.camera.height, view.camera.width
    assert view.rgba.shape == (h, w, 4) and view.rgba.dtype == np.float32
    assert view.depth.shape == (h, w) and view.depth.dtype == np.float32
    assert view.normal.shape == (h, w, 3) and view.normal.dtype == np.float32
    alpha = view.rgba[..., 3]
    assert set(np.unique(alpha).tolist()) <= {0.0, 1.0}  # no anti-aliasing
    mask = view.mask
    assert np.isfinite(view.depth[mask]).all() and (view.depth[mask] > 0).all()
    assert np.isposinf(view.depth[~mask]).all()
    assert (view.rgba[~mask] == 0).all() and (view.normal[~mask] == 0).all()
    assert np.allclose(np.linalg.norm(view.normal[mask], axis=-1), 1.0, atol=1e-5)
    assert (view.rgba >= 0).all() and (view.rgba <= 1).all()


def centred_square(half: float) -> tuple[int, int]:
    """First and last pixel index whose centre lies in [c - half, c + half] (c = SIZE / 2)."""
    c = SIZE / 2.0
    return math.ceil(c - half - 0.5), math.floor(c + half - 0.5)


def quad(half: float = 0.8, visual: TextureVisuals | None = None) -> trimesh.Trimesh:
    """Square in the plane x = 0 facing +x; corners (y, z) = (-h,-h), (h,-h), (h,h), (-h,h)
    with UVs (0,0), (1,0), (1,1), (0,1): u along image right, v along image up."""
    vertices = np.array(
        [[0.0, -half, -half], [0.0, half, -half], [0.0, half, half], [0.0, -half, half]]
    )
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    return trimesh.Trimesh(vertices, faces, visual=visual, process=False)


def quadrant_texture() -> Image.Image:
    """64x64 image: top-left red, top-right green, bottom-left blue, bottom-right yellow."""
    img = np.zeros((64, 64, 3), np.uint8)
    img[:32, :32], img[:32, 32:], img[32:, :32], img[32:, 32:] = RED, GREEN, BLUE, YELLOW
    return Image.fromarray(img, "RGB")


def textured_quad(factor: tuple[float, ...] | None = None) -> trimesh.Trimesh:
    material = PBRMaterial(baseColorTexture=quadrant_texture(), baseColorFactor=factor)
    uv = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    return quad(visual=TextureVisuals(uv=uv, material=material))


def quadrant_colours(view: View, offset: int = 18) -> dict[str, np.ndarray]:
    """Mean RGB of 5x5 patches centred ``offset`` pixels diagonally from the image centre."""

    def patch(dr: int, dc: int) -> np.ndarray:
        r, c = C + dr, C + dc
        block = view.rgba[r - 2 : r + 3, c - 2 : c + 3, :3].reshape(-1, 3)
        assert np.ptp(block, axis=0).max() < 1e-6  # uniform inside a texture block
        return np.asarray(block.mean(axis=0))

    return {
        "top_left": patch(-offset, -offset),
        "top_right": patch(-offset, offset),
        "bottom_left": patch(offset, -offset),
        "bottom_right": patch(offset, offset),
    }


def assert_quadrants(view: View, scale: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> None:
    q = quadrant_colours(view)
    s = np.array(scale)
    np.testing.assert_allclose(q["top_left"], np.array(RED) / 255 * s, atol=4e-3)
    np.testing.assert_allclose(q["top_right"], np.array(GREEN) / 255 * s, atol=4e-3)
    np.testing.assert_allclose(q["bottom_left"], np.array(BLUE) / 255 * s, atol=4e-3)
    np.testing.assert_allclose(q["bottom_right"], np.array(YELLOW) / 255 * s, atol=4e-3)


# --- geometry: cube and sphere ---------------------------------------------------------------


def test_cube_depth_normal_and_exact_silhouette() -> None:
    cam = side_camera()
    view = rasterize(trimesh.creation.box(extents=(1.0, 1.0, 1.0)), cam)
    check_view_invariants(view)
    # the front face x = 0.5 is at planar depth 3 - 0.5 on the whole square
    assert view.depth[C, C] == pytest.approx(2.5, abs=1e-4)
    np.testing.assert_allclose(view.depth[view.mask], 2.5, atol=1e-4)
    np.testing.assert_allclose(view.normal[C, C], [1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(view.rgba[C, C], [0.8, 0.8, 0.8, 1.0], atol=1e-6)  # no visual
    # silhouette = the front face: half-size f * 0.5 / 2.5 pixels around the centre
    half = cam.focal_px() * 0.5 / 2.5
    lo, hi = centred_square(half)
    rows = np.flatnonzero(view.mask.any(axis=1))
    cols = np.flatnonzero(view.mask.any(axis=0))
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (lo, hi, lo, hi)
    assert view.mask[lo : hi + 1, lo : hi + 1].all()
    analytic = (2 * half) ** 2
    assert abs(view.mask.sum() - analytic) <= 4 * 2 * half  # one pixel row around
    assert view.coverage == pytest.approx(view.mask.sum() / SIZE**2)


def test_sphere_depth_area_and_normals() -> None:
    cam = side_camera()
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    view = rasterize(mesh, cam)
    check_view_invariants(view)
    # inscribed polyhedron: the surface on the axis is at most a facet's sagitta behind r = 1
    assert 2.0 - 1e-6 <= view.depth[C, C] <= 2.0 + 3e-3
    f = cam.focal_px()
    radius_px = f * math.tan(math.asin(1.0 / 3.0))
    area = math.pi * radius_px**2
    assert abs(view.mask.sum() - area) <= 0.5 * 2 * math.pi * radius_px
    # the disk is centred on the principal point
    rr, cc = np.nonzero(view.mask)
    assert abs(rr.mean() + 0.5 - SIZE / 2) < 0.2 and abs(cc.mean() + 0.5 - SIZE / 2) < 0.2

    # analytic normal: where the pixel-centre ray meets the unit sphere
    jj, ii = np.mgrid[0:SIZE, 0:SIZE]
    x = (ii + 0.5 - SIZE / 2) / f
    y = (jj + 0.5 - SIZE / 2) / f
    inner = np.hypot(x, y) * f < 0.85 * radius_px
    d_cv = np.stack([x[inner], y[inner], np.ones(inner.sum())], axis=1)
    c2w_cv = np.linalg.inv(cam.w2c_opencv())
    d = d_cv @ c2w_cv[:3, :3].T
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    eye = cam.position
    b = d @ eye
    t = -b - np.sqrt(b**2 - (eye @ eye - 1.0))
    normal = eye + t[:, None] * d
    cosang = np.clip((normal * view.normal[inner]).sum(axis=1), -1, 1)
    angles = np.degrees(np.arccos(cosang))
    assert angles.max() < 4.0 and angles.mean() < 2.0
    # depth of the polyhedron is at or behind the sphere, never in front
    sphere_depth = t * (d @ c2w_cv[:3, 2])
    assert (view.depth[inner] >= sphere_depth - 1e-5).all()
    assert (view.depth[inner] <= sphere_depth + 5e-3).all()


def test_non_square_image_is_centred() -> None:
    cam = side_camera(size=(161, 97))
    view = rasterize(trimesh.creation.icosphere(subdivisions=3, radius=0.5), cam)
    check_view_invariants(view)
    rr, cc = np.nonzero(view.mask)
    assert abs(rr.mean() + 0.5 - 97 / 2) < 0.2 and abs(cc.mean() + 0.5 - 161 / 2) < 0.2
    assert np.ptp(rr) == pytest.approx(np.ptp(cc), abs=1)  # square pixels: round disk


def test_both_windings_render_identically() -> None:
    cam = camera_from_spherical(35.0, 25.0, 3.0, FOV, 65)
    box = trimesh.creation.box(extents=(1.0, 0.8, 0.6))
    flipped = trimesh.Trimesh(box.vertices, box.faces[:, ::-1], process=False)
    a, b = rasterize(box, cam), rasterize(flipped, cam)
    assert a.mask.any()
    np.testing.assert_array_equal(a.mask, b.mask)  # coverage is exact
    np.testing.assert_allclose(a.rgba, b.rgba, atol=1e-6)  # rounding of the weights only
    np.testing.assert_allclose(a.depth[a.mask], b.depth[b.mask], rtol=1e-6)
    np.testing.assert_allclose(a.normal, b.normal, atol=1e-6)
    # normals face the camera: n . (eye - p) > 0
    assert (a.normal[a.mask] @ cam.position > 0).all()


def test_quad_diagonal_leaves_no_cracks() -> None:
    """The shared diagonal of the quad passes exactly through pixel centres: each centre on it
    must be covered (by either triangle), the interior has no holes."""
    cam = side_camera()
    view = rasterize(quad(0.8), cam)
    half = cam.focal_px() * 0.8 / 3.0
    lo, hi = centred_square(half)
    assert view.mask.sum() == (hi - lo + 1) ** 2
    assert view.mask[lo : hi + 1, lo : hi + 1].all()


def test_no_cracks_where_edges_run_through_pixel_centres() -> None:
    """A heightfield whose vertices project (up to rounding) onto pixel centres, so that the
    centres on its horizontal, vertical and diagonal edges sit on an edge in exact arithmetic:
    every interior centre must be covered, and nothing outside the grid."""
    cam = camera_from_spherical(33.0, 17.0, 3.0, FOV, 128)
    k, c2w_cv = cam.intrinsics(), np.linalg.inv(cam.w2c_opencv())
    n, step, first = 24, 4, 16
    centres = np.arange(n + 1) * step + first + 0.5
    uu, vv = np.meshgrid(centres, centres)
    z = np.random.default_rng(0).uniform(2.0, 4.0, uu.shape)  # depth varies per vertex
    cam_pts = np.stack([(uu - k[0, 2]) / k[0, 0] * z, (vv - k[1, 2]) / k[1, 1] * z, z], -1)
    world = cam_pts.reshape(-1, 3) @ c2w_cv[:3, :3].T + c2w_cv[:3, 3]
    idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    a, b, c, d = (
        idx[:-1, :-1].ravel(),
        idx[:-1, 1:].ravel(),
        idx[1:, 1:].ravel(),
        idx[1:, :-1].ravel(),
    )
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    view = rasterize(trimesh.Trimesh(world, faces, process=False), cam)
    last = first + n * step
    assert view.mask[first + 1 : last, first + 1 : last].all()
    assert view.mask.sum() <= (last - first + 1) ** 2  # nothing outside the grid's box
    assert not view.mask[:first].any() and not view.mask[:, :first].any()


def test_shared_edges_get_bitwise_identical_edge_functions() -> None:
    """The crack-free guarantee: both triangles of a shared edge evaluate the same canonical
    edge function (same endpoint, same edge vector) and use opposite signs."""
    rng = np.random.default_rng(1)
    vertices = np.array(
        [[0.0, -0.7, -0.6], [0.1, 0.8, -0.5], [-0.2, 0.6, 0.9], [0.05, -0.9, 0.7]]
    ) + rng.normal(scale=0.01, size=(4, 3))
    mesh = RasterMesh.from_geometry(trimesh.Trimesh(vertices, [[0, 1, 2], [0, 2, 3]]))
    s = raster._setup(mesh, camera_from_spherical(10.0, 5.0, 3.0, FOV, 64))
    assert s.face.tolist() == [0, 1]
    # shared edge 0-2: opposite corner 1 in face 0 (k=1), opposite corner 3 in face 1 (k=2)
    for field in ("ax", "ay", "dx", "dy"):  # (edge, face) layout
        assert getattr(s, field)[1, 0].item() == getattr(s, field)[2, 1].item()
    assert s.scale[1, 0].item() * s.scale[2, 1].item() < 0


def test_chunked_rasterization_matches_single_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    cam = camera_from_spherical(20.0, 30.0, 2.5, FOV, 97)
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.9)
    mesh.visual.face_colors = np.random.default_rng(0).integers(0, 256, (len(mesh.faces), 4))
    whole = rasterize(mesh, cam)
    monkeypatch.setattr(raster, "PAIR_BUDGET", 1500)  # about 10 chunks
    pieces = rasterize(mesh, cam)
    np.testing.assert_array_equal(whole.rgba, pieces.rgba)
    np.testing.assert_array_equal(whole.depth, pieces.depth)
    np.testing.assert_array_equal(whole.normal, pieces.normal)


# --- visibility and image orientation ----------------------------------------------------------


def two_triangles(near_first: bool) -> trimesh.Trimesh:
    near = [[0.5, -0.6, -0.5], [0.5, 0.6, -0.5], [0.5, 0.0, 0.7]]  # depth 2.5, red
    far = [[-0.5, -1.4, -1.0], [-0.5, 1.4, -1.0], [-0.5, 0.0, 1.4]]  # depth 3.5, blue
    tris = [near, far] if near_first else [far, near]
    colours = [[255, 0, 0, 255], [0, 0, 255, 255]]
    if not near_first:
        colours = colours[::-1]
    return trimesh.Trimesh(
        np.array(tris).reshape(-1, 3),
        np.arange(6).reshape(2, 3),
        face_colors=np.array(colours, np.uint8),
        process=False,
    )


@pytest.mark.parametrize("near_first", [True, False])
def test_nearer_triangle_wins_regardless_of_order(near_first: bool) -> None:
    view = rasterize(two_triangles(near_first), side_camera())
    np.testing.assert_allclose(view.rgba[C, C], [1.0, 0.0, 0.0, 1.0], atol=1e-6)
    assert view.depth[C, C] == pytest.approx(2.5, abs=1e-5)
    # somewhere only the far (larger) triangle is visible
    blue = (view.rgba[..., 2] == 1.0) & view.mask
    assert blue.any() and np.allclose(view.depth[blue], 3.5, atol=1e-5)


@pytest.mark.parametrize("budget", [raster.PAIR_BUDGET, 64])
def test_exact_depth_ties_go_to_the_lowest_face_index(
    budget: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(raster, "PAIR_BUDGET", budget)  # 64: the two faces in different chunks
    tri = np.array([[0.0, -0.5, -0.5], [0.0, 0.5, -0.5], [0.0, 0.0, 0.5]])
    for first, second in [(RED, BLUE), (BLUE, RED)]:
        mesh = trimesh.Trimesh(
            np.concatenate([tri, tri]),
            np.arange(6).reshape(2, 3),
            face_colors=np.array([[*first, 255], [*second, 255]], np.uint8),
            process=False,
        )
        view = rasterize(mesh, side_camera())
        colours = view.rgba[view.mask][:, :3]
        np.testing.assert_allclose(colours, np.broadcast_to(np.array(first) / 255, colours.shape))


def test_image_rows_and_columns_follow_world_up_and_right() -> None:
    cam = side_camera()  # image up = +z, image right = +y
    small = trimesh.creation.box(extents=(0.2, 0.2, 0.2))
    for offset, check in [
        ((0.0, 0.0, 0.6), lambda r, c: r.max() < SIZE // 2),  # +z: upper half (row 0 = top)
        ((0.0, 0.0, -0.6), lambda r, c: r.min() > SIZE // 2),
        ((0.0, 0.6, 0.0), lambda r, c: c.min() > SIZE // 2),  # +y: right half
        ((0.0, -0.6, 0.0), lambda r, c: c.max() < SIZE // 2),
    ]:
        mesh = small.copy()
        mesh.apply_translation(offset)
        rows, cols = np.nonzero(rasterize(mesh, cam).mask)
        assert rows.size > 0 and check(rows, cols), offset


def test_scene_graph_transforms_are_applied() -> None:
    scene = trimesh.Scene()
    scene.add_geometry(
        trimesh.creation.box(extents=(1.0, 1.0, 1.0)),
        transform=trimesh.transformations.translation_matrix([1.0, 0.0, 0.0]),
    )
    view = rasterize(scene, side_camera())
    assert view.depth[C, C] == pytest.approx(1.5, abs=1e-5)  # front face now at x = 1.5
    # the same scene rendered by the backend with an extra transform (here: shift back)
    backend = CpuBackend(RenderSettings())
    shifted = RasterMesh.from_geometry(
        scene, trimesh.transformations.translation_matrix([-1.0, 0.0, 0.0])
    )
    assert raster.rasterize_raster_mesh(shifted, side_camera()).depth[C, C] == pytest.approx(2.5)
    assert backend.render_scene(scene, [side_camera()])[0].depth[C, C] == pytest.approx(1.5)


def test_empty_mesh_renders_transparent() -> None:
    view = rasterize(trimesh.Scene(), side_camera(size=33))
    check_view_invariants(view)
    assert view.coverage == 0.0


def test_non_finite_vertices_raise_render_error() -> None:
    mesh = trimesh.creation.box()
    vertices = np.array(mesh.vertices)
    vertices[0, 1] = np.nan
    bad = trimesh.Trimesh(vertices, mesh.faces, process=False)
    with pytest.raises(RenderError, match="NaN or infinite"):
        rasterize(bad, side_camera(size=33))
    with pytest.raises(RenderError, match="NaN or infinite"):
        CpuBackend().render_scene(trimesh.Scene(bad), [side_camera(size=33)])


# --- colour: textures, factors, vertex and face colours ---------------------------------------


def test_sample_texture_bilinear_and_repeat() -> None:
    tex = torch.tensor([[[0, 0, 0], [200, 0, 0]], [[0, 100, 0], [0, 0, 50]]], dtype=torch.uint8)
    # texel centres: column c, row r at (u, v) = ((c + 0.5) / 2, 1 - (r + 0.5) / 2)
    uv = torch.tensor([[0.25, 0.75], [0.75, 0.75], [0.25, 0.25], [0.75, 0.25], [0.5, 0.75]])
    out = sample_texture(tex, uv).numpy()
    expected = np.array([[0, 0, 0], [200, 0, 0], [0, 100, 0], [0, 0, 50], [100, 0, 0]], np.float64)
    np.testing.assert_allclose(out, expected / 255, atol=1e-6)
    # repeat wrapping: u = 0 blends column 0 with the last column; u + 1 is the same point
    wrap = sample_texture(tex, torch.tensor([[0.0, 0.75], [1.0, 0.75], [-3.0, 0.75]])).numpy()
    np.testing.assert_allclose(wrap, np.tile([[100 / 255, 0, 0]], (3, 1)), atol=1e-6)


def test_texture_quadrants_land_in_image_quadrants() -> None:
    """trimesh UVs have v up (origin bottom-left): texture row 0 (top) maps to v = 1, which
    the quad places at the top of the image."""
    view = rasterize(textured_quad(), side_camera())
    check_view_invariants(view)
    assert_quadrants(view)


def test_texture_convention_survives_a_glb_round_trip(tmp_path: Path) -> None:
    """trimesh flips glTF's v on export and on load; the render must not change."""
    path = tmp_path / "quad.glb"
    path.write_bytes(procedural.glb_bytes(textured_quad()))
    view = rasterize(load_scene(path), side_camera())
    assert_quadrants(view)


def test_texture_convention_for_obj_files(tmp_path: Path) -> None:
    """OBJ ``vt`` has its origin at the bottom-left too; trimesh loads a ``SimpleMaterial``."""
    (tmp_path / "quad.obj").write_text(procedural.obj_text(textured_quad(), "quad.mtl"))
    (tmp_path / "quad.mtl").write_text(procedural.mtl_text("quad.png"))
    (tmp_path / "quad.png").write_bytes(procedural.png_bytes(quadrant_texture()))
    scene = load_scene(tmp_path / "quad.obj")
    assert any(isinstance(g.visual.material, SimpleMaterial) for g in scene.geometry.values())
    assert_quadrants(rasterize(scene, side_camera()))


def test_base_color_factor_multiplies_the_texture() -> None:
    view = rasterize(textured_quad(factor=(0.5, 1.0, 0.25, 1.0)), side_camera())
    assert_quadrants(view, scale=(128 / 255, 1.0, 64 / 255))  # factors stored as uint8


def test_flat_pbr_factor_and_simple_material() -> None:
    cam = side_camera()
    flat = quad(visual=TextureVisuals(material=PBRMaterial(baseColorFactor=[0, 255, 255, 255])))
    np.testing.assert_allclose(rasterize(flat, cam).rgba[C, C], [0, 1, 1, 1], atol=1e-6)
    diffuse = quad(visual=TextureVisuals(material=SimpleMaterial(diffuse=[255, 0, 255, 255])))
    np.testing.assert_allclose(rasterize(diffuse, cam).rgba[C, C], [1, 0, 1, 1], atol=1e-6)
    # an OBJ-style material with an image: the image alone gives the colour (Kd ignored)
    uv = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    simple = SimpleMaterial(image=quadrant_texture(), diffuse=[102, 102, 102, 255])
    assert_quadrants(rasterize(quad(visual=TextureVisuals(uv=uv, material=simple)), cam))


def test_vertex_colours_interpolate_to_the_centroid() -> None:
    # centroid at the origin, which the centre pixel's ray hits exactly
    vertices = np.array([[0.0, -0.6, -0.4], [0.0, 0.6, -0.4], [0.0, 0.0, 0.8]])
    colours = np.array([[255, 0, 0, 255], [0, 255, 0, 255], [0, 0, 255, 255]], np.uint8)
    mesh = trimesh.Trimesh(vertices, [[0, 1, 2]], vertex_colors=colours, process=False)
    view = rasterize(mesh, side_camera())
    np.testing.assert_allclose(view.rgba[C, C, :3], [1 / 3, 1 / 3, 1 / 3], atol=1e-5)
    # the vertex projecting to the top of the image (+z) is blue
    rows, cols = np.nonzero(view.mask)
    top = view.rgba[rows.min(), cols[rows == rows.min()][0], :3]
    assert top[2] > 0.9


def test_attributes_are_perspective_correct() -> None:
    """A triangle receding in depth, white at v0 and black elsewhere: the red channel must be
    v0's barycentric coordinate of the 3D point hit by each pixel's ray."""
    cam = side_camera()
    tri = np.array([[1.5, -0.3, -0.3], [-3.0, 1.5, -1.0], [-3.0, -1.0, 1.5]])
    colours = np.array([[255, 255, 255, 255], [0, 0, 0, 255], [0, 0, 0, 255]], np.uint8)
    view = rasterize(trimesh.Trimesh(tri, [[0, 1, 2]], vertex_colors=colours, process=False), cam)
    jj, ii = np.nonzero(view.mask)
    assert jj.size > 500
    f = cam.focal_px()
    d_cv = np.stack([(ii + 0.5 - SIZE / 2) / f, (jj + 0.5 - SIZE / 2) / f, np.ones(jj.size)], 1)
    d = d_cv @ np.linalg.inv(cam.w2c_opencv())[:3, :3].T
    eye = cam.position
    n = np.cross(tri[1] - tri[0], tri[2] - tri[0])
    t = ((tri[0] - eye) @ n) / (d @ n)
    p = eye + t[:, None] * d
    # barycentric of v0 in 3D: area(p, v1, v2) / area(v0, v1, v2), signed along n
    lam0 = (np.cross(tri[1] - p, tri[2] - p) @ n) / (n @ n)
    np.testing.assert_allclose(view.rgba[jj, ii, 0], lam0, atol=2e-4)
    # the planar depth is that of the hit point
    np.testing.assert_allclose(view.depth[jj, ii], t * (d @ -cam.c2w[:3, 2]), rtol=1e-5)
    # screen-space (affine) interpolation would differ a lot: the test discriminates
    proj = (tri - eye) @ -cam.c2w[:3, 2]
    assert proj.max() / proj.min() > 3


# --- the backend: files, transforms, errors ----------------------------------------------------


def test_backend_renders_a_procedural_textured_glb(tmp_path: Path) -> None:
    mesh = procedural.textured(
        procedural.make_shape("sphere", 3), procedural.make_texture("checker", 3)
    )
    path = tmp_path / "object.glb"
    path.write_bytes(procedural.glb_bytes(mesh))
    obj, _ = prepare_object(path)
    cameras = [camera_from_spherical(az, el, 4.0, 30.0, 96) for az, el in [(0, 30), (120, -30)]]
    backend = make_backend("cpu", RenderSettings())
    assert isinstance(backend, CpuBackend) and backend.name == "cpu"
    views = backend.render(obj, cameras)
    backend.close()
    assert len(views) == 2
    for view, cam in zip(views, cameras, strict=True):
        assert view.camera is cam
        check_view_invariants(view)
        assert view.coverage > 0.2
        # the checker texture shows: several distinct colours on the object
        colours = np.unique(np.round(view.rgba[view.mask][:, :3] * 255), axis=0)
        assert len(colours) > 10
        # normalized into [-1, 1]^3: depth within distance -/+ sqrt(3)
        assert view.depth[view.mask].min() > 4.0 - math.sqrt(3)
        assert view.depth[view.mask].max() < 4.0 + math.sqrt(3)


def test_y_up_file_becomes_z_up_world(tmp_path: Path) -> None:
    path = tmp_path / "tall.glb"
    path.write_bytes(procedural.glb_bytes(trimesh.creation.box(extents=(0.5, 2.0, 0.5))))
    obj, scene = prepare_object(path)
    cam = camera_from_spherical(0.0, 0.0, 4.0, FOV, 97)
    view = CpuBackend(RenderSettings()).render(obj, [cam])[0]
    rows, cols = np.nonzero(view.mask)
    assert np.ptp(rows) > 3 * np.ptp(cols)  # tall in world Z (image up)
    # normalized: height 2 at depth ~3.75 -> about 2 f / 3.75 pixels tall
    assert np.ptp(rows) == pytest.approx(2 * cam.focal_px() / 3.75, rel=0.1)
    # render_scene with the transform applied by the caller gives the same view
    world = scene.copy()
    world.apply_transform(obj.file_to_world)
    again = CpuBackend().render_scene(world, [cam])[0]
    np.testing.assert_allclose(again.depth, view.depth, atol=1e-5)
    np.testing.assert_array_equal(again.mask, view.mask)


def test_lit_is_rendered_unlit_and_threads_setting(tmp_path: Path) -> None:
    path = tmp_path / "object.glb"
    path.write_bytes(procedural.glb_bytes(procedural.vertex_colored(trimesh.creation.box(), 1)))
    obj, _ = prepare_object(path)
    cam = camera_from_spherical(30.0, 20.0, 4.0, 30.0, 48)
    before = torch.get_num_threads()
    try:
        lit = CpuBackend(RenderSettings(shading="lit", threads=1)).render(obj, [cam])[0]
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    unlit = CpuBackend(RenderSettings(shading="unlit")).render(obj, [cam])[0]
    np.testing.assert_array_equal(lit.rgba, unlit.rgba)
    assert lit.coverage > 0


def test_unreadable_files_raise_render_error_naming_the_file(tmp_path: Path) -> None:
    backend = CpuBackend()
    missing = RenderObject(path=tmp_path / "missing.glb", file_to_world=np.eye(4))
    with pytest.raises(RenderError, match=r"missing\.glb") as e:
        backend.render(missing, [side_camera(size=16)])
    assert isinstance(e.value.__cause__, MeshLoadError)
    garbage = tmp_path / "garbage.glb"
    garbage.write_bytes(b"glTF not really")
    with pytest.raises(RenderError, match=r"garbage\.glb"):
        backend.render(RenderObject(path=garbage, file_to_world=np.eye(4)), [side_camera(size=16)])
