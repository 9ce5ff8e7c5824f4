"""Differentiable mesh rendering (CPU path): same pixels as the CPU rasterizer, analytic
gradients, and a finite-difference check of the vertex-position gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from instantmesh.mesh_render import render_mesh
from rendering.backends.cpu import rasterize
from rendering.cameras import camera_from_spherical


def test_forward_matches_the_cpu_rasterizer() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.8)
    cam = camera_from_spherical(20, 15, 3.0, 40, 40)
    v = torch.tensor(sphere.vertices, dtype=torch.float64)
    f = torch.tensor(sphere.faces, dtype=torch.int64)
    colors = torch.tensor(np.abs(sphere.vertices), dtype=torch.float64)
    out = render_mesh(v, f, colors, [cam])
    ref = rasterize(sphere, cam)
    mask = out.mask[0, ..., 0].numpy() > 0
    np.testing.assert_array_equal(mask, ref.mask)
    np.testing.assert_allclose(out.depth[0, ..., 0].numpy()[mask], ref.depth[mask], atol=1e-6)
    assert (out.depth[0, ..., 0].numpy()[~mask] == 0).all()


def test_colour_gradient_is_the_sum_of_perspective_weights() -> None:
    # A fronto-parallel triangle: perspective weights = screen barycentrics, which sum to 1 per
    # covered pixel, so d(sum of rendered values)/d(colour_k) summed over k = covered pixels.
    cam = camera_from_spherical(0, 0, 3.0, 40, 32)
    v = torch.tensor([[0.0, -0.8, -0.6], [0.0, 0.8, -0.6], [0.0, 0.0, 0.9]], dtype=torch.float64)
    f = torch.tensor([[0, 1, 2]])
    colors = torch.ones((3, 1), dtype=torch.float64, requires_grad=True)
    out = render_mesh(v, f, colors, [cam])
    out.attrs.sum().backward()
    covered = float(out.mask.sum())
    assert covered > 50
    assert colors.grad is not None
    assert float(colors.grad.sum()) == pytest.approx(covered, rel=1e-9)
    assert (colors.grad > 0).all()


def test_vertex_gradients_match_finite_differences() -> None:
    cam = camera_from_spherical(10, 5, 3.0, 40, 24)
    base = torch.tensor(
        [[0.2, -0.7, -0.5], [-0.1, 0.8, -0.6], [0.1, 0.1, 0.8]], dtype=torch.float64
    )
    f = torch.tensor([[0, 1, 2]])
    colors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], dtype=torch.float64)
    weights = torch.linspace(0.5, 1.5, 24 * 24 * 2, dtype=torch.float64).reshape(1, 24, 24, 2)

    def loss(v: torch.Tensor) -> torch.Tensor:
        out = render_mesh(v, f, colors, [cam])
        return (out.attrs * weights).sum() + out.depth.sum()

    v = base.clone().requires_grad_(True)
    loss(v).backward()
    assert v.grad is not None
    eps = 1e-6  # small enough that no pixel centre changes triangle (visibility is fixed)
    numeric = torch.zeros_like(base)
    for i in range(3):
        for j in range(3):
            plus, minus = base.clone(), base.clone()
            plus[i, j] += eps
            minus[i, j] -= eps
            numeric[i, j] = (loss(plus) - loss(minus)) / (2 * eps)
    torch.testing.assert_close(v.grad, numeric, rtol=1e-4, atol=1e-6)


def test_bad_input_is_refused() -> None:
    cam = camera_from_spherical(0, 0, 3.0, 40, 8)
    v = torch.tensor([[float("nan"), 0, 0], [1, 0, 0], [0, 1, 0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="NaN"):
        render_mesh(v, torch.tensor([[0, 1, 2]]), torch.zeros((3, 1)), [cam])


@pytest.mark.gpu
def test_cuda_path_agrees_with_the_cpu_path() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytest.importorskip("nvdiffrast.torch")
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.8)
    cam = camera_from_spherical(20, 15, 3.0, 40, 64)
    v = torch.tensor(sphere.vertices, dtype=torch.float32)
    f = torch.tensor(sphere.faces, dtype=torch.int64)
    colors = torch.tensor(np.abs(sphere.vertices), dtype=torch.float32)
    cpu = render_mesh(v.double(), f, colors.double(), [cam], path="cpu")
    gpu = render_mesh(v.cuda().requires_grad_(True), f.cuda(), colors.cuda(), [cam], path="cuda")
    iou = ((cpu.mask > 0) & (gpu.mask.cpu() > 0)).sum() / (
        (cpu.mask > 0) | (gpu.mask.cpu() > 0)
    ).sum()
    assert float(iou) > 0.99
    gpu.attrs.sum().backward()
