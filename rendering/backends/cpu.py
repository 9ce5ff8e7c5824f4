"""The ``cpu`` backend: the software rasterizer of :mod:`rendering.rasterizer` (torch on the CPU;
no GPU, no bpy) behind the :class:`~rendering.backends.base.Backend` interface.

Its views follow :mod:`rendering.backends.base` and the rasterizer's conventions (one sample per
pixel centre, no anti-aliasing, unlit base colour: ``RenderSettings.shading="lit"`` renders
unlit too), so they are interchangeable with the other backends' for evaluation. The
rasterizer's public names are re-exported here for existing callers; new code imports them from
:mod:`rendering.rasterizer`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import trimesh

from rendering.backends.base import RenderObject, RenderSettings, View
from rendering.cameras import Camera
from rendering.rasterizer import (
    DEFAULT_GREY,
    NEAR,
    RasterMesh,
    load_raster_mesh,
    rasterize,
    rasterize_raster_mesh,
    sample_texture,
    visible_faces,
)


class CpuBackend:
    """Software rasterizer backend (registry name ``cpu``).

    ``settings.threads > 0`` sets torch's (process-wide) intra-op thread count; use 1 when
    several render processes share the machine (oversubscribed OpenMP threads made renders
    about 10x slower and erratic in measurements on 2 cores). ``samples`` and ``device`` are
    ignored (always one sample per pixel, always on the CPU); ``shading="lit"`` is rendered
    unlit (base colour), see the module docstring.
    """

    name = "cpu"

    def __init__(self, settings: RenderSettings | None = None) -> None:
        self.settings = settings or RenderSettings()
        if self.settings.threads > 0:
            torch.set_num_threads(int(self.settings.threads))

    def render(self, obj: RenderObject, cameras: Sequence[Camera]) -> list[View]:
        """Load ``obj.path``, place it with ``obj.file_to_world`` and render every camera.

        Raises :class:`RenderError` naming the file for unreadable files (the
        ``MeshLoadError`` is chained as the cause), files without triangles and non-finite
        coordinates.
        """
        mesh = load_raster_mesh(obj)
        return [rasterize_raster_mesh(mesh, cam) for cam in cameras]

    def render_scene(
        self, scene_world: trimesh.Scene | trimesh.Trimesh, cameras: Sequence[Camera]
    ) -> list[View]:
        """Render an already loaded scene that is already in world coordinates (e.g. the
        scene :func:`~rendering.backends.base.prepare_object` returned, with
        ``obj.file_to_world`` applied by the caller)."""
        mesh = RasterMesh.from_geometry(scene_world, where="scene")
        return [rasterize_raster_mesh(mesh, cam) for cam in cameras]

    def close(self) -> None:
        """Nothing to release."""


__all__ = [
    "DEFAULT_GREY",
    "NEAR",
    "CpuBackend",
    "RasterMesh",
    "load_raster_mesh",
    "rasterize",
    "rasterize_raster_mesh",
    "sample_texture",
    "visible_faces",
]
