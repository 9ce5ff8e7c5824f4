"""Differentiable rendering of a (FlexiCubes) mesh: images, depth, normals and masks whose
gradients flow to the vertex positions and per-vertex attributes.

Two paths with the same conventions (cameras: ``rendering.cameras.Camera``, OpenGL axes, row 0
at the image top; depth = planar z-depth, 0 on background; alpha = coverage of the pixel
centre, no anti-aliasing):

- ``cuda``: nvdiffrast (``rasterize`` -> ``interpolate``), as upstream trains the mesh variants;
  used when the vertices live on a CUDA device and nvdiffrast is importable.
- ``cpu``: visibility from our CPU z-buffer (``rendering.rasterizer.visible_faces``, no
  gradient, like nvdiffrast's rasterizer), then the barycentrics of every covered pixel centre
  are recomputed from the projected vertices **with autograd** and used for perspective-correct
  interpolation. This matches what ``dr.rasterize`` + ``dr.interpolate`` differentiate
  (attributes and, through the barycentrics, vertex positions); silhouette gradients need
  ``dr.antialias``, which only the cuda path adds (``antialias=True``). Meant for tests and
  small CPU runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import trimesh

from rendering.cameras import Camera
from rendering.rasterizer import RasterMesh, clip_from_world, projection_matrix, visible_faces


@dataclass
class MeshRender:
    """Batched render outputs, (N, H, W, C) float tensors."""

    attrs: torch.Tensor
    """Interpolated per-vertex attributes (e.g. RGB)."""
    depth: torch.Tensor
    """Planar z-depth, 0 on background, (N, H, W, 1)."""
    mask: torch.Tensor
    """1 where a face covers the pixel centre, else 0, (N, H, W, 1)."""
    antialiased_mask: torch.Tensor | None = None
    """``dr.antialias`` of ``mask`` (cuda path with ``antialias=True``; ``None`` otherwise):
    fractional coverage along silhouettes, differentiable w.r.t. the vertex positions."""
    antialiased_attrs: torch.Tensor | None = None
    """``dr.antialias`` of ``attrs`` (cuda path with ``antialias=True``; ``None`` otherwise)."""


def _camera_tensors(
    camera: Camera, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    w2c = torch.as_tensor(camera.w2c_opencv(), dtype=dtype, device=device)
    k = torch.as_tensor(camera.intrinsics(), dtype=dtype, device=device)
    return w2c, k


def _render_cpu(
    vertices: torch.Tensor, faces: torch.Tensor, attrs: torch.Tensor, camera: Camera
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    h, w = camera.height, camera.width
    n_pix = h * w
    soup = trimesh.Trimesh(
        vertices.detach().cpu().double().numpy(), faces.cpu().numpy(), process=False
    )
    q, face = visible_faces(RasterMesh.from_geometry(soup), camera)
    q, face = q.to(vertices.device), face.to(vertices.device)
    out_attr = attrs.new_zeros((n_pix, attrs.shape[1]))
    out_depth = vertices.new_zeros((n_pix, 1))
    mask = vertices.new_zeros((n_pix, 1))
    if q.numel() == 0:
        return out_attr.reshape(h, w, -1), out_depth.reshape(h, w, 1), mask.reshape(h, w, 1)
    w2c, k = _camera_tensors(camera, vertices.dtype, vertices.device)
    cam = vertices @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2]
    pix = (cam @ k.T)[:, :2] / z[:, None]
    tri = faces[face]  # (Q, 3) vertex ids
    p0, p1, p2 = pix[tri[:, 0]], pix[tri[:, 1]], pix[tri[:, 2]]
    cx = (q % w).to(vertices.dtype) + 0.5
    cy = torch.div(q, w, rounding_mode="floor").to(vertices.dtype) + 0.5
    c = torch.stack([cx, cy], dim=1)

    def edge(a: torch.Tensor, b: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return (b[:, 0] - a[:, 0]) * (p[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (p[:, 0] - a[:, 0])

    area = edge(p0, p1, p2)
    bary = torch.stack([edge(p1, p2, c), edge(p2, p0, c), edge(p0, p1, c)], dim=1) / area[:, None]
    inv_z = 1.0 / z[tri]  # (Q, 3)
    weights = bary * inv_z
    persp = weights / weights.sum(dim=1, keepdim=True)
    values = (persp[..., None] * attrs[tri]).sum(dim=1)
    depth = 1.0 / weights.sum(dim=1, keepdim=True)
    out_attr = out_attr.index_copy(0, q, values)
    out_depth = out_depth.index_copy(0, q, depth)
    mask = mask.index_fill(0, q, 1.0)
    return out_attr.reshape(h, w, -1), out_depth.reshape(h, w, 1), mask.reshape(h, w, 1)


def _render_cuda(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    attrs: torch.Tensor,
    cameras: Sequence[Camera],
    antialias: bool,
) -> MeshRender:
    import nvdiffrast.torch as dr

    ctx = dr.RasterizeCudaContext(device=vertices.device)
    homo = torch.cat([vertices, torch.ones_like(vertices[:, :1])], dim=1)
    outs_a, outs_d, outs_m, outs_am, outs_aa = [], [], [], [], []
    tri = faces.to(torch.int32).contiguous()
    v = vertices.detach().cpu().numpy()
    bounds = np.stack([v.min(axis=0), v.max(axis=0)])
    for cam in cameras:
        mvp_np = clip_from_world(cam, bounds)  # the nvdiffrast backend's projection
        if mvp_np is None:  # everything behind the camera: any planes give an empty image
            mvp_np = projection_matrix(cam, 1e-3, 1e3) @ cam.w2c
        mvp = torch.as_tensor(mvp_np, dtype=vertices.dtype, device=vertices.device)
        clip = (homo @ mvp.T)[None].contiguous()
        rast, _ = dr.rasterize(ctx, clip, tri, resolution=(cam.height, cam.width))
        a, _ = dr.interpolate(attrs[None].contiguous(), rast, tri)
        d, _ = dr.interpolate(clip[..., 3:4].contiguous(), rast, tri)
        m = (rast[..., 3:4] > 0).to(vertices.dtype)
        outs_a.append(torch.flip(a[0], dims=[0]))
        outs_d.append(torch.flip(d[0] * m[0], dims=[0]))
        outs_m.append(torch.flip(m[0], dims=[0]))
        if antialias:  # upstream neural_render.py: antialias the hard mask (and attributes)
            am = dr.antialias(m.contiguous(), rast, clip, tri)
            aa = dr.antialias(a.contiguous(), rast, clip, tri)
            outs_am.append(torch.flip(am[0], dims=[0]))
            outs_aa.append(torch.flip(aa[0], dims=[0]))
    return MeshRender(
        torch.stack(outs_a),
        torch.stack(outs_d),
        torch.stack(outs_m),
        torch.stack(outs_am) if antialias else None,
        torch.stack(outs_aa) if antialias else None,
    )


def render_mesh(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    attrs: torch.Tensor,
    cameras: Sequence[Camera],
    path: str = "auto",
    antialias: bool = False,
) -> MeshRender:
    """Render a mesh (world / model frame, ``vertices`` (V, 3), ``faces`` (F, 3) int64,
    ``attrs`` (V, C)) from every camera; differentiable w.r.t. ``vertices`` and ``attrs``.

    ``antialias=True`` adds ``dr.antialias`` of the mask and of the attributes on the cuda path
    (silhouette gradients, as upstream trains the mesh variants); the cpu path has no
    anti-aliasing and leaves those fields ``None``.
    """
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must be (V, 3), got {tuple(vertices.shape)}")
    if attrs.shape[0] != vertices.shape[0]:
        raise ValueError(
            f"attrs must have one row per vertex, got {attrs.shape[0]} for {vertices.shape[0]}"
        )
    if not torch.isfinite(vertices).all():
        raise ValueError("vertices contain NaN or infinite values")
    if path == "auto":
        path = "cuda" if vertices.is_cuda else "cpu"
    if path == "cuda":
        return _render_cuda(vertices, faces, attrs, cameras, antialias)
    if path != "cpu":
        raise ValueError(f"path must be 'auto', 'cpu' or 'cuda', got {path!r}")
    outs = [_render_cpu(vertices, faces, attrs, cam) for cam in cameras]
    return MeshRender(
        torch.stack([o[0] for o in outs]),
        torch.stack([o[1] for o in outs]),
        torch.stack([o[2] for o in outs]),
    )
