"""Mesh extraction from a triplane NeRF: marching cubes on the density grid + vertex colours.

As upstream: density (``softplus(raw - 1)``) is sampled on a ``resolution``^3 lattice over
[-1, 1]^3 (axis order x, y, z), the iso-surface is taken at ``threshold`` (10 by default), lattice
indices are mapped back to [-1, 1] with ``v / (resolution - 1) * 2 - 1``, and vertex colours are
the colour field at the vertices times 255, truncated to uint8. Vertices stay in the triplane
frame (no axis flips: those belong to exporters). Marching cubes is scikit-image's; faces are
wound counter-clockwise seen from outside (right-hand normals point out of the object, towards
lower density).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from skimage.measure import marching_cubes

from instantmesh.synthesizer import DEFAULT_POINT_CHUNK, NeRFSynthesizer


@dataclass(frozen=True)
class ColoredMesh:
    # (V, 3) float32 in the triplane frame (= our world frame, Z up; see mesh_export): inside
    # [-1, 1]^3 from marching cubes, inside [-1.05, 1.05]^3 (+ deformation) from FlexiCubes.
    vertices: np.ndarray
    faces: np.ndarray  # (F, 3) int64
    vertex_colors: np.ndarray  # (V, 3) uint8


@torch.no_grad()
def extract_nerf_mesh(
    synthesizer: NeRFSynthesizer,
    planes: torch.Tensor,
    resolution: int = 256,
    threshold: float = 10.0,
    chunk_size: int = DEFAULT_POINT_CHUNK,
) -> ColoredMesh:
    """Iso-surface of the density of one triplane (``planes`` (1, 3, C, H, W))."""
    if planes.shape[0] != 1:
        raise ValueError(f"mesh extraction takes one triplane at a time, got {planes.shape[0]}")
    density = synthesizer.forward_grid(planes, resolution, chunk_size)["sigma"]
    volume = density[0, ..., 0].float().cpu().numpy()
    low, high = float(volume.min()), float(volume.max())
    if not low < threshold < high:
        raise ValueError(
            f"no surface: density spans [{low:.4g}, {high:.4g}], threshold {threshold} is outside"
        )
    vertices, faces, _, _ = marching_cubes(volume, level=threshold, gradient_direction="ascent")
    vertices = (vertices / (resolution - 1) * 2 - 1).astype(np.float32)
    points = torch.from_numpy(vertices).to(device=planes.device, dtype=planes.dtype)[None]
    rgb = synthesizer.forward_points(planes, points, chunk_size)["rgb"][0].float().cpu().numpy()
    colors = np.clip(rgb * 255, 0, 255).astype(np.uint8)
    return ColoredMesh(vertices, faces.astype(np.int64), colors)
