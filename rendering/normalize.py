"""Normalizing meshes into the canonical box [-1, 1]^3.

Conventions (shared with ``rendering.cameras``):

- World frame: right-handed, **Z up** (Blender's convention). Azimuth 0 lies on +x and grows
  towards +y; elevation is measured from the xy-plane towards +z.
- Normalization is a *similarity* transform (uniform scale + translation, no rotation): the
  axis-aligned bounding box of the mesh is centred at the origin and its longest side is scaled
  to 2, so the mesh lies in [-1, 1]^3 and touches the box on both faces of its longest axis.
  Uniform scaling keeps proportions and face winding.
- The bounding box is that of the vertices referenced by faces (unreferenced vertices, e.g.
  leftovers of an exporter, do not move the box).
- Axes are not changed by normalization. Meshes loaded with trimesh from glTF/GLB (Objaverse,
  GSO) are **Y up**; pass ``source_up="y"`` to :func:`normalize_mesh` (or compose with
  :data:`Y_UP_TO_Z_UP`) to apply the same rotation Blender's glTF importer applies,
  (x, y, z) -> (x, -z, y), before normalizing.

Everything returns 4x4 float64 matrices that act on column vectors: ``p' = M @ [p, 1]``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import trimesh

Y_UP_TO_Z_UP: np.ndarray = np.array(
    [
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, -1.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
"""Rotation by +90 deg about +x: glTF's Y-up frame to the Z-up world, (x, y, z) -> (x, -z, y)
(what Blender's glTF importer does)."""

Y_UP_SUFFIXES = (".glb", ".gltf", ".obj", ".fbx")
"""Formats stored Y up (glTF by specification; OBJ/FBX by the convention Blender's importers
assume): rotated to Z up before normalizing."""

Z_UP_SUFFIXES = (".ply", ".stl", ".off")
"""Formats taken as already Z up (Blender imports them without an axis change)."""


BOX_HALF_SIZE = 1.0
"""Normalized objects lie in [-BOX_HALF_SIZE, BOX_HALF_SIZE]^3 = [-1, 1]^3."""


def _referenced_vertices(mesh: trimesh.Trimesh) -> np.ndarray:
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces)
    if vertices.size == 0 or faces.size == 0:
        raise ValueError("cannot normalize an empty mesh (no vertices or no faces)")
    used = vertices[np.unique(faces.reshape(-1))]
    if not np.isfinite(used).all():
        bad = int((~np.isfinite(used)).any(axis=1).sum())
        raise ValueError(f"cannot normalize a mesh with {bad} non-finite vertex coordinate(s)")
    return used


def mesh_bounds(mesh: trimesh.Trimesh) -> np.ndarray:
    """(2, 3) array [min, max] of the vertices referenced by faces; ValueError if empty or
    non-finite."""
    used = _referenced_vertices(mesh)
    return np.stack([used.min(axis=0), used.max(axis=0)])


def normalization_transform(mesh_or_bounds: trimesh.Trimesh | npt.ArrayLike) -> np.ndarray:
    """4x4 similarity that maps the bounding box into [-1, 1]^3, centred, longest side 2.

    ``mesh_or_bounds`` is a ``trimesh.Trimesh`` or a (2, 3) array ``[min_xyz, max_xyz]``.
    Raises ``ValueError`` for an empty mesh, non-finite coordinates, ``min > max`` or a
    degenerate box (all extents zero: a single point cannot be scaled).
    """
    if isinstance(mesh_or_bounds, trimesh.Trimesh):
        bounds = mesh_bounds(mesh_or_bounds)
    else:
        bounds = np.asarray(mesh_or_bounds, dtype=np.float64)
        if bounds.shape != (2, 3):
            raise ValueError(f"bounds must have shape (2, 3) [min, max], got {bounds.shape}")
        if not np.isfinite(bounds).all():
            raise ValueError("bounds contain NaN or infinite values")
        if (bounds[0] > bounds[1]).any():
            raise ValueError(f"bounds min {bounds[0].tolist()} exceeds max {bounds[1].tolist()}")
    lo, hi = bounds
    extent = float((hi - lo).max())
    if not extent > 0.0:
        raise ValueError("degenerate bounding box (all extents are zero); cannot scale it")
    scale = 2.0 * BOX_HALF_SIZE / extent
    center = (lo + hi) / 2.0
    transform = np.eye(4)
    transform[:3, :3] *= scale
    transform[:3, 3] = -scale * center
    return transform


def normalize_mesh(
    mesh: trimesh.Trimesh, source_up: Literal["z", "y"] = "z"
) -> tuple[trimesh.Trimesh, np.ndarray]:
    """A normalized copy of ``mesh`` and the 4x4 transform applied to it.

    With ``source_up="y"`` the mesh is first rotated from Y up to Z up (:data:`Y_UP_TO_Z_UP`)
    and the returned transform includes that rotation. The input mesh is not modified;
    visuals (UVs, materials, vertex colours) are kept. Coordinates are clipped to [-1, 1] after
    the transform so that round-off (at most a few ulps) never puts a vertex outside the box.
    """
    if source_up == "z":
        pre = np.eye(4)
    elif source_up == "y":
        pre = Y_UP_TO_Z_UP.copy()
    else:
        raise ValueError(f"source_up must be 'z' or 'y', got {source_up!r}")
    used = _referenced_vertices(mesh)
    rotated = used @ pre[:3, :3].T
    bounds = np.stack([rotated.min(axis=0), rotated.max(axis=0)])
    transform = normalization_transform(bounds) @ pre
    out = mesh.copy()
    out.apply_transform(transform)
    out.vertices = np.clip(np.asarray(out.vertices), -BOX_HALF_SIZE, BOX_HALF_SIZE)
    return out, transform


def apply_transform_to_points(points: npt.ArrayLike, transform: npt.ArrayLike) -> np.ndarray:
    """``(N, 3)`` points mapped by a 4x4 affine ``transform`` (column-vector convention)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    m = np.asarray(transform, dtype=np.float64)
    if m.shape != (4, 4):
        raise ValueError(f"transform must be 4x4, got {m.shape}")
    return pts @ m[:3, :3].T + m[:3, 3]


def source_up_for(path: str | os.PathLike[str]) -> Literal["y", "z"]:
    suffix = Path(path).suffix.lower()
    if suffix in Y_UP_SUFFIXES:
        return "y"
    if suffix in Z_UP_SUFFIXES:
        return "z"
    raise ValueError(
        f"{path}: unsupported mesh format {suffix!r}; expected one of "
        f"{', '.join(Y_UP_SUFFIXES + Z_UP_SUFFIXES)}"
    )
