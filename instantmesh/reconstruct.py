"""Six views -> triplanes -> coloured mesh: the one reconstruction path that both the evaluation
predictor (``evaluation.instantmesh_predictor``) and ``imesh generate`` use.

Inputs are the six Zero123++ views (azimuths 30..330 relative to the input view, elevations
20/-10) as float RGB in [0, 1] on a white background; they are resized to the variant's input
size and paired with the fixed input cameras (``input_cameras``: radius 4 x ``scale``, FOV 30;
``view_indices`` keeps a subset of the views with their cameras, e.g. upstream ``run.py``'s
``--view 4`` = views 0, 2, 4, 5). The mesh is
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

INPUT_CAMERA_RADIUS = 4.0
ALL_VIEWS: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
UPSTREAM_FOUR_VIEWS: tuple[int, ...] = (0, 2, 4, 5)
"""Upstream ``run.py --view 4``."""


def check_view_indices(view_indices: Sequence[int] | None) -> tuple[int, ...]:
    """``None`` -> all six; otherwise distinct ints in 0..5 (at least one), order kept."""
    if view_indices is None:
        return ALL_VIEWS
    indices = tuple(int(i) for i in view_indices)
    if not indices:
        raise ValueError("view_indices must name at least one view (0..5)")
    bad = [i for i in indices if not 0 <= i < len(ALL_VIEWS)]
    if bad:
        raise ValueError(f"view indices must be in 0..5 (Zero123++'s six views), got {bad}")
    if len(set(indices)) != len(indices):
        raise ValueError(f"view indices must be distinct, got {list(indices)}")
    return indices


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
    view_indices: Sequence[int] | None = None,
    scale: float = 1.0,
) -> tuple[ColoredMesh, torch.Tensor]:
    """(mesh in the world frame, triplanes (1, 3, C, R, R)) from six views.

    ``view_indices``: the views (0..5, row-major Zero123++ order) given to the model, each with
    its own input camera (default: all six). ``scale``: the input cameras sit at radius
    ``4.0 * scale`` (upstream ``run.py --scale``: a larger scale reconstructs a larger object).
    """
    from instantmesh.cameras import input_cameras

    indices = check_view_indices(view_indices)
    if not (scale > 0 and np.isfinite(scale)):
        raise ValueError(f"scale must be positive and finite, got {scale}")
    device = next(model.parameters()).device
    images = views_tensor(views, model.cfg.input_size, device)
    cameras = input_cameras(radius=INPUT_CAMERA_RADIUS * float(scale), batch_size=1).to(device)
    if indices != ALL_VIEWS:
        index = torch.tensor(indices, dtype=torch.long, device=device)
        images, cameras = images[:, index], cameras[:, index]
    planes = model.forward_planes(images, cameras)
    if isinstance(model, InstantNeRF):
        mesh = extract_nerf_mesh(model.synthesizer, planes, mc_resolution, density_threshold)
    else:
        from instantmesh.mesh_extraction import extract_flexicubes_mesh

        mesh = extract_flexicubes_mesh(model, planes, grid_resolution)
    return mesh, planes
