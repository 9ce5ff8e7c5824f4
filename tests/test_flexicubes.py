"""FlexiCubes extraction, surface-only evaluation, texture export and export axes (CPU, fast)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from instantmesh import build_model, get_variant
from instantmesh.cameras import fov_to_intrinsics, spherical_camera_poses
from instantmesh.flexicubes import (
    CHECK_TABLE,
    CUBE_EDGES,
    DMC_TABLE,
    NUM_VD_TABLE,
    flexicubes_extract,
    grid_axis,
    surface_cube_coords,
    voxel_grid,
)
from instantmesh.mesh_export import (
    Y_UP_FILE_FROM_WORLD,
    export_textured_mesh,
    export_vertex_colored_mesh,
    rasterize_uv_atlas,
    write_textured_mesh,
)
from instantmesh.mesh_extraction import (
    MeshFields,
    TriplaneMeshFields,
    extract_flexicubes_mesh,
    flexicubes_from_fields,
    model_deformation_bound,
    tanh_deformation_bound,
)
from instantmesh.meshing import ColoredMesh
from instantmesh.model import InstantMesh
from instantmesh.volume_rendering import rays_from_cameras
from rendering.backends.cpu import rasterize, sample_texture
from rendering.cameras import camera_from_spherical
from rendering.mesh_io import load_world_mesh

SCALE = 2.1


class AnalyticFields(MeshFields):
    """An analytic SDF with zero deformation, zero raw weights and colour (p + 1) / 2."""

    def __init__(self, sdf_fn, seed: int | None = None) -> None:  # type: ignore[no-untyped-def]
        self.sdf_fn = sdf_fn
        self.gen = None if seed is None else torch.Generator().manual_seed(seed)

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        return self.sdf_fn(points)

    def raw_deformation(self, points: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(points)

    def raw_weights(self, corner_points: torch.Tensor) -> torch.Tensor:
        return torch.zeros(corner_points.shape[0], 21)

    def rgb(self, points: torch.Tensor) -> torch.Tensor:
        return ((points + 1) / 2).clamp(0, 1)


def sphere_sdf(points: torch.Tensor, radius: float = 0.6) -> torch.Tensor:
    return points.norm(dim=-1) - radius


def box_sdf(points: torch.Tensor, half: float = 0.5) -> torch.Tensor:
    q = points.abs() - half
    return q.clamp_min(0).norm(dim=-1) + q.max(dim=-1).values.clamp_max(0)


def bumps_sdf(points: torch.Tensor) -> torch.Tensor:
    """Asymmetric under every axis flip: a body with bumps towards +x, +z and +y."""

    def ball(c: tuple[float, float, float], r: float) -> torch.Tensor:
        return (points - torch.tensor(c)).norm(dim=-1) - r

    return torch.minimum(
        torch.minimum(ball((0.0, 0.0, 0.0), 0.35), ball((0.55, 0.0, 0.0), 0.22)),
        torch.minimum(ball((0.0, 0.0, 0.6), 0.2), ball((0.0, 0.5, -0.2), 0.14)),
    )


def analytic_mesh(sdf_fn, res: int) -> ColoredMesh:  # type: ignore[no-untyped-def]
    result = flexicubes_from_fields(AnalyticFields(sdf_fn), res, SCALE, tanh_deformation_bound(res))
    v = result.vertices.numpy()
    colors = (np.clip((v + 1) / 2, 0, 1) * 255).astype(np.uint8)
    return ColoredMesh(v.astype(np.float32), result.faces.numpy(), colors)


# --------------------------------------------------------------------------- tables and grid


def test_dmc_tables_partition_the_crossing_edges() -> None:
    for case in range(256):
        inside = [(case >> c) & 1 for c in range(8)]
        crossing = {e for e, (a, b) in enumerate(CUBE_EDGES) if inside[a] != inside[b]}
        groups = [
            [int(e) for e in DMC_TABLE[case, g] if e >= 0] for g in range(int(NUM_VD_TABLE[case]))
        ]
        flat = [e for g in groups for e in g]
        assert sorted(flat) == sorted(crossing), case
        assert all(len(g) >= 3 for g in groups)
        assert (DMC_TABLE[case, int(NUM_VD_TABLE[case]) :] == -1).all()
    # corner 0 alone; two face-diagonal inside corners stay separate; the complement of two
    # opposite corners gets one vertex around each outside corner
    assert DMC_TABLE[1, 0, :3].tolist() == [0, 3, 8] and NUM_VD_TABLE[1] == 1
    assert NUM_VD_TABLE[0b110] == 2 and NUM_VD_TABLE[255 - 0b110] == 1
    assert NUM_VD_TABLE[0b10000001] == 2 and NUM_VD_TABLE[0b01111110] == 2
    assert NUM_VD_TABLE.max() == 4 and NUM_VD_TABLE[0] == NUM_VD_TABLE[255] == 0
    checked = torch.nonzero(CHECK_TABLE[:, 0]).squeeze(1)
    assert checked.numel() == 36
    assert (CHECK_TABLE[checked, 4] == 255 - checked).all()
    assert (CHECK_TABLE[checked, 1:4].abs().sum(1) == 1).all()


def test_grid_layout_and_upstream_rounding() -> None:
    verts, cubes, coords = voxel_grid(3, SCALE)
    assert verts.shape == (64, 3) and cubes.shape == (27, 8) and coords.shape == (27, 3)
    assert verts.dtype == torch.float32
    torch.testing.assert_close(verts.min(0).values, torch.full((3,), -1.05))
    torch.testing.assert_close(verts.max(0).values, torch.full((3,), 1.05))
    # x-major ids; corner c of a cube is offset (c & 1, c >> 1 & 1, c >> 2 & 1)
    assert verts[1, 2] > verts[0, 2] and verts[4, 1] > verts[0, 1] and verts[16, 0] > verts[0, 0]
    assert cubes[0].tolist() == [0, 16, 4, 20, 1, 17, 5, 21]
    assert coords[1].tolist() == [0, 0, 1]
    # upstream rounds i / res to 5 decimals (half to even) before centring and scaling
    axis = grid_axis(128, 1.0)
    assert float(axis[2]) == float(torch.tensor(0.01562) - 0.5)
    assert float(axis[1]) == float(torch.tensor(0.00781) - 0.5)


# --------------------------------------------------------------------------- analytic SDFs


def _grid_sdf(sdf_fn, res: int):  # type: ignore[no-untyped-def]
    verts, cubes, coords = voxel_grid(res, SCALE)
    return verts, sdf_fn(verts), cubes, coords


def _crossing_edges(sdf: torch.Tensor, res: int) -> int:
    inside = (sdf < 0).reshape(res + 1, res + 1, res + 1)
    return int(
        (inside[1:] != inside[:-1]).sum()
        + (inside[:, 1:] != inside[:, :-1]).sum()
        + (inside[:, :, 1:] != inside[:, :, :-1]).sum()
    )


@pytest.mark.parametrize("res", [12, 24])
def test_sphere_is_watertight_on_the_zero_level_set(res: int) -> None:
    verts, sdf, cubes, coords = _grid_sdf(sphere_sdf, res)
    v, f = flexicubes_extract(verts, sdf, cubes, coords, res)
    cell = SCALE / res
    assert v.dtype == torch.float32 and f.dtype == torch.long
    assert float(sphere_sdf(v).abs().max()) < 0.15 * cell  # O(cell^2 / radius) chord error
    mesh = trimesh.Trimesh(v.numpy(), f.numpy(), process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0  # right-hand normals point outwards (towards positive SDF)
    assert abs(mesh.volume / (4 / 3 * np.pi * 0.6**3) - 1) < 0.1
    # one quad (two triangles) per sign-changing grid edge, one vertex per surface cube
    assert f.shape[0] == 2 * _crossing_edges(sdf, res)
    assert v.shape[0] == surface_cube_coords(sdf.reshape((res + 1,) * 3)).shape[0]


def test_face_count_scales_with_the_square_of_the_resolution() -> None:
    counts = {}
    for res in (16, 32, 64):
        verts, sdf, cubes, coords = _grid_sdf(sphere_sdf, res)
        counts[res] = flexicubes_extract(verts, sdf, cubes, coords, res)[1].shape[0]
    assert 3.5 < counts[32] / counts[16] < 4.5
    assert 3.5 < counts[64] / counts[32] < 4.5


def test_box_surface_is_close_to_the_level_set_and_closed() -> None:
    res = 20
    verts, sdf, cubes, coords = _grid_sdf(box_sdf, res)
    v, f = flexicubes_extract(verts, sdf, cubes, coords, res)
    cell = SCALE / res
    # flat faces are exact; uniform weights round the sharp edges and corners by < 0.6 cell
    # (the learned weights exist to move those vertices)
    near_feature = (v.abs() > 0.5 - cell).sum(dim=1) >= 2
    assert float(box_sdf(v[~near_feature]).abs().max()) < 1e-5
    assert float(box_sdf(v).abs().max()) < 0.6 * cell
    mesh = trimesh.Trimesh(v.numpy(), f.numpy(), process=False)
    assert mesh.is_watertight and mesh.volume > 0
    assert abs(mesh.volume - 1.0) < 0.1


def test_weights_and_deformation_move_vertices_without_changing_topology() -> None:
    res = 10
    verts, sdf, cubes, coords = _grid_sdf(sphere_sdf, res)
    gen = torch.Generator().manual_seed(0)
    v0, f0 = flexicubes_extract(verts, sdf, cubes, coords, res)
    raw = torch.randn(cubes.shape[0], 21, generator=gen)
    moved = verts + tanh_deformation_bound(res)(torch.randn(verts.shape, generator=gen))
    v1, f1 = flexicubes_extract(
        moved, sdf, cubes, coords, res, raw[:, :12], raw[:, 12:20], raw[:, 20]
    )
    assert v1.shape == v0.shape and f1.shape == f0.shape
    assert 0 < float((v1 - v0).abs().max()) < SCALE / res
    # zero raw weights are the uniform weights (gamma ties keep the same diagonal)
    zero = torch.zeros(cubes.shape[0], 21)
    v2, f2 = flexicubes_extract(
        verts, sdf, cubes, coords, res, zero[:, :12], zero[:, 12:20], zero[:, 20]
    )
    torch.testing.assert_close(v2, v0, rtol=0, atol=0)
    assert torch.equal(f2, f0)


def test_surface_cube_subset_gives_the_whole_grid_mesh() -> None:
    """Noise SDF (every ambiguous configuration shows up) with random weights."""
    res = 12
    gen = torch.Generator().manual_seed(3)
    verts, cubes, coords = voxel_grid(res, SCALE)
    sdf = torch.randn(verts.shape[0], generator=gen)
    raw = torch.randn(cubes.shape[0], 21, generator=gen)
    full = flexicubes_extract(
        verts, sdf, cubes, coords, res, raw[:, :12], raw[:, 12:20], raw[:, 20]
    )
    occ = (sdf < 0)[cubes].sum(1)
    surf = (occ > 0) & (occ < 8)
    ids, local = torch.unique(cubes[surf], return_inverse=True)
    part = flexicubes_extract(
        verts[ids],
        sdf[ids],
        local,
        coords[surf],
        res,
        raw[surf, :12],
        raw[surf, 12:20],
        raw[surf, 20],
    )
    assert torch.equal(full[0], part[0]) and torch.equal(full[1], part[1])


def test_no_surface_gives_an_empty_mesh() -> None:
    verts, cubes, coords = voxel_grid(4, SCALE)
    v, f = flexicubes_extract(verts, torch.ones(verts.shape[0]), cubes, coords, 4)
    assert v.shape == (0, 3) and f.shape == (0, 3)


# --------------------------------------------------------------------------- model path


def _tiny_planes(seed: int = 0) -> tuple[InstantMesh, torch.Tensor]:
    torch.manual_seed(seed)
    model = build_model("tiny-mesh").eval()
    assert isinstance(model, InstantMesh)
    planes = torch.randn(1, 3, 8, 8, 8, generator=torch.Generator().manual_seed(seed))
    return model, planes


def test_surface_only_equals_all_vertices_for_a_tiny_model() -> None:
    model, planes = _tiny_planes()
    a = extract_flexicubes_mesh(model, planes, 20, surface_only=True, chunk_size=1000)
    b = extract_flexicubes_mesh(model, planes, 20, surface_only=False)
    assert np.array_equal(a.faces, b.faces) and len(a.faces) > 100
    np.testing.assert_allclose(a.vertices, b.vertices, rtol=0, atol=1e-6)
    assert np.abs(a.vertex_colors.astype(int) - b.vertex_colors.astype(int)).max() <= 1


def test_tiny_model_extraction_end_to_end() -> None:
    model, planes = _tiny_planes(1)
    mesh = extract_flexicubes_mesh(model, planes)  # the variant's own grid (8) and scale
    assert mesh.vertices.dtype == np.float32 and mesh.faces.dtype == np.int64
    assert mesh.vertex_colors.dtype == np.uint8 and mesh.vertex_colors.shape == mesh.vertices.shape
    bound = 1.05 + 1 / (8 * 4)
    assert np.abs(mesh.vertices).max() <= bound
    assert mesh.faces.min() >= 0 and mesh.faces.max() < len(mesh.vertices)
    # colours are the texture head at the vertices, clamped and truncated (upstream)
    rgb = model.synthesizer.texture(planes, torch.from_numpy(mesh.vertices)[None])[0]
    expected = (rgb.detach().clamp(0, 1).numpy() * 255).astype(np.uint8)
    assert np.array_equal(mesh.vertex_colors, expected)
    finer = extract_flexicubes_mesh(model, planes, resolution=16)
    assert len(finer.faces) > len(mesh.faces)


def test_fields_match_the_synthesizer_geometry_call() -> None:
    model, planes = _tiny_planes()
    verts, cubes, _ = voxel_grid(4, SCALE)
    fields = TriplaneMeshFields(model.synthesizer, planes)
    with torch.no_grad():
        sdf, deformation, weights = fields.geometry(verts, cubes)
        corners = verts[cubes.reshape(-1)].reshape(-1, 8, 3)
        torch.testing.assert_close(fields.sdf(verts), sdf)
        torch.testing.assert_close(fields.raw_deformation(verts), deformation)
        torch.testing.assert_close(fields.raw_weights(corners), weights)
    assert weights.shape == (64, 21)


def test_deformation_bound_is_the_models() -> None:
    cfg = dataclasses.replace(get_variant("tiny-mesh"), grid_res=128)
    model = build_model(cfg)
    assert isinstance(model, InstantMesh)
    assert model_deformation_bound(model, 128) == model.bounded_deformation
    raw = torch.randn(1000, 3) * 3
    torch.testing.assert_close(
        tanh_deformation_bound(128)(raw), model.bounded_deformation(raw), rtol=0, atol=0
    )
    assert float(model_deformation_bound(model, 64)(raw).abs().max()) <= 1 / 256


def test_empty_shape_fix_follows_upstream() -> None:
    model, _ = _tiny_planes()
    planes = torch.zeros(1, 3, 8, 8, 8)  # constant SDF: no sign change anywhere
    mesh = extract_flexicubes_mesh(model, planes, 8)
    assert len(mesh.faces) > 0  # upstream's fix turns the empty field into a shell
    with pytest.raises(ValueError, match="no surface"):
        extract_flexicubes_mesh(model, planes, 8, fix_empty_shape=False)
    same = extract_flexicubes_mesh(model, planes, 8, surface_only=False)
    assert np.array_equal(same.faces, mesh.faces)


# --------------------------------------------------------------------------- export


def test_uv_rasterizer_covers_a_square_exactly() -> None:
    uvs = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    face, bary = rasterize_uv_atlas(uvs, faces, 8)
    assert (face >= 0).all()
    np.testing.assert_allclose(bary.sum(-1), 1.0)
    # row 0 is the top (v near 1): top-left lies above the diagonal u = v (face 1), bottom-right
    # below it (face 0); centres on the shared diagonal go to the higher face index
    assert face[0, 0] == 1 and face[7, 7] == 0 and face[7, 0] == 1 and face[0, 7] == 1
    point = (bary[..., :, None] * uvs[faces[face]]).sum(-2)
    centres_u = (np.arange(8) + 0.5) / 8
    np.testing.assert_allclose(point[..., 0], np.broadcast_to(centres_u, (8, 8)), atol=1e-12)
    np.testing.assert_allclose(
        point[..., 1], np.broadcast_to(centres_u[::-1, None], (8, 8)), atol=1e-12
    )


@pytest.mark.parametrize("suffix", [".obj", ".glb"])
def test_texture_export_writes_a_loadable_textured_mesh(tmp_path: Path, suffix: str) -> None:
    model, planes = _tiny_planes()
    mesh = analytic_mesh(sphere_sdf, 10)
    out = export_textured_mesh(model, planes, mesh, tmp_path / f"m{suffix}", texture_resolution=128)
    assert all(p.is_file() for p in out.paths)
    if suffix == ".obj":
        assert [p.suffix for p in out.paths] == [".obj", ".mtl", ".png"]
    assert out.texture.shape == (128, 128, 3) and 0.2 < out.coverage < 1.0
    scene = trimesh.load(str(out.paths[0]), force="scene", process=False)
    (geom,) = scene.geometry.values()
    visual = geom.visual
    assert isinstance(visual, trimesh.visual.texture.TextureVisuals)
    material = visual.material
    image = getattr(material, "image", None) or getattr(material, "baseColorTexture", None)
    assert image is not None and image.size == (128, 128)
    uv = np.asarray(visual.uv)
    assert uv.shape == (len(geom.vertices), 2) and uv.min() >= 0 and uv.max() <= 1
    # the baked texture at each vertex's UV is the colour head at that vertex
    world = load_world_mesh(out.paths[0])
    tex = torch.from_numpy(np.array(image.convert("RGB")))
    sampled = sample_texture(tex, torch.from_numpy(uv).float()).numpy()
    with torch.no_grad():
        expected = model.synthesizer.texture(planes, torch.from_numpy(world.vertices).float()[None])
    diff = np.abs(sampled - expected[0].clamp(0, 1).numpy())
    assert diff.mean() < 0.01 and diff.max() < 0.06


def test_vertex_color_export_round_trips_in_the_world_frame(tmp_path: Path) -> None:
    mesh = analytic_mesh(bumps_sdf, 16)
    for suffix in (".obj", ".glb", ".ply"):
        path = export_vertex_colored_mesh(mesh, tmp_path / f"v{suffix}")
        raw = trimesh.load(str(path), force="mesh", process=False)
        loaded = load_world_mesh(path)
        np.testing.assert_allclose(loaded.vertices, mesh.vertices, atol=2e-6)
        assert np.array_equal(np.asarray(loaded.faces), mesh.faces)
        if suffix == ".ply":
            np.testing.assert_allclose(raw.vertices, mesh.vertices, atol=2e-6)
        else:  # stored Y up: (x, y, z) -> (x, z, -y)
            np.testing.assert_allclose(
                raw.vertices, mesh.vertices @ Y_UP_FILE_FROM_WORLD.T, atol=2e-6
            )
        colors = np.asarray(loaded.visual.vertex_colors)[:, :3]
        assert np.abs(colors.astype(int) - mesh.vertex_colors.astype(int)).max() <= 1


# --------------------------------------------------------------------------- export axes


def _model_frame_render(
    mesh: ColoredMesh, azimuth: float, elevation: float, size: int, color_fn
) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """The model's own view of a model-frame mesh: rays of an ``instantmesh.cameras`` camera
    (radius 4, FOV 30, the LRM's convention) cast against the triangles (Moller-Trumbore),
    colour from ``color_fn`` at the hit points (like upstream's mesh renderer + texture head)."""
    c2w = spherical_camera_poses([azimuth], [elevation], 4.0)
    origins, dirs = rays_from_cameras(c2w, fov_to_intrinsics(30.0)[None], size)
    o = origins[0].double()
    d = dirs[0].double()
    tri = torch.from_numpy(mesh.vertices[mesh.faces]).double()  # (F, 3, 3)
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    best = torch.full((o.shape[0],), float("inf"), dtype=torch.float64)
    for s in range(0, o.shape[0], 256):
        dd, oo = d[s : s + 256, None], o[s : s + 256, None]
        p = torch.linalg.cross(
            dd.expand(-1, len(tri), -1), e2[None].expand(len(dd), -1, -1), dim=-1
        )
        det = (e1[None] * p).sum(-1)
        inv = 1.0 / torch.where(det.abs() < 1e-12, torch.ones_like(det), det)
        tv = oo - tri[None, :, 0]
        u = (tv * p).sum(-1) * inv
        q = torch.linalg.cross(tv, e1[None].expand_as(tv), dim=-1)
        v = (dd * q).sum(-1) * inv
        t = (e2[None] * q).sum(-1) * inv
        ok = (det.abs() >= 1e-12) & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
        best[s : s + 256] = torch.where(ok, t, torch.full_like(t, float("inf"))).min(-1).values
    hit = torch.isfinite(best)
    rgb = np.ones((o.shape[0], 3))
    if hit.any():
        points = (o + d * best[:, None].clamp_max(1e9))[hit].float()
        with torch.no_grad():
            rgb[hit.numpy()] = color_fn(points).clamp(0, 1).numpy()
    return hit.reshape(size, size).numpy(), rgb.reshape(size, size, 3)


def _world_render(path: Path, azimuth: float, elevation: float, size: int):  # type: ignore[no-untyped-def]
    view = rasterize(
        load_world_mesh(path), camera_from_spherical(azimuth, elevation, 4.0, 30.0, size)
    )
    return view.rgba[..., 3] > 0.5, view.rgba[..., :3]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


VIEWS = ((30.0, 20.0), (200.0, -10.0), (100.0, 60.0))


def test_export_axes_match_the_model_frame(tmp_path: Path) -> None:
    """Exports loaded into our world frame render like the model sees its own mesh; the
    upstream vertex-colour OBJ convention (z negated) does not."""
    mesh = analytic_mesh(bumps_sdf, 24)
    fields = AnalyticFields(bumps_sdf)
    files = [
        export_vertex_colored_mesh(mesh, tmp_path / "v.obj"),
        export_vertex_colored_mesh(mesh, tmp_path / "v.glb"),
        export_vertex_colored_mesh(mesh, tmp_path / "v.ply"),
        write_textured_mesh(fields.rgb, mesh, tmp_path / "t.obj", 256).paths[0],
        write_textured_mesh(fields.rgb, mesh, tmp_path / "t.glb", 256).paths[0],
    ]
    flipped = ColoredMesh(
        mesh.vertices * np.array([1, 1, -1], np.float32), mesh.faces[:, ::-1], mesh.vertex_colors
    )
    upstream_obj = export_vertex_colored_mesh(flipped, tmp_path / "upstream.ply")
    size = 32
    for azimuth, elevation in VIEWS:
        ref_mask, ref_rgb = _model_frame_render(mesh, azimuth, elevation, size, fields.rgb)
        assert 0.05 < ref_mask.mean() < 0.6
        for path in files:
            mask, rgb = _world_render(path, azimuth, elevation, size)
            assert _iou(mask, ref_mask) > 0.9, (path.name, azimuth, elevation)
            both = mask & ref_mask
            assert np.abs(rgb[both] - ref_rgb[both]).mean() < 0.03, (path.name, azimuth)
        mask, _ = _world_render(upstream_obj, azimuth, elevation, size)
        assert _iou(mask, ref_mask) < 0.9


def test_tiny_model_export_renders_like_the_models_mesh_rendering(tmp_path: Path) -> None:
    model, planes = _tiny_planes(2)
    mesh = extract_flexicubes_mesh(model, planes, 16)
    color_fn = TriplaneMeshFields(model.synthesizer, planes).rgb
    textured = export_textured_mesh(model, planes, mesh, tmp_path / "tiny.glb", 256).paths[0]
    colored = export_vertex_colored_mesh(mesh, tmp_path / "tiny.obj")
    for azimuth, elevation in VIEWS[:2]:
        ref_mask, ref_rgb = _model_frame_render(mesh, azimuth, elevation, 32, color_fn)
        assert ref_mask.mean() > 0.02
        for path in (textured, colored):
            mask, rgb = _world_render(path, azimuth, elevation, 32)
            assert _iou(mask, ref_mask) > 0.9, path.name
            both = mask & ref_mask
            assert np.abs(rgb[both] - ref_rgb[both]).mean() < 0.05, path.name
