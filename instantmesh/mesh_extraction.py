"""Mesh extraction for the mesh (FlexiCubes) variants, memory-bounded ("surface cubes only").

:func:`extract_flexicubes_mesh` reproduces upstream ``InstantMesh.extract_mesh`` with
``use_texture_map=False`` (``src/models/lrm_mesh.py``: ``get_sdf_deformation_prediction``,
``get_geometry_prediction``, then vertex colours from ``get_texture_prediction``):

1. the FlexiCubes grid (:mod:`instantmesh.flexicubes`): ``resolution``^3 cubes (128 for the
   official variants), vertices ``(round(i / res, 5 decimals) - 0.5) * scale`` (scale 2.1);
2. the synthesizer heads read triplane features at the *undeformed* grid vertices: ``net_sdf``
   (SDF), ``net_deformation`` (raw deformation) and ``net_weight`` on the eight corner features
   of each cube, concatenated in corner order, times 0.1 (21 raw weights: beta 0..11, alpha
   12..19, gamma 20);
3. vertices move by ``tanh(raw) / (resolution * 4)`` (``InstantMesh.bounded_deformation``;
   upstream ties the bound to the model's ``grid_res``, which equals the extraction resolution
   unless a caller asks for another one);
4. upstream's empty-shape fix (on by default, ``fix_empty_shape``): when the SDF of the grid
   without its outer vertex layer has no sign change, the centre vertex is set to
   ``1 - min(sdf)`` and the two outer vertex layers to ``-1 - max(sdf)``, which makes a surface
   (a closed shell) out of nothing; trained models essentially never trigger it;
5. FlexiCubes extraction (inference path, ``weight_scale`` 0.5);
6. vertex colours: ``net_rgb`` at the output vertices, MipNeRF's widened sigmoid clamped to
   [0, 1], times 255, truncated to uint8.

Memory ("surface cubes only", ``surface_only=True``, the default): upstream evaluates every head
on all 129^3 vertices and the weight MLP on all 128^3 cubes at once; the weight MLP's input alone
is 128^3 x 8 x 3C floats (16 GB for the large model's C = 80), the known GPU OOM. Here the SDF head
runs on all vertices in chunks of ``chunk_size`` points (it is needed everywhere to find the
surface, and it is one small MLP: cheap), the surface cubes are found from the signs, and the
deformation head runs only on the corners of surface cubes and the weight head only on surface
cubes, both in chunks. Weights of non-surface cubes and deformations of vertices off the surface
never influence the mesh (FlexiCubes reads them only on surface cubes), so the result equals the
all-vertices evaluation (``surface_only=False``, upstream's single batch) up to float rounding of
the batched MLPs; the test suite checks equality. Peak memory is then bounded by the chunk size
and by the surface-cube count (``benchmarks/bench_flexicubes_memory.py`` measures both paths).

A coarse-to-fine SDF pass (evaluating the SDF on a coarser grid first) would save part of the
SDF pass too, but can miss thin parts whose sign change falls between coarse vertices, so it
would no longer match upstream; we keep the exact full-resolution sign pass.

Output vertices are in the model's triplane frame, which is our world frame (Z up, the input
view's front facing +X; see :mod:`instantmesh.mesh_export` for the file conventions).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from instantmesh.flexicubes import (
    WEIGHT_SCALE,
    cube_corner_coords,
    flexicubes_extract,
    grid_positions,
    surface_cube_coords,
    vertex_ids,
    voxel_grid,
)
from instantmesh.meshing import ColoredMesh
from instantmesh.model import DEFORMATION_MULTIPLIER, InstantMesh
from instantmesh.synthesizer import MeshSynthesizer
from instantmesh.triplane_sampling import concat_plane_features, sample_triplane

#: Points per chunk of head evaluations (cubes per chunk of the weight head: a eighth of it).
DEFAULT_CHUNK = 2**18


class MeshFields:
    """The fields FlexiCubes reads, as functions of (undeformed) grid points.

    Subclasses implement :meth:`sdf`, :meth:`raw_deformation`, :meth:`raw_weights` and
    :meth:`rgb`; :meth:`geometry` (the all-at-once evaluation) composes them unless overridden.
    """

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        """(M, 3) -> (M,) signed distance (negative inside)."""
        raise NotImplementedError

    def raw_deformation(self, points: torch.Tensor) -> torch.Tensor:
        """(M, 3) -> (M, 3) deformation before the tanh bound."""
        raise NotImplementedError

    def raw_weights(self, corner_points: torch.Tensor) -> torch.Tensor:
        """(K, 8, 3) cube corners -> (K, 21) raw FlexiCubes weights (beta, alpha, gamma)."""
        raise NotImplementedError

    def rgb(self, points: torch.Tensor) -> torch.Tensor:
        """(M, 3) -> (M, 3) colour (roughly [0, 1])."""
        raise NotImplementedError

    def geometry(
        self, points: torch.Tensor, cubes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All heads at once: sdf (P,), raw deformation (P, 3), raw weights (K, 21) of the cubes
        ``cubes`` (K, 8) indexing ``points`` (P, 3)."""
        corners = points[cubes.reshape(-1)].reshape(-1, 8, 3)
        return self.sdf(points), self.raw_deformation(points), self.raw_weights(corners)


class TriplaneMeshFields(MeshFields):
    """The mesh synthesizer's heads on one triplane ``planes`` (1, 3, C, H, W)."""

    def __init__(self, synthesizer: MeshSynthesizer, planes: torch.Tensor) -> None:
        if planes.ndim != 5 or planes.shape[0] != 1:
            raise ValueError(
                f"mesh extraction takes one triplane (1, 3, C, H, W), got {tuple(planes.shape)}"
            )
        self.synthesizer = synthesizer
        self.planes = planes

    def _features(self, points: torch.Tensor) -> torch.Tensor:
        pts = points.to(self.planes.dtype)[None]
        features = sample_triplane(self.planes, pts, self.synthesizer.box_warp)
        return concat_plane_features(features)[0]

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        return self.synthesizer.decoder.net_sdf(self._features(points))[:, 0]

    def raw_deformation(self, points: torch.Tensor) -> torch.Tensor:
        return self.synthesizer.decoder.net_deformation(self._features(points))

    def raw_weights(self, corner_points: torch.Tensor) -> torch.Tensor:
        k = corner_points.shape[0]
        feats = self._features(corner_points.reshape(-1, 3)).reshape(k, -1)
        return self.synthesizer.decoder.net_weight(feats) * 0.1

    def rgb(self, points: torch.Tensor) -> torch.Tensor:
        return self.synthesizer.texture(self.planes, points.to(self.planes.dtype)[None])[0]

    def geometry(
        self, points: torch.Tensor, cubes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Upstream's single call ``get_geometry_prediction(planes, verts, indices)``."""
        sdf, deformation, weight = self.synthesizer.geometry(
            self.planes, points.to(self.planes.dtype)[None], cubes
        )
        return sdf[0, :, 0], deformation[0], weight[0]


@dataclass(frozen=True)
class FlexiCubesResult:
    vertices: torch.Tensor  # (V, 3) model frame
    faces: torch.Tensor  # (F, 3) int64, right-hand normals point outwards
    surface_cubes: int  # cubes with a sign change
    head_points: int  # points the deformation/weight heads were evaluated at (corners counted)


def _ids_to_ijk(ids: torch.Tensor, n: int) -> torch.Tensor:
    """Flat grid-vertex ids -> (i, j, k) lattice coordinates (``n`` vertices per axis)."""
    return torch.stack([ids // (n * n), (ids // n) % n, ids % n], dim=-1)


def _extract(
    positions: torch.Tensor,
    sdf: torch.Tensor,
    cubes: torch.Tensor,
    cube_coords: torch.Tensor,
    res: int,
    weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FlexiCubes with the 21 per-cube weight channels split as upstream: beta [:12],
    alpha [12:20], gamma [20]."""
    return flexicubes_extract(
        positions,
        sdf,
        cubes,
        cube_coords,
        res,
        weights[:, :12],
        weights[:, 12:20],
        weights[:, 20],
        WEIGHT_SCALE,
    )


def upstream_empty_shape_fix(sdf_volume: torch.Tensor) -> torch.Tensor:
    """Upstream's "fix some sdf if we observe empty shape" on an ``(n, n, n)`` SDF volume
    (``lrm_mesh.py`` ``get_sdf_deformation_prediction`` step 3, one object); returns the volume
    unchanged when its interior (outer layer excluded) has a sign change."""
    interior = sdf_volume[1:-1, 1:-1, 1:-1]
    if bool((interior > 0).any()) and bool((interior < 0).any()):
        return sdf_volume
    n = sdf_volume.shape[0]
    res = n - 1
    max_sdf, min_sdf = sdf_volume.max(), sdf_volume.min()
    centre = torch.zeros_like(sdf_volume, dtype=torch.bool)
    centre[res // 2 + 1, res // 2 + 1, res // 2 + 1] = True
    shell = torch.zeros_like(centre)
    shell[:2] = True
    shell[-2:] = True
    shell[:, :2] = True
    shell[:, -2:] = True
    shell[:, :, :2] = True
    shell[:, :, -2:] = True
    shell &= ~centre
    update = torch.zeros_like(sdf_volume)
    update[centre] += 1.0 - min_sdf
    update[shell] += -1.0 - max_sdf
    keep = (update == 0).to(sdf_volume.dtype)
    return sdf_volume * keep + update * (1 - keep)


def _chunked(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, size: int
) -> torch.Tensor:
    if x.shape[0] == 0:
        raise ValueError("no points to evaluate")
    return torch.cat([fn(x[s : s + size]) for s in range(0, x.shape[0], size)])


def tanh_deformation_bound(resolution: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``1 / (resolution * 4) * tanh(raw)``: the deformation bound of a ``resolution`` grid
    (upstream's operation order: the reciprocal times tanh, bitwise equal to
    ``InstantMesh.bounded_deformation`` for power-of-two resolutions such as 128)."""
    factor = 1.0 / (resolution * DEFORMATION_MULTIPLIER)

    def bound(raw: torch.Tensor) -> torch.Tensor:
        return factor * torch.tanh(raw)

    return bound


@torch.no_grad()
def flexicubes_from_fields(
    fields: MeshFields,
    resolution: int,
    scale: float,
    bound_deformation: Callable[[torch.Tensor], torch.Tensor],
    *,
    surface_only: bool = True,
    chunk_size: int | None = DEFAULT_CHUNK,
    fix_empty_shape: bool = True,
    device: torch.device | str = "cpu",
) -> FlexiCubesResult:
    """FlexiCubes mesh of ``fields`` on a ``resolution``^3 grid spanning ``scale`` per axis.

    ``surface_only=False`` evaluates every head everywhere in one call (upstream's way; used as
    the reference and for the memory benchmark); ``chunk_size`` (points) bounds the batches of
    the surface-only path (``None``: everything in one batch).
    """
    if resolution < 2:
        raise ValueError(f"resolution must be at least 2, got {resolution}")
    res = int(resolution)
    n = res + 1
    if not surface_only:
        verts, cubes, cube_coords = voxel_grid(res, scale, device)
        sdf, raw_def, weights = fields.geometry(verts, cubes)
        if fix_empty_shape:
            sdf = upstream_empty_shape_fix(sdf.reshape(n, n, n)).reshape(-1)
        positions = verts + bound_deformation(raw_def)
        vertices, faces = _extract(positions, sdf, cubes, cube_coords, res, weights)
        n_surface = int(surface_cube_coords(sdf.reshape(n, n, n)).shape[0])
        return FlexiCubesResult(vertices, faces, n_surface, int(verts.shape[0]))

    step = chunk_size or n**3
    # Pass 1: SDF at every grid vertex, slab by slab of vertex ids.
    sdf_parts = []
    for start in range(0, n**3, step):
        ids = torch.arange(start, min(start + step, n**3), device=device)
        ijk = _ids_to_ijk(ids, n)
        sdf_parts.append(fields.sdf(grid_positions(ijk, res, scale)))
    volume = torch.cat(sdf_parts).reshape(n, n, n)
    if fix_empty_shape:
        volume = upstream_empty_shape_fix(volume)

    # Pass 2: heads on surface cubes only.
    cube_coords = surface_cube_coords(volume)
    if cube_coords.shape[0] == 0:
        empty = torch.zeros((0, 3), dtype=volume.dtype, device=device)
        return FlexiCubesResult(empty, torch.zeros((0, 3), dtype=torch.long, device=device), 0, 0)
    corner_ijk = cube_corner_coords(cube_coords)  # (K, 8, 3)
    point_ids, cubes = torch.unique(vertex_ids(corner_ijk, res), return_inverse=True)
    point_ijk = _ids_to_ijk(point_ids, n)
    rest = grid_positions(point_ijk, res, scale)
    positions = rest + bound_deformation(_chunked(fields.raw_deformation, rest, step))
    weights = _chunked(
        lambda c: fields.raw_weights(grid_positions(c, res, scale)),
        corner_ijk,
        max(1, step // 8),
    )
    sdf = volume.reshape(-1)[point_ids]
    vertices, faces = _extract(positions, sdf, cubes, cube_coords, res, weights)
    head_points = int(point_ids.shape[0] + 8 * cube_coords.shape[0])
    return FlexiCubesResult(vertices, faces, int(cube_coords.shape[0]), head_points)


def model_deformation_bound(
    model: InstantMesh, resolution: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model.bounded_deformation`` at the model's own grid resolution, else the same formula
    for ``resolution``."""
    if resolution == model.cfg.grid_res:
        return model.bounded_deformation
    return tanh_deformation_bound(resolution)


def vertex_colors_uint8(rgb: torch.Tensor) -> np.ndarray:
    """Upstream's vertex colours: ``(rgb.clamp(0, 1) * 255).astype(uint8)`` (truncation)."""
    return (rgb.clamp(0, 1).float().cpu().numpy() * 255).astype(np.uint8)


@torch.no_grad()
def extract_flexicubes_mesh(
    model: InstantMesh,
    planes: torch.Tensor,
    resolution: int | None = None,
    surface_only: bool = True,
    *,
    scale: float | None = None,
    chunk_size: int | None = DEFAULT_CHUNK,
    fix_empty_shape: bool = True,
) -> ColoredMesh:
    """Vertex-coloured FlexiCubes mesh of one triplane ``planes`` (1, 3, C, H, W).

    ``resolution`` and ``scale`` default to the variant's ``grid_res`` / ``grid_scale`` (128 and
    2.1 for ``instant-mesh-*``). Vertices (float32) are in the model frame = our world frame.
    Raises ``ValueError`` when there is no surface (only possible with
    ``fix_empty_shape=False``).
    """
    if not isinstance(model.synthesizer, MeshSynthesizer):
        raise TypeError("extract_flexicubes_mesh needs a mesh variant (InstantMesh)")
    res = model.cfg.grid_res if resolution is None else int(resolution)
    grid_scale = model.cfg.grid_scale if scale is None else float(scale)
    fields = TriplaneMeshFields(model.synthesizer, planes)
    result = flexicubes_from_fields(
        fields,
        res,
        grid_scale,
        model_deformation_bound(model, res),
        surface_only=surface_only,
        chunk_size=chunk_size,
        fix_empty_shape=fix_empty_shape,
        device=planes.device,
    )
    if result.faces.shape[0] == 0:
        raise ValueError("no surface: the SDF has no sign change on the FlexiCubes grid")
    step = chunk_size or result.vertices.shape[0]
    rgb = _chunked(fields.rgb, result.vertices, step)
    return ColoredMesh(
        result.vertices.float().cpu().numpy(),
        result.faces.cpu().numpy().astype(np.int64),
        vertex_colors_uint8(rgb),
    )
