"""Stage 2 of LRM training (mesh variants): FlexiCubes training mode, the stage-1 -> stage-2
initialisation and the mesh step (CPU, tiny variants, small renders)."""

from __future__ import annotations

import numpy as np
import torch
import trimesh

from instantmesh.flexicubes import (
    flexicubes_extract,
    flexicubes_extract_training,
    voxel_grid,
)

SCALE = 2.1


def _sphere(res: int, radius: float = 0.6) -> tuple[torch.Tensor, ...]:
    verts, cubes, coords = voxel_grid(res, SCALE)
    return verts, verts.norm(dim=1) - radius, cubes, coords


# --------------------------------------------------------------------------- FlexiCubes training


def test_training_mode_keeps_the_dual_vertices_and_adds_one_centre_per_quad() -> None:
    res = 8
    gen = torch.Generator().manual_seed(3)
    verts, cubes, coords = voxel_grid(res, SCALE)
    sdf = torch.randn(verts.shape[0], generator=gen)
    raw = torch.randn(cubes.shape[0], 21, generator=gen)
    weights = (raw[:, :12], raw[:, 12:20], raw[:, 20])
    v_inf, f_inf = flexicubes_extract(verts, sdf, cubes, coords, res, *weights)
    out = flexicubes_extract_training(verts, sdf, cubes, coords, res, *weights)
    n_quads = f_inf.shape[0] // 2
    assert out.num_dual == v_inf.shape[0]
    assert torch.equal(out.vertices[: out.num_dual], v_inf)
    assert out.vertices.shape[0] == v_inf.shape[0] + n_quads
    assert out.faces.shape == (4 * n_quads, 3)
    # every triangle is (q_i, q_(i+1), centre); the rims of a quad's 4 triangles close a cycle
    centres = out.faces[:, 2].reshape(-1, 4)
    assert torch.equal(centres, (torch.arange(n_quads) + out.num_dual)[:, None].expand(-1, 4))
    rim = out.faces[:, :2].reshape(-1, 4, 2)
    assert torch.equal(rim[:, :, 1], rim[:, [1, 2, 3, 0], 0])
    # the same quads (vertex sets) as the inference split, quad by quad
    inf_quads = torch.stack([torch.unique(row) for row in f_inf.reshape(-1, 6)])
    assert torch.equal(rim[:, :, 0].sort(dim=1).values, inf_quads)
    # each centre lies between its diagonals' midpoints: c = (g02 m02 + g13 m13) / (g02 + g13)
    q = rim[:, :, 0]
    m02 = (out.vertices[q[:, 0]] + out.vertices[q[:, 2]]) / 2
    m13 = (out.vertices[q[:, 1]] + out.vertices[q[:, 3]]) / 2
    c = out.vertices[out.num_dual :]
    t = ((c - m13) * (m02 - m13)).sum(1) / ((m02 - m13) ** 2).sum(1).clamp_min(1e-12)
    assert bool(((t > 0) & (t < 1)).all())
    torch.testing.assert_close(m13 + t[:, None] * (m02 - m13), c, rtol=0, atol=1e-5)


def test_uniform_gamma_puts_the_centre_at_the_quad_mean_and_keeps_the_area() -> None:
    res = 16
    verts, sdf, cubes, coords = _sphere(res)
    v_inf, f_inf = flexicubes_extract(verts, sdf, cubes, coords, res)
    out = flexicubes_extract_training(verts, sdf, cubes, coords, res)
    q = out.faces[:, 0].reshape(-1, 4)
    torch.testing.assert_close(
        out.vertices[out.num_dual :], out.vertices[q].mean(dim=1), rtol=0, atol=1e-6
    )
    inference = trimesh.Trimesh(v_inf.numpy(), f_inf.numpy(), process=False)
    training = trimesh.Trimesh(out.vertices.numpy(), out.faces.numpy(), process=False)
    assert training.is_watertight and training.is_winding_consistent and training.volume > 0
    exact = 4 * np.pi * 0.6**2
    assert abs(inference.area / exact - 1) < 0.04  # measured 0.027 (chords inside the sphere)
    assert abs(training.area / inference.area - 1) < 0.005  # measured 0.0026
    assert abs(training.volume / inference.volume - 1) < 1e-3


def test_l_dev_is_zero_for_a_plane_with_uniform_weights() -> None:
    """A plane x = c crosses four parallel edges of each cube at the same x: the dual vertex is
    the centre of the square they span, equidistant from all four crossings."""
    res = 6
    verts, cubes, coords = voxel_grid(res, SCALE)
    sdf = verts[:, 0] - 0.13
    out = flexicubes_extract_training(verts, sdf, cubes, coords, res)
    assert out.l_dev.shape[0] == 4 * res * res  # one surface cube per (y, z) cell, 4 edges each
    assert float(out.l_dev.abs().max()) < 1e-6


def test_l_dev_of_one_corner_cube_by_hand() -> None:
    """One cube, corner 0 inside: three crossings at fractions t along the three axes from
    corner 0; uniform weights put the dual vertex at their mean."""
    verts, cubes, coords = voxel_grid(1, SCALE)
    corner_ids = cubes[0]
    sdf = torch.full((8,), 5.0)
    sdf[corner_ids[0]] = -1.0
    ends = {1: 1.0, 2: 3.0, 4: 0.25}  # corner -> sdf: crossings at t = 1 / (1 + s)
    for corner, value in ends.items():
        sdf[corner_ids[corner]] = value
    out = flexicubes_extract_training(verts, sdf, cubes, coords, 1)
    assert out.faces.shape[0] == 0  # no edge is shared by four cubes
    t = np.array([1 / 2, 1 / 4, 1 / 1.25]) * SCALE
    crossings = np.diag(t)  # relative to corner 0, along x, y, z
    dual = crossings.mean(axis=0)
    dist = np.linalg.norm(crossings - dual, axis=1)
    expected = np.abs(dist - dist.mean())
    assert out.num_dual == 1
    torch.testing.assert_close(
        out.vertices[0] - verts[corner_ids[0]], torch.tensor(dual, dtype=torch.float32)
    )
    np.testing.assert_allclose(np.sort(out.l_dev.numpy()), np.sort(expected), rtol=1e-5)


def test_training_mode_gradients_match_finite_differences() -> None:
    res = 2
    gen = torch.Generator().manual_seed(7)
    verts, cubes, coords = voxel_grid(res, SCALE)
    sign = torch.where(torch.rand(verts.shape[0], generator=gen) < 0.4, -1.0, 1.0)
    sdf = (sign * (0.3 + torch.rand(verts.shape[0], generator=gen))).double()
    positions = (verts + 0.05 * torch.randn(verts.shape, generator=gen)).double()
    raw = torch.randn(cubes.shape[0], 21, generator=gen, dtype=torch.float64)
    inputs = (positions, sdf, raw[:, :12], raw[:, 12:20], raw[:, 20].contiguous())
    inputs = tuple(x.clone().requires_grad_(True) for x in inputs)

    def fn(*args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p, s, b, a, g = args
        out = flexicubes_extract_training(p, s, cubes, coords, res, b, a, g)
        return out.vertices, out.l_dev

    vertices, l_dev = fn(*inputs)
    assert vertices.shape[0] > 0 and bool((l_dev > 1e-6).all())
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)
    # gamma moves the centre vertices (and only them)
    (vertices[:, 0].sum()).backward()
    assert inputs[4].grad is not None and float(inputs[4].grad.abs().sum()) > 0


def test_no_surface_gives_an_empty_training_mesh() -> None:
    verts, cubes, coords = voxel_grid(3, SCALE)
    out = flexicubes_extract_training(verts, torch.ones(verts.shape[0]), cubes, coords, 3)
    assert out.vertices.shape == (0, 3) and out.faces.shape == (0, 3)
    assert out.l_dev.shape == (0,) and out.num_dual == 0
