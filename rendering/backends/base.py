"""The narrow boundary every rendering backend implements.

A backend turns one object file plus a list of :class:`rendering.cameras.Camera` into one
:class:`View` per camera. Everything else in the project talks in these arrays; only the
backend modules know Blender, nvdiffrast or the CPU rasterizer.

Conventions (identical for every backend: "same camera in -> same outputs out"):

- The object enters as a :class:`RenderObject`: the file path plus ``file_to_world``, the 4x4
  similarity that maps the file's own coordinates *as trimesh loads them* (scene-graph
  transforms applied; glTF/OBJ are Y up) into the normalized, Z-up world box [-1, 1]^3.
  :func:`prepare_object` computes it once, so all backends place the object identically and the
  transform is recorded with the outputs. A backend whose importer already rotates the file
  (Blender's glTF/OBJ importers apply Y up -> Z up) composes with the inverse of that rotation.
- :class:`View` arrays, all ``H x W`` with row 0 at the **top** of the image:
  ``rgba`` float32 in [0, 1], straight (not premultiplied) alpha, transparent background;
  ``depth`` float32 planar z-depth in world units (distance along the camera's viewing axis,
  what Blender's Depth pass stores), ``+inf`` on background pixels;
  ``normal`` float32 world-space unit normals (facing the camera), 0 on background pixels.
- ``mask`` is ``alpha >= 0.5``; ``coverage`` is the fraction of pixels in the mask (the
  filter's "< 10 % of the image from any view" criterion reads it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import trimesh

from rendering.cameras import Camera
from rendering.mesh_io import (
    MeshLoadError,
    base_color_textures,
    check_face_limit,
    check_mesh_file,
    load_scene,
    scene_to_mesh,
    texture_problems,
)
from rendering.normalize import (
    Y_UP_SUFFIXES,
    Y_UP_TO_Z_UP,
    Z_UP_SUFFIXES,
    mesh_bounds,
    normalization_transform,
    source_up_for,
)

DEFAULT_MAX_FACES = 5_000_000
"""Objects declaring more triangles are refused before loading (``--max-faces``): one such mesh
costs ~0.5 GB in trimesh and minutes per view in the CPU rasterizer; 0 disables the check."""


class RenderError(RuntimeError):
    """An object that a backend could not render; the message names the object and the cause."""


class RenderTimeout(RenderError):
    """A backend worker exceeded the per-object time limit (the worker was killed)."""


class BackendUnavailable(RuntimeError):
    """A backend that cannot run here (missing package, no GPU); the message says what to install."""


@dataclass(frozen=True)
class RenderSettings:
    """Backend-independent render settings."""

    samples: int = 16
    """Samples per pixel (Blender Cycles / EEVEE); rasterizers ignore it."""
    engine: Literal["cycles", "eevee"] = "cycles"
    """Blender engine: Cycles (path tracing, the dataset default) or EEVEE (rasterized; runs
    headless without a GPU through EGL/Mesa); other backends ignore it."""
    shading: Literal["lit", "unlit"] = "lit"
    """``unlit``: the surface's base colour (texture x factor x vertex colour) as is;
    ``lit``: Blender's path-traced uniform white environment (rasterizers render ``unlit``
    for ``lit`` too and say so in their docs)."""
    device: Literal["auto", "cpu", "gpu"] = "auto"
    """Where the backend computes: ``auto`` picks the GPU when one is usable."""
    threads: int = 0
    """CPU threads for the backend (0 = the backend's default)."""
    timeout_s: float = 600.0
    """Per-object wall-clock limit for backends running in a worker process."""


@dataclass(frozen=True)
class RenderObject:
    """One object to render: its file and the transform into the normalized world."""

    path: Path
    file_to_world: np.ndarray
    source_up: Literal["y", "z"] = "y"
    bounds_world: np.ndarray = field(default_factory=lambda: np.array([[-1.0] * 3, [1.0] * 3]))
    file_bounds: np.ndarray | None = None
    """(2, 3) box of the faces as trimesh loads the file (file coordinates); a backend that
    imports the file itself (Blender) checks that its geometry lands at ``file_to_world`` of
    this box. ``None``: unknown (formats only Blender reads)."""
    textures_decoded: int | None = None
    """Base-colour texture images trimesh decodes (``mesh_io.base_color_textures``); Blender
    must bind (and load) textures exactly when this is > 0. ``None``: unknown."""

    @property
    def suffix(self) -> str:
        return self.path.suffix.lower()


@dataclass(frozen=True, eq=False)
class View:
    """One rendered view (see the module docstring for the array conventions)."""

    rgba: np.ndarray
    depth: np.ndarray
    normal: np.ndarray
    camera: Camera

    def __post_init__(self) -> None:
        h, w = self.camera.height, self.camera.width
        if self.rgba.shape != (h, w, 4):
            raise ValueError(f"rgba must be ({h}, {w}, 4), got {self.rgba.shape}")
        if self.depth.shape != (h, w):
            raise ValueError(f"depth must be ({h}, {w}), got {self.depth.shape}")
        if self.normal.shape != (h, w, 3):
            raise ValueError(f"normal must be ({h}, {w}, 3), got {self.normal.shape}")

    @property
    def mask(self) -> np.ndarray:
        return np.asarray(self.rgba[..., 3] >= 0.5)

    @property
    def coverage(self) -> float:
        return float(self.mask.mean())


class Backend(Protocol):
    """What every backend provides. Instances may hold a worker process or GPU context:
    create one per worker, render many objects with it, then ``close()``."""

    name: str

    def render(self, obj: RenderObject, cameras: Sequence[Camera]) -> list[View]:
        """One :class:`View` per camera, in order. Raises :class:`RenderError` (naming the
        object) when the object cannot be rendered."""
        ...

    def close(self) -> None: ...


def prepare_object(
    path: str | os.PathLike[str],
    scene: trimesh.Scene | None = None,
    max_faces: int | None = DEFAULT_MAX_FACES,
) -> tuple[RenderObject, trimesh.Scene]:
    """Load ``path`` (or use the already loaded ``scene``), compute its normalization and return
    the :class:`RenderObject` with the scene. Raises ``MeshLoadError`` for unusable files."""
    path = Path(path)
    try:
        source_up = source_up_for(path)
    except ValueError as e:
        raise RenderError(str(e)) from e
    check_mesh_file(path)  # a truncated GLB is reported as such, not by its texture symptoms
    check_face_limit(path, max_faces)
    problems = texture_problems(path)
    if problems:
        raise MeshLoadError(f"{path}: {'; '.join(problems)}")
    if scene is None:
        scene = load_scene(path)
    mesh = scene_to_mesh(scene, where=str(path))
    pre = Y_UP_TO_Z_UP if source_up == "y" else np.eye(4)
    try:
        rotated = trimesh.Trimesh(
            vertices=np.asarray(mesh.vertices) @ pre[:3, :3].T, faces=mesh.faces, process=False
        )
        bounds = mesh_bounds(rotated)
        file_to_world = normalization_transform(bounds) @ pre
    except ValueError as e:
        raise MeshLoadError(f"{path}: {e}") from e
    scale = (
        float(file_to_world[0, 0] ** 2 + file_to_world[1, 0] ** 2 + file_to_world[2, 0] ** 2) ** 0.5
    )
    world_bounds = (bounds - bounds.mean(axis=0)) * scale
    obj = RenderObject(
        path=path,
        file_to_world=file_to_world,
        source_up=source_up,
        bounds_world=world_bounds,
        file_bounds=np.asarray(mesh.bounds, dtype=np.float64),
        textures_decoded=base_color_textures(scene)[1],
    )
    return obj, scene


__all__ = [
    "Y_UP_SUFFIXES",
    "Z_UP_SUFFIXES",
    "Backend",
    "BackendUnavailable",
    "RenderError",
    "RenderObject",
    "RenderSettings",
    "RenderTimeout",
    "View",
    "prepare_object",
    "source_up_for",
]
