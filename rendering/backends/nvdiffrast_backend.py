"""The ``nvdiffrast`` backend: GPU rasterization with ``nvdiffrast.torch`` (CUDA context).

It produces :class:`~rendering.backends.base.View` arrays with the conventions of
:mod:`rendering.backends.base` and is built to agree with the ``cpu`` backend
(:mod:`rendering.backends.cpu`) pixel for pixel up to rasterizer precision: both build on
:mod:`rendering.rasterizer`, so the scene flattening (:func:`~rendering.rasterizer.load_raster_mesh`:
scene graph, ``file_to_world``, the base-colour rules for PBR / simple materials / vertex and
face colours, the grey default), the texture convention, the binary coverage and the face
normals are the same.

How one object is rendered:

- The object becomes a world-space triangle soup (:class:`~rendering.rasterizer.RasterMesh`):
  ``3F`` vertices, triangle ``f`` = vertices ``3f, 3f + 1, 3f + 2``, so per-corner colours and
  UVs are plain vertex attributes. Vertices, colours, UVs and textures go to the GPU once per
  object; cameras are rendered in batches (nvdiffrast's instanced mode, cameras of one size
  together, at most :data:`PIXEL_BUDGET` pixels and :data:`VERTEX_BUDGET` camera-vertices per
  batch).
- **Projection**: clip = ``P @ camera.w2c @ [x, 1]`` with the OpenGL projection ``P`` of the
  camera's *horizontal* FOV and aspect ``W / H`` (square pixels, principal point at the image
  centre), computed in float64 elementwise (bitwise-identical inputs give bitwise-identical clip
  coordinates, so shared edges stay watertight) and passed to nvdiffrast as float32. nvdiffrast
  samples pixel ``(i, j)`` at its centre, NDC ``((i + 0.5) 2 / W - 1, (j + 0.5) 2 / H - 1)``:
  the pinhole model of :mod:`rendering.cameras`, except that nvdiffrast's row 0 is the
  **bottom** of the image (NDC y = -1): every output is flipped vertically to row 0 = top.
- **Near / far** planes come from the object's bounds: the planar depths of the 8 corners of the
  mesh's world bounding box, widened by 1 % (``near >= far * 1e-5``), so the depth buffer has
  good precision and nothing is clipped unless the camera is inside the bounding box (then
  geometry nearer than ``near`` is clipped; the ``cpu`` backend skips such triangles whole).
- **Coverage**: nvdiffrast's CUDA rasterizer, one sample per pixel centre, **no anti-aliasing**:
  ``dr.antialias`` is deliberately *not* applied, so alpha is exactly 1 on covered pixels and 0
  elsewhere, like the ``cpu`` backend. (nvdiffrast snaps vertices to 1/16 pixel, so a pixel centre
  within ~1/32 pixel of a silhouette edge can fall either way: masks agree with the ``cpu``
  backend to IoU > 0.99, not bitwise.) Both windings are rendered (no back-face culling).
- **Depth**: planar z-depth = clip ``w`` (``P``'s last row is ``(0, 0, -1, 0)``), interpolated
  perspective-correctly with ``dr.interpolate``: exact for planar triangles up to float32
  rounding; ``+inf`` on background.
- **Normals**: the geometric normal of the visible face (``rast[..., 3]`` = triangle id + 1),
  computed in float64 and flipped to face the camera, as in the ``cpu`` backend; 0 on background.
- **Colour**: unlit base colour. Per-corner colour multipliers are interpolated
  (perspective-correct) and multiplied by the base-colour texture sampled with ``dr.texture``:
  ``filter_mode="linear"`` (bilinear, no mip-mapping), ``boundary_mode="wrap"`` (repeat). The
  ``cpu`` backend's UVs follow trimesh (origin bottom-left, texel centres at
  ``((c + 0.5) / W, 1 - (r + 0.5) / H)``); nvdiffrast puts texel centres at
  ``((c + 0.5) / W, (r + 0.5) / H)`` with row 0 the first row of the tensor, so the texture goes
  up as stored (row 0 = image top) with ``v' = 1 - v``: the same bilinear taps and weights as
  :func:`rendering.rasterizer.sample_texture`. ``RenderSettings.shading="lit"`` renders unlit
  too (no lighting model), ``samples`` and ``threads`` are ignored.

Requirements: the ``nvdiffrast`` package (``diffrp-nvdiffrast`` on PyPI: ``pip install
'instantmesh-pipeline[gpu]'``), an NVIDIA driver and a CUDA device visible to torch; the CUDA
plugin is JIT-compiled by torch on first use (minutes; needs nvcc and the CUDA headers matching
torch's CUDA). nvdiffrast and CUDA are touched only when a backend is created; anything missing
raises :class:`~rendering.backends.base.BackendUnavailable` saying what to install.
"""

from __future__ import annotations

import math
import os
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rendering.backends.base import (
    BackendUnavailable,
    RenderError,
    RenderObject,
    RenderSettings,
    View,
)
from rendering.cameras import Camera
from rendering.rasterizer import RasterMesh, depth_range, load_raster_mesh, projection_matrix

INSTALL_HINT = "pip install 'instantmesh-pipeline[gpu]'"

PIXEL_BUDGET = 1 << 23
"""At most this many output pixels (cameras x H x W) are rasterized in one batch."""

VERTEX_BUDGET = 1 << 23
"""At most this many camera-vertices (cameras x 3F) are transformed in one batch (one camera
per batch is always allowed)."""

_FLOAT_EXACT_ID = 16777216.0  # 2^24: nvdiffrast stores larger triangle ids bit-cast


def decode_triangle_ids(channel: torch.Tensor) -> torch.Tensor:
    """nvdiffrast's ``rast[..., 3]`` (triangle id + 1 as float32, 0 = no triangle) -> int64
    triangle index, -1 where no triangle covers the pixel. Ids above 2^24 are stored bit-cast
    (``triidx_to_float`` in nvdiffrast's ``common.h``); both encodings are decoded."""
    small = channel.to(torch.int64)
    large = channel.contiguous().view(torch.int32).to(torch.int64) - 0x4A800000
    return torch.where(channel <= _FLOAT_EXACT_ID, small, large) - 1


def _load_runtime(settings: RenderSettings) -> tuple[Any, torch.device]:
    """Import ``nvdiffrast.torch`` and pick the CUDA device; :class:`BackendUnavailable` with
    what to install otherwise. (Tests replace this to run the backend on a fake rasterizer.)"""
    if settings.device == "cpu":
        raise BackendUnavailable(
            "the 'nvdiffrast' backend renders on a CUDA GPU only (device='cpu' was requested); "
            "use --backend cpu for CPU renders"
        )
    try:
        import nvdiffrast
        import nvdiffrast.torch as dr
    except (ImportError, OSError) as e:
        raise BackendUnavailable(
            f"the 'nvdiffrast' backend needs nvdiffrast: {INSTALL_HINT} ({type(e).__name__}: {e})"
        ) from e
    if not torch.cuda.is_available():
        raise BackendUnavailable(
            "the 'nvdiffrast' backend needs a CUDA GPU, and torch sees none here "
            "(no NVIDIA driver or device, or a CPU-only torch); use --backend cpu"
        )
    device = torch.device("cuda", torch.cuda.current_device())
    _prepare_plugin_build(nvdiffrast, device)
    return dr, device


def _prepare_plugin_build(nvdiffrast: Any, device: torch.device) -> None:
    """Help nvdiffrast's JIT build: target the device's architecture when
    ``TORCH_CUDA_ARCH_LIST`` is unset, and put the plugin's build directory on ``sys.path``
    (nvdiffrast loads the built module with ``importlib.import_module`` by name, which newer
    torch versions no longer make importable by themselves). Best effort: never raises."""
    try:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            major, minor = torch.cuda.get_device_capability(device)
            os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
        from torch.utils import cpp_extension

        name = re.sub(
            r"\W|^(?=\d)",
            "_",
            f"nvdiffrast_plugin_{nvdiffrast.__version__}_torch{torch.__version__}",
        )
        build_dir = cpp_extension._get_build_directory(name, False)
        if build_dir not in sys.path:
            sys.path.append(build_dir)
    except (RuntimeError, OSError, AttributeError) as e:
        # Only a hint for the JIT build: if it cannot be given, the build itself reports the
        # real problem, which becomes BackendUnavailable with nvdiffrast's message.
        warnings.warn(f"nvdiffrast build hints not applied: {e}", RuntimeWarning, stacklevel=2)


@dataclass(frozen=True, eq=False)
class _GpuMesh:
    """One object's :class:`RasterMesh` on the device, as nvdiffrast vertex arrays."""

    vertices: torch.Tensor  # (3F, 3) float64 world positions (triangle soup)
    tri: torch.Tensor  # (F, 3) int32 = arange(3F).view(F, 3)
    attrs: torch.Tensor  # (1, 3F, 5) float32: colour multiplier rgb, u, 1 - v
    face_texture: torch.Tensor  # (F,) int64 texture index or -1
    textures: tuple[torch.Tensor, ...]  # (1, H, W, 3) float32 in [0, 1], row 0 = image top
    face_normal: torch.Tensor  # (F, 3) float64 unit geometric normals (winding order)
    face_origin: torch.Tensor  # (F, 3) float64 first corner of each face
    bounds: np.ndarray  # (2, 3) world bounding box of the vertices

    @classmethod
    def upload(cls, mesh: RasterMesh, device: torch.device) -> _GpuMesh:
        n_faces = mesh.n_faces
        tri64 = mesh.triangles
        normal = torch.linalg.cross(tri64[:, 1] - tri64[:, 0], tri64[:, 2] - tri64[:, 0], dim=1)
        normal = normal / normal.norm(dim=1, keepdim=True).clamp_min(1e-300)
        uv = mesh.corner_uv.reshape(-1, 2)
        attrs = torch.cat([mesh.corner_rgb.reshape(-1, 3), uv[:, :1], 1.0 - uv[:, 1:2]], dim=1).to(
            torch.float32
        )
        vertices = tri64.reshape(-1, 3)
        bounds = np.stack([vertices.min(dim=0).values.numpy(), vertices.max(dim=0).values.numpy()])
        return cls(
            vertices=vertices.to(device).contiguous(),
            tri=torch.arange(3 * n_faces, dtype=torch.int32).reshape(n_faces, 3).to(device),
            attrs=attrs[None].contiguous().to(device),
            face_texture=mesh.face_texture.to(device),
            textures=tuple(
                (t.to(torch.float32) / 255.0)[None].contiguous().to(device) for t in mesh.textures
            ),
            face_normal=normal.to(device),
            face_origin=tri64[:, 0].contiguous().to(device),
            bounds=bounds,
        )


def _batches(cameras: Sequence[Camera], n_vertices: int) -> list[list[int]]:
    """Camera indices grouped into consecutive batches of one image size within the budgets."""
    out: list[list[int]] = []
    for i, cam in enumerate(cameras):
        last = out[-1] if out else None
        if last is not None:
            first = cameras[last[0]]
            n = len(last) + 1
            fits = (
                (first.width, first.height) == (cam.width, cam.height)
                and n * cam.width * cam.height <= PIXEL_BUDGET
                and n * n_vertices <= VERTEX_BUDGET
            )
            if fits:
                last.append(i)
                continue
        out.append([i])
    return out


def _empty_view(camera: Camera) -> View:
    """A view with nothing in it (transparent, depth ``+inf``, normals 0)."""
    h, w = camera.height, camera.width
    return View(
        rgba=np.zeros((h, w, 4), np.float32),
        depth=np.full((h, w), np.inf, np.float32),
        normal=np.zeros((h, w, 3), np.float32),
        camera=camera,
    )


class NvdiffrastBackend:
    """GPU rasterizer backend (registry name ``nvdiffrast``); see the module docstring.

    Creating it imports nvdiffrast, picks the current CUDA device and creates a
    ``RasterizeCudaContext`` (the first one in a fresh environment JIT-compiles nvdiffrast's
    plugin); :class:`BackendUnavailable` says what is missing. Create one per worker process
    and render many objects with it. Not thread-safe.
    """

    name = "nvdiffrast"

    def __init__(self, settings: RenderSettings | None = None) -> None:
        self.settings = settings or RenderSettings()
        self._dr, self.device = _load_runtime(self.settings)
        try:
            self._ctx: Any = self._dr.RasterizeCudaContext(device=self.device)
        except Exception as e:
            raise BackendUnavailable(
                "nvdiffrast's CUDA rasterizer could not start "
                f"({type(e).__name__}: {e}). Its plugin is JIT-compiled on first use and needs "
                f"nvcc and the CUDA headers for torch's CUDA {torch.version.cuda}, a C++ compiler "
                "and TORCH_CUDA_ARCH_LIST (set from the device when unset); use --backend cpu "
                "meanwhile"
            ) from e

    def render(self, obj: RenderObject, cameras: Sequence[Camera]) -> list[View]:
        """Load ``obj.path``, place it with ``obj.file_to_world`` and render every camera.

        Raises :class:`RenderError` naming the file for unreadable files, files without
        triangles, non-finite coordinates and GPU failures (out of memory included)."""
        cameras = list(cameras)
        if self._ctx is None:
            raise RenderError(f"{obj.path}: the nvdiffrast backend was closed")
        mesh = load_raster_mesh(obj)
        if not cameras:
            return []
        try:
            gpu = _GpuMesh.upload(mesh, self.device)
            planes = [depth_range(gpu.bounds, cam) for cam in cameras]
            # cameras that see the object at all (the others get an empty view)
            seen = [i for i, p in enumerate(planes) if p is not None]
            views: list[View | None] = [
                None if p is not None else _empty_view(cam)
                for cam, p in zip(cameras, planes, strict=True)
            ]
            for batch in _batches([cameras[i] for i in seen], 3 * mesh.n_faces):
                idx = [seen[j] for j in batch]
                rendered = self._render_batch(
                    gpu, [cameras[i] for i in idx], [planes[i] for i in idx]
                )
                for i, view in zip(idx, rendered, strict=True):
                    views[i] = view
            return [v for v in views if v is not None]
        except RenderError:
            raise
        except torch.cuda.OutOfMemoryError as e:
            raise RenderError(
                f"{obj.path}: out of GPU memory rendering {mesh.n_faces} faces: {e}"
            ) from e
        except RuntimeError as e:
            raise RenderError(f"{obj.path}: nvdiffrast failed: {e}") from e

    @torch.no_grad()
    def _render_batch(
        self, mesh: _GpuMesh, cameras: list[Camera], planes: list[tuple[float, float] | None]
    ) -> list[View]:
        """Render cameras of one image size in one instanced nvdiffrast call."""
        dr, device = self._dr, self.device
        width, height = cameras[0].width, cameras[0].height
        clip_from_world = np.stack(
            [
                projection_matrix(cam, *p) @ cam.w2c
                for cam, p in zip(cameras, planes, strict=True)
                if p is not None
            ]
        )
        m = torch.from_numpy(clip_from_world).to(device)
        v = mesh.vertices
        # Elementwise (no matmul): identical vertices give bitwise identical clip positions.
        clip = (
            v[None, :, 0:1] * m[:, None, :, 0]
            + v[None, :, 1:2] * m[:, None, :, 1]
            + v[None, :, 2:3] * m[:, None, :, 2]
            + m[:, None, :, 3]
        )
        pos = clip.to(torch.float32).contiguous()
        del clip
        rast, _ = dr.rasterize(self._ctx, pos, mesh.tri, resolution=(height, width))
        face = decode_triangle_ids(rast[..., 3])  # (B, H, W) int64, -1 = background
        covered = face >= 0
        face_safe = face.clamp_min(0)

        depth, _ = dr.interpolate(pos[..., 3:4].contiguous(), rast, mesh.tri)
        attrs, _ = dr.interpolate(mesh.attrs, rast, mesh.tri)
        rgb = attrs[..., 0:3]
        if mesh.textures:
            uv = attrs[..., 3:5].contiguous()
            tex_id = torch.where(covered, mesh.face_texture[face_safe], -1)
            for t in torch.unique(tex_id[tex_id >= 0]).tolist():
                sample = dr.texture(
                    mesh.textures[int(t)], uv, filter_mode="linear", boundary_mode="wrap"
                )
                rgb = torch.where((tex_id == t)[..., None], rgb * sample, rgb)

        normal = mesh.face_normal[face_safe]  # (B, H, W, 3) float64
        eye = torch.from_numpy(np.stack([c.position for c in cameras])).to(device)
        facing = ((eye[:, None, None, :] - mesh.face_origin[face_safe]) * normal).sum(dim=-1)
        normal = torch.where((facing < 0)[..., None], -normal, normal)

        cov = covered[..., None]
        rgba = torch.cat([rgb.clamp(0.0, 1.0), torch.ones_like(depth)], dim=-1)
        rgba = torch.where(cov, rgba, torch.zeros_like(rgba))
        depth_out = torch.where(covered, depth[..., 0], torch.full_like(depth[..., 0], math.inf))
        normal_out = torch.where(cov, normal, torch.zeros_like(normal)).to(torch.float32)
        # nvdiffrast's row 0 is the bottom of the image (NDC y = -1): flip to row 0 = top.
        rgba_np = torch.flip(rgba, dims=(1,)).cpu().numpy()
        depth_np = torch.flip(depth_out, dims=(1,)).cpu().numpy()
        normal_np = torch.flip(normal_out, dims=(1,)).cpu().numpy()
        return [
            View(
                rgba=np.ascontiguousarray(rgba_np[b], dtype=np.float32),
                depth=np.ascontiguousarray(depth_np[b], dtype=np.float32),
                normal=np.ascontiguousarray(normal_np[b], dtype=np.float32),
                camera=cam,
            )
            for b, cam in enumerate(cameras)
        ]

    def close(self) -> None:
        """Release the rasterizer context (the backend cannot render afterwards)."""
        self._ctx = None
