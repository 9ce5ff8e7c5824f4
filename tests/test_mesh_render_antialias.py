"""Analytic antialiasing on the CPU path of ``render_mesh`` (nvdiffrast's method in torch):
coverage-by-crossing values at known edges, the silhouette gradient against finite
differences, and an optimisation that only the antialiased mask can solve.

Every scene is seen by one camera at (0, 0, 3) looking down -z with a 90 degree field of view
on an 8 x 8 (or 16 x 16) image: a point (X, Y, 0) lands on pixel coordinates
u = f X / 3 + W / 2, v = -f Y / 3 + H / 2 (f = W / 2; row 0 at the top, pixel centres at
+0.5), so shapes are placed directly in pixel coordinates with :func:`world`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
import trimesh

from instantmesh.mesh_render import MeshRender, render_mesh
from rendering.cameras import Camera, camera_from_spherical


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def camera(size: int = 8) -> Camera:
    c2w = np.eye(4)
    c2w[2, 3] = 3.0
    return Camera.from_c2w(c2w, 90.0, size)


def world(points: list[tuple[float, float]], size: int = 8) -> torch.Tensor:
    """Pixel coordinates (u, v) -> world points on the plane z = 0 (see module docstring)."""
    half = size / 2.0
    return torch.tensor(
        [[3.0 * (u - half) / half, -3.0 * (v - half) / half, 0.0] for u, v in points],
        dtype=torch.float64,
    )


def render(vertices: torch.Tensor, faces: list[list[int]], size: int = 8) -> MeshRender:
    ones = torch.ones((vertices.shape[0], 1), dtype=torch.float64)
    return render_mesh(vertices, torch.tensor(faces), ones, [camera(size)], antialias=True)


def soft_mask(out: MeshRender) -> torch.Tensor:
    assert out.antialiased_mask is not None
    return out.antialiased_mask[0, ..., 0]


# --------------------------------------------------------------------------- values


def test_square_edges_get_their_coverage() -> None:
    # A rectangle u in [2.3, 5.6], v in [1.8, 6.25]; two triangles sharing the diagonal from
    # the top-left to the bottom-right corner. Along a row (column) an edge at u crossing the
    # pixel [c, c + 1] leaves that pixel covered by the part inside: 0.7 left, 0.6 right, 0.2
    # top, 0.25 bottom. The blend is made with the triangle seen at the covered pixel; at the
    # covered top-left and bottom-right corner pixels that triangle's edge towards the pixel
    # above (below) is the shared diagonal, an interior edge: no blend there (as nvdiffrast).
    v = world([(2.3, 1.8), (5.6, 1.8), (5.6, 6.25), (2.3, 6.25)])
    out = render(v, [[0, 1, 2], [0, 2, 3]])
    expected = np.zeros((8, 8))
    expected[2:6, 2:6] = 1.0
    expected[2:6, 2] = 0.7
    expected[2:6, 5] = 0.6
    expected[1, 3:6] = 0.2  # (1, 2): above the top-left corner, blocked by the diagonal
    expected[6, 2:5] = 0.25  # (6, 5): below the bottom-right corner, blocked by the diagonal
    np.testing.assert_allclose(soft_mask(out).numpy(), expected, atol=1e-12)
    # the hard mask and the far pixels are untouched; the attributes blend the same way (all 1)
    hard = out.mask[0, ..., 0].numpy()
    np.testing.assert_array_equal(hard, np.pad(np.ones((4, 4)), 2))
    assert out.antialiased_attrs is not None
    np.testing.assert_allclose(out.antialiased_attrs[0, ..., 0].numpy(), expected, atol=1e-12)


def row_coverage(u_left: float, u_right: float, column: int) -> float:
    return max(0.0, min(column + 1.0, u_right) - max(float(column), u_left))


def test_slanted_triangle_edge_blends_by_its_crossing() -> None:
    # Left edge u = 1.3 (v from 0.9 to 7.1), bottom edge v = 7.1, slanted edge from (1.3, 0.9)
    # to (4.4, 7.1): u = 1.3 + (v - 0.9) / 2 (steeper than 45 degrees, so only pairs of columns
    # blend across it). A pixel of a row whose centre is inside the triangle's rows gets the
    # covered share of the row segment through its centre; row 7 (centre below the bottom edge)
    # gets 0.1 under the pixels covered in row 6.
    v = world([(1.3, 0.9), (4.4, 7.1), (1.3, 7.1)])
    soft = soft_mask(render(v, [[0, 1, 2]])).numpy()
    expected = np.zeros((8, 8))
    for row in range(1, 7):
        u_slant = 1.3 + (row + 0.5 - 0.9) / 2.0
        expected[row] = [row_coverage(1.3, u_slant, c) for c in range(8)]
    expected[7, 1:4] = 0.1
    np.testing.assert_allclose(soft, expected, atol=1e-12)
    assert expected[3, 2] == pytest.approx(0.6) and expected[6, 4] == pytest.approx(0.1)


def test_nearer_triangle_owns_the_edge_over_a_farther_one() -> None:
    # A small square in front of a large one: its edges blend against the large square's
    # coverage (1) behind it, so the mask stays 1; the attributes blend 0 (front) with 1 (back).
    small = world([(2.5, 2.0), (5.5, 2.0), (5.5, 6.0), (2.5, 6.0)]) + torch.tensor([0, 0, 0.5])
    big = world([(0.0, 0.0), (8.0, 0.0), (8.0, 8.0), (0.0, 8.0)])
    v = torch.cat([small, big])
    attrs = torch.cat([torch.zeros((4, 1)), torch.ones((4, 1))]).double()
    faces = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    out = render_mesh(v, faces, attrs, [camera()], antialias=True)
    assert out.antialiased_mask is not None and out.antialiased_attrs is not None
    np.testing.assert_allclose(out.antialiased_mask.numpy(), np.ones((1, 8, 8, 1)))
    aa = out.antialiased_attrs[0, ..., 0].numpy()
    # the small square projects larger (z = 0.5 is nearer): u = 4 + 1.2 (u0 - 4), so its left
    # edge is at u = 2.2 and pixel 2 is 0.2 back square, 0.8 front square
    left = 4.0 + 3.0 * (2.5 - 4.0) / 2.5
    assert aa[4, 2] == pytest.approx(1.0 - row_coverage(left, 8.0, 2), abs=1e-12)
    assert aa[4, 2] == pytest.approx(0.2, abs=1e-12)
    assert aa[4, 1] == 1.0 and aa[4, 4] == 0.0 and aa[4, 7] == 1.0


def test_closed_mesh_blends_at_its_folds_towards_the_true_coverage() -> None:
    # An icosahedron has no open edge: every blend comes from the fold test (the neighbour
    # across the edge faces away). True coverage: the hard mask at 8 x 8 samples per pixel.
    ico = trimesh.creation.icosphere(subdivisions=0, radius=0.8)
    v, f = torch.tensor(ico.vertices), torch.tensor(ico.faces)
    ones = torch.ones((v.shape[0], 1), dtype=torch.float64)
    size, sub = 24, 8
    cam = camera_from_spherical(20, 15, 3.0, 40, size)
    fine = camera_from_spherical(20, 15, 3.0, 40, size * sub)
    out = render_mesh(v, f, ones, [cam], antialias=True)
    truth = render_mesh(v, f, ones, [fine]).mask[0, ..., 0]
    truth = truth.reshape(size, sub, size, sub).mean(dim=(1, 3))
    hard, soft = out.mask[0, ..., 0], soft_mask(out)
    blended = soft != hard
    assert int(blended.sum()) >= 30  # measured 37
    near = torch.nn.functional.max_pool2d(hard[None, None], 3, 1, 1)[0, 0]
    inside = -torch.nn.functional.max_pool2d(-hard[None, None], 3, 1, 1)[0, 0]
    assert bool((soft[inside == 1] == 1).all()) and bool((soft[near == 0] == 0).all())
    # measured: mean error at the blended pixels 0.034 (hard mask 0.32); whole image 4.1 (14.8)
    assert float((soft - truth)[blended].abs().mean()) < 0.06
    assert float((hard - truth)[blended].abs().mean()) > 0.2
    assert float((soft - truth).abs().sum()) < 0.4 * float((hard - truth).abs().sum())


def test_cpu_path_without_antialias_leaves_the_fields_empty() -> None:
    v = world([(1.3, 0.9), (4.4, 7.1), (1.3, 7.1)])
    out = render_mesh(v, torch.tensor([[0, 1, 2]]), torch.ones((3, 2)).double(), [camera()] * 2)
    assert out.antialiased_mask is None and out.antialiased_attrs is None
    aa = render_mesh(
        v, torch.tensor([[0, 1, 2]]), torch.ones((3, 2)).double(), [camera()] * 2, antialias=True
    )
    assert aa.antialiased_mask is not None and aa.antialiased_attrs is not None
    assert aa.antialiased_mask.shape == (2, 8, 8, 1)
    assert aa.antialiased_attrs.shape == (2, 8, 8, 2)
    torch.testing.assert_close(aa.mask, out.mask)
    torch.testing.assert_close(aa.attrs, out.attrs)


# --------------------------------------------------------------------------- gradients


def test_silhouette_gradient_matches_finite_differences() -> None:
    base = world([(1.3, 0.9), (4.4, 7.1), (1.3, 7.1)])
    base[:, 2] = torch.tensor([0.1, -0.2, 0.15], dtype=torch.float64)  # not fronto-parallel
    weights = torch.linspace(0.5, 1.5, 64, dtype=torch.float64).reshape(8, 8)

    def loss(v: torch.Tensor) -> torch.Tensor:
        return (soft_mask(render(v, [[0, 1, 2]])) * weights).sum()

    v = base.clone().requires_grad_(True)
    loss(v).backward()
    assert v.grad is not None
    eps = 1e-6  # no pixel centre changes side
    numeric = torch.zeros_like(base)
    for i in range(3):
        for j in range(3):
            plus, minus = base.clone(), base.clone()
            plus[i, j] += eps
            minus[i, j] -= eps
            numeric[i, j] = (loss(plus) - loss(minus)) / (2 * eps)
    torch.testing.assert_close(v.grad, numeric, rtol=1e-5, atol=1e-8)
    assert float(v.grad.abs().min()) > 0.0  # every vertex ends a silhouette edge


def test_gradient_lives_on_silhouette_pixels_only() -> None:
    # A square fanned around an interior centre vertex (index 4): moving the centre changes no
    # coverage, moving a corner changes only pixels next to the silhouette.
    corners = [(1.6, 1.3), (6.2, 1.7), (6.6, 6.4), (1.2, 6.1)]
    v = world([*corners, (3.7, 4.2)])
    faces = [[0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]]
    out = render(v, faces)
    hard, soft = out.mask[0, ..., 0], soft_mask(out)
    jac = torch.autograd.functional.jacobian(lambda x: soft_mask(render(x, faces)), v)
    moved = jac.abs().sum(dim=(2, 3)) > 0  # (8, 8): pixels whose value depends on the vertices
    assert float(jac[..., 4, :].abs().max()) == 0.0
    padded = torch.nn.functional.pad(hard, (1, 1, 1, 1))
    neighbours = [padded[1:-1, :-2], padded[1:-1, 2:], padded[:-2, 1:-1], padded[2:, 1:-1]]
    near_silhouette = torch.stack([n != hard for n in neighbours]).any(dim=0)
    # exactly the blended pixels move (14 here: 3 top, 3 bottom, 4 left, 4 right), and they
    # all have a neighbour on the other side of the silhouette
    torch.testing.assert_close(moved, soft != hard)
    assert int(moved.sum()) == 14
    assert not bool((moved & ~near_silhouette).any())


def test_hard_mask_has_no_gradient() -> None:
    v = world([(1.3, 0.9), (4.4, 7.1), (1.3, 7.1)]).requires_grad_(True)
    out = render(v, [[0, 1, 2]])
    assert not out.mask.requires_grad
    assert out.antialiased_mask is not None and out.antialiased_mask.requires_grad


# --------------------------------------------------------------------------- optimisation


def test_a_translated_square_is_recovered_from_antialiased_masks() -> None:
    size = 16
    square = world([(4.3, 4.6), (10.2, 4.6), (10.2, 10.1), (4.3, 10.1)], size)
    faces = [[0, 1, 2], [0, 2, 3]]
    pixel = 3.0 / (size / 2.0)  # world units per pixel on the plane z = 0
    shift_px = torch.tensor([2.0, -1.5], dtype=torch.float64)  # (u, v)
    shift = torch.tensor([shift_px[0] * pixel, -shift_px[1] * pixel, 0.0], dtype=torch.float64)
    target = soft_mask(render(square + shift, faces, size)).detach()

    offset = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    first = render(square + offset, faces, size)
    # the hard mask carries no gradient at all: it cannot tell which way to move
    assert not first.mask.requires_grad
    optimiser = torch.optim.Adam([offset], lr=0.02)
    losses = []
    for _ in range(150):
        optimiser.zero_grad()
        loss = ((soft_mask(render(square + offset, faces, size)) - target) ** 2).sum()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    found_px = torch.stack([offset[0], -offset[1]]).detach() / pixel
    torch.testing.assert_close(found_px, shift_px, atol=0.05, rtol=0.0)
    assert losses[-1] < 1e-3 * losses[0]


@pytest.mark.gpu
def test_cpu_antialiasing_agrees_with_nvdiffrast() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytest.importorskip("nvdiffrast.torch")
    ico = trimesh.creation.icosphere(subdivisions=0, radius=0.8)
    v, f = torch.tensor(ico.vertices), torch.tensor(ico.faces)
    ones = torch.ones((v.shape[0], 1), dtype=torch.float64)
    cam = camera_from_spherical(20, 15, 3.0, 40, 64)
    cpu = render_mesh(v, f, ones, [cam], path="cpu", antialias=True)
    gpu = render_mesh(
        v.float().cuda(), f.cuda(), ones.float().cuda(), [cam], path="cuda", antialias=True
    )
    assert cpu.antialiased_mask is not None and gpu.antialiased_mask is not None
    hard_cpu, hard_gpu = cpu.mask[0, ..., 0], gpu.mask[0, ..., 0].double().cpu()
    # compare where both rasterisers cover the same pixel centres in the 3 x 3 neighbourhood
    differ = (hard_cpu != hard_gpu).double()[None, None]
    same = torch.nn.functional.max_pool2d(differ, 3, 1, 1)[0, 0] == 0
    soft_cpu = cpu.antialiased_mask[0, ..., 0]
    soft_gpu = gpu.antialiased_mask[0, ..., 0].double().cpu()
    assert int(((soft_cpu > 0) & (soft_cpu < 1) & same).sum()) > 20
    torch.testing.assert_close(soft_cpu[same], soft_gpu[same], atol=2e-3, rtol=0.0)
