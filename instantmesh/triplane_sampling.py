"""Reading features out of a triplane at 3D points (shared by the NeRF and mesh synthesizers).

Plane order and axes (upstream InstantMesh / EG3D after its plane-axes bugfix):
plane 0 spans (x, y), plane 1 spans (x, z), plane 2 spans (z, y); the first coordinate indexes
the plane's width (``grid_sample``'s x), the second its height. Points are scaled by
``2 / box_warp`` (box_warp = 2, so the cube [-1, 1]^3 maps onto the planes), sampled bilinearly
with ``align_corners=False`` and zero padding, and the three C-dim features are concatenated in
plane order into one 3C vector per point.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: For each plane, which point coordinates give its (u, v) = (width, height) sample position.
PLANE_AXES: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (2, 1))
BOX_WARP = 2.0


def project_to_planes(points: torch.Tensor) -> torch.Tensor:
    """(N, M, 3) points -> (N, 3, M, 2) per-plane sample positions."""
    return torch.stack([points[..., list(axes)] for axes in PLANE_AXES], dim=1)


def sample_triplane(
    planes: torch.Tensor, points: torch.Tensor, box_warp: float = BOX_WARP
) -> torch.Tensor:
    """Bilinear features (N, 3, M, C) of ``planes`` (N, 3, C, H, W) at ``points`` (N, M, 3)."""
    if planes.ndim != 5 or planes.shape[1] != 3:
        raise ValueError(f"planes must be (N, 3, C, H, W), got {tuple(planes.shape)}")
    if points.ndim != 3 or points.shape[-1] != 3 or points.shape[0] != planes.shape[0]:
        raise ValueError(
            f"points must be (N, M, 3) with N = {planes.shape[0]}, got {tuple(points.shape)}"
        )
    n, _, channels, height, width = planes.shape
    m = points.shape[1]
    uv = project_to_planes((2.0 / box_warp) * points).reshape(n * 3, 1, m, 2)
    sampled = F.grid_sample(
        planes.reshape(n * 3, channels, height, width),
        uv.to(planes.dtype),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )  # (N*3, C, 1, M)
    return sampled.permute(0, 3, 2, 1).reshape(n, 3, m, channels)


def concat_plane_features(features: torch.Tensor) -> torch.Tensor:
    """(N, 3, M, C) -> (N, M, 3C), plane-major within each point's vector."""
    n, n_planes, m, channels = features.shape
    return features.permute(0, 2, 1, 3).reshape(n, m, n_planes * channels)
