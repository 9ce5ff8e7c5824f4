"""Six views -> triplanes -> coloured mesh: the one reconstruction path that both the evaluation
predictor (``instantmesh.predictor``) and ``imesh generate`` use.

Inputs are the six Zero123++ views (azimuths 30..330 relative to the input view, elevations
20/-10) as float RGB in [0, 1] on a white background; they are resized to the variant's input
size and paired with the fixed input cameras (``input_cameras``: radius 4, FOV 30). The mesh is
in the model frame = our world frame (Z up, the input view's front facing +X; see
``instantmesh.mesh_export``): marching cubes on the density for NeRF variants, FlexiCubes
(surface cubes only) for mesh variants.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from instantmesh.meshing import ColoredMesh, extract_nerf_mesh
from instantmesh.model import InstantMesh, InstantNeRF


def views_tensor(views: Sequence[np.ndarray], size: int, device: torch.device) -> torch.Tensor:
    """Six HxWx3 (RGB) or HxWx4 (RGBA, composited on white) float arrays -> (1, 6, 3, S, S)."""
    if len(views) != 6:
        raise ValueError(f"the reconstruction model takes exactly 6 views, got {len(views)}")
    batch = []
    for im in views:
        arr = np.asarray(im, dtype=np.float32)
        if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
            raise ValueError(f"views must be HxWx3 or HxWx4 arrays, got shape {arr.shape}")
        if arr.shape[-1] == 4:
            arr = arr[..., :3] * arr[..., 3:4] + (1.0 - arr[..., 3:4])
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None]
        if t.shape[-2:] != (size, size):
            t = torch.nn.functional.interpolate(
                t, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
        batch.append(t[0])
    return torch.stack(batch)[None].clamp(0, 1).to(device)


@torch.no_grad()
def reconstruct_mesh(
    model: InstantNeRF | InstantMesh,
    views: Sequence[np.ndarray],
    *,
    mc_resolution: int = 256,
    density_threshold: float = 10.0,
    grid_resolution: int | None = None,
) -> tuple[ColoredMesh, torch.Tensor]:
    """(mesh in the world frame, triplanes (1, 3, C, R, R)) from six views."""
    from instantmesh.cameras import input_cameras

    device = next(model.parameters()).device
    images = views_tensor(views, model.cfg.input_size, device)
    planes = model.forward_planes(images, input_cameras(batch_size=1).to(device))
    if isinstance(model, InstantNeRF):
        mesh = extract_nerf_mesh(model.synthesizer, planes, mc_resolution, density_threshold)
    else:
        from instantmesh.mesh_extraction import extract_flexicubes_mesh

        mesh = extract_flexicubes_mesh(model, planes, grid_resolution)
    return mesh, planes
