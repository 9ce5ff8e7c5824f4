"""Loading meshes with precise errors, and per-mesh statistics.

``load_mesh(path)`` loads any format trimesh reads (GLB/glTF, OBJ+MTL, PLY, STL, OFF) as one
``trimesh.Trimesh`` in world space (scene-graph transforms applied, geometries concatenated) and
raises ``MeshLoadError`` with the path and the cause for: a missing file, a file that does not
parse, a file with no triangles, and non-finite vertex coordinates.

``mesh_stats(path)`` is the per-object record of the inspection stage: counts, bounds, texture
presence (a base-colour texture image that actually decodes), connected components of the
position-welded mesh, surface area.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
import trimesh

WELD_DECIMALS = 6
"""Vertices whose coordinates agree to this many decimals are the same point when welding
(UV/normal seams split vertices in GLB/OBJ files; welding undoes that before counting parts)."""


class MeshLoadError(ValueError):
    """A mesh file that cannot be used; the message names the file and the cause."""


def load_scene(path: str | os.PathLike[str]) -> trimesh.Scene:
    path = Path(path)
    if not path.is_file():
        raise MeshLoadError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise MeshLoadError(f"{path}: empty file")
    try:
        scene = trimesh.load(str(path), force="scene", process=False)
    except Exception as e:  # trimesh raises many exception types for malformed input
        raise MeshLoadError(f"{path}: cannot parse ({type(e).__name__}: {e})") from e
    if not isinstance(scene, trimesh.Scene):
        raise MeshLoadError(f"{path}: loader returned {type(scene).__name__}, not a scene")
    return scene


def load_mesh(path: str | os.PathLike[str]) -> trimesh.Trimesh:
    """Load ``path`` as one world-space triangle mesh (see module docstring for errors)."""
    scene = load_scene(path)
    return scene_to_mesh(scene, where=str(path))


def scene_to_mesh(scene: trimesh.Scene, where: str = "mesh") -> trimesh.Trimesh:
    meshes = [g for g in scene.geometry.values() if isinstance(g, trimesh.Trimesh)]
    if not meshes or sum(len(m.faces) for m in meshes) == 0:
        raise MeshLoadError(f"{where}: no triangles")
    try:
        mesh = scene.to_mesh()
    except Exception as e:
        raise MeshLoadError(f"{where}: cannot flatten scene ({type(e).__name__}: {e})") from e
    if len(mesh.faces) == 0:
        raise MeshLoadError(f"{where}: no triangles")
    if not np.isfinite(mesh.vertices).all():
        bad = int((~np.isfinite(mesh.vertices)).any(axis=1).sum())
        raise MeshLoadError(f"{where}: {bad} vertex/vertices with NaN or infinite coordinates")
    return mesh


def base_color_textures(scene: trimesh.Scene) -> tuple[int, int]:
    """(declared, decoded): base-colour texture images referenced by materials and how many of
    them decode as images. Vertex colours and flat colour factors are not textures."""
    declared = decoded = 0
    for geom in scene.geometry.values():
        visual = getattr(geom, "visual", None)
        material = getattr(visual, "material", None)
        if material is None:
            continue
        image = getattr(material, "baseColorTexture", None)
        if image is None:
            image = getattr(material, "image", None)
        if image is None:
            continue
        declared += 1
        try:
            image.load()
            if image.size[0] > 0 and image.size[1] > 0:
                decoded += 1
        except Exception:  # a texture that does not decode is counted as declared, not decoded
            continue
    return declared, decoded


def connected_components(mesh: trimesh.Trimesh, decimals: int = WELD_DECIMALS) -> int:
    """Number of connected components after welding vertices that share a position."""
    rounded = np.round(mesh.vertices, decimals)
    _, inverse = np.unique(rounded, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    faces = inverse[mesh.faces]
    used = np.unique(faces)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    n = int(inverse.max()) + 1
    graph = scipy.sparse.coo_matrix(
        (np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n)
    )
    _, labels = scipy.sparse.csgraph.connected_components(graph, directed=False)
    return len(np.unique(labels[used]))


def mesh_stats(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Statistics of one mesh file; raises ``MeshLoadError`` for unusable files."""
    scene = load_scene(path)
    mesh = scene_to_mesh(scene, where=str(path))
    declared, decoded = base_color_textures(scene)
    lo, hi = mesh.bounds
    return {
        "n_faces": len(mesh.faces),
        "n_vertices": len(mesh.vertices),
        "n_geometries": len(scene.geometry),
        "bbox_min": [float(x) for x in lo],
        "bbox_max": [float(x) for x in hi],
        "surface_area": float(mesh.area),
        "n_components": connected_components(mesh),
        "textures_declared": declared,
        "textures_decoded": decoded,
        "has_texture": decoded > 0,
        "file_bytes": Path(path).stat().st_size,
    }


def load_world_mesh(path: str | os.PathLike[str]) -> trimesh.Trimesh:
    """Load ``path`` into our Z-up world frame: glTF/OBJ/FBX files (Y up by convention) are
    rotated by ``Y_UP_TO_Z_UP``, PLY/STL/OFF taken as Z up (``rendering.normalize``)."""
    from rendering.normalize import Y_UP_TO_Z_UP, source_up_for

    mesh = load_mesh(path)
    if source_up_for(path) == "y":
        mesh.apply_transform(Y_UP_TO_Z_UP)
    return mesh


def world_mesh_glb_bytes(mesh: trimesh.Trimesh) -> bytes:
    """Binary glTF of a mesh given in our Z-up world frame, stored Y up as glTF requires (so
    :func:`load_world_mesh` and every glTF viewer see it upright)."""
    from rendering.normalize import Y_UP_TO_Z_UP

    out = mesh.copy()
    out.apply_transform(np.linalg.inv(Y_UP_TO_Z_UP))
    data = trimesh.Scene(out).export(file_type="glb")
    assert isinstance(data, bytes)
    return data
