"""Camera conventions of the reconstruction model.

World frame: z up; azimuth 0 on +x, increasing towards +y; elevation positive above the xy plane.
Cameras are OpenGL style camera-to-world matrices (x right, y up, looking down -z), built by
looking at the origin with world up +z.

Two flat encodings are used:
- encoder cameras (16-d): the top 3x4 of camera-to-world, row-major (12), then normalized
  intrinsics fx, fy, cx, cy (``fx = fy = 0.5 / tan(fov / 2)``, ``cx = cy = 0.5``);
- render cameras (25-d): the full 4x4 camera-to-world (16) then the normalized 3x3 K (9).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

#: Zero123++ v1.2 output views, row-major over its 3x2 grid.
ZERO123PLUS_AZIMUTHS: tuple[float, ...] = (30.0, 90.0, 150.0, 210.0, 270.0, 330.0)
ZERO123PLUS_ELEVATIONS: tuple[float, ...] = (20.0, -10.0, 20.0, -10.0, 20.0, -10.0)


def look_at_origin(positions: torch.Tensor) -> torch.Tensor:
    """(M, 3) camera positions -> (M, 4, 4) OpenGL camera-to-world looking at the origin."""
    positions = positions.float()
    up = torch.tensor([0.0, 0.0, 1.0]).expand_as(positions)
    z_axis = F.normalize(positions, dim=-1)
    x_axis = F.normalize(torch.linalg.cross(up, z_axis, dim=-1), dim=-1)
    y_axis = F.normalize(torch.linalg.cross(z_axis, x_axis, dim=-1), dim=-1)
    top = torch.stack([x_axis, y_axis, z_axis, positions], dim=-1)
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(positions.shape[0], 1, 4)
    return torch.cat([top, bottom], dim=-2)


def spherical_camera_poses(
    azimuths_deg: Sequence[float] | np.ndarray,
    elevations_deg: Sequence[float] | np.ndarray,
    radius: float,
) -> torch.Tensor:
    """Camera-to-world (M, 4, 4) for cameras on a sphere looking at the origin."""
    azimuths = np.deg2rad(np.asarray(azimuths_deg, dtype=np.float64))
    elevations = np.deg2rad(np.asarray(elevations_deg, dtype=np.float64))
    if azimuths.shape != elevations.shape or azimuths.ndim != 1:
        raise ValueError("azimuths and elevations must be 1-d sequences of equal length")
    positions = np.stack(
        [
            radius * np.cos(elevations) * np.cos(azimuths),
            radius * np.cos(elevations) * np.sin(azimuths),
            radius * np.sin(elevations),
        ],
        axis=-1,
    )
    return look_at_origin(torch.from_numpy(positions).float())


def fov_to_intrinsics(fov_deg: float) -> torch.Tensor:
    """Normalized (image size 1) 3x3 intrinsics for a square image with the given FOV."""
    focal = 0.5 / np.tan(np.deg2rad(fov_deg) * 0.5)
    return torch.tensor([[focal, 0.0, 0.5], [0.0, focal, 0.5], [0.0, 0.0, 1.0]]).float()


def encoder_camera_vectors(c2w: torch.Tensor, fov_deg: float) -> torch.Tensor:
    """(M, 4, 4) camera-to-world -> (M, 16) encoder camera vectors."""
    k = fov_to_intrinsics(fov_deg)
    intrinsics = torch.stack([k[0, 0], k[1, 1], k[0, 2], k[1, 2]]).expand(c2w.shape[0], 4)
    return torch.cat([c2w[:, :3, :4].reshape(-1, 12).float(), intrinsics], dim=-1)


def render_camera_vectors(c2w: torch.Tensor, fov_deg: float) -> torch.Tensor:
    """(M, 4, 4) camera-to-world -> (M, 25) render cameras for the NeRF synthesizer."""
    k = fov_to_intrinsics(fov_deg).reshape(1, 9).expand(c2w.shape[0], 9)
    return torch.cat([c2w.reshape(-1, 16).float(), k], dim=-1)


def input_cameras(
    radius: float = 4.0, fov: float = 30.0, batch_size: int | None = None
) -> torch.Tensor:
    """The six Zero123++ views as encoder cameras: (6, 16), or (batch_size, 6, 16)."""
    c2w = spherical_camera_poses(ZERO123PLUS_AZIMUTHS, ZERO123PLUS_ELEVATIONS, radius)
    cameras = encoder_camera_vectors(c2w, fov)
    if batch_size is None:
        return cameras
    return cameras.unsqueeze(0).repeat(batch_size, 1, 1)


def orbit_render_cameras(
    num_views: int = 120, radius: float = 4.0, elevation: float = 20.0, fov: float = 30.0
) -> torch.Tensor:
    """(num_views, 25) render cameras on a circular orbit at a fixed elevation."""
    if num_views <= 0 or radius <= 0:
        raise ValueError("num_views and radius must be positive")
    azimuths = np.rad2deg(2 * np.pi * np.arange(num_views) / num_views)
    c2w = spherical_camera_poses(azimuths, np.full(num_views, elevation), radius)
    return render_camera_vectors(c2w, fov)
