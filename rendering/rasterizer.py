"""The triangle rasterizer shared by the ``cpu`` and ``nvdiffrast`` render backends and the
model's differentiable mesh renderer (``instantmesh.mesh_render``): one public module, so no
caller reaches into a backend's internals.

Public API:

- :class:`RasterMesh`: a world-space triangle soup with per-corner colours / UVs and textures,
  built once from a trimesh mesh or scene (:meth:`RasterMesh.from_geometry`, scene-graph
  transforms and an optional 4x4 applied) or from an object file (:func:`load_raster_mesh`);
- :func:`rasterize` / :func:`rasterize_raster_mesh`: one camera -> one
  :class:`~rendering.backends.base.View` (unlit RGBA, planar depth, world normals) on the CPU;
  :func:`rasterize_views`: many cameras;
- :func:`visible_faces`: visibility only (covered pixels and the face seen at each), for
  renderers that recompute barycentrics with autograd;
- :func:`sample_texture`: the bilinear, repeat-wrapped texture lookup both backends share;
- :func:`projection_matrix`, :func:`depth_range`, :func:`clip_from_world`: the OpenGL
  projection of a :class:`~rendering.cameras.Camera` with near / far planes fitted to a
  bounding box, as the GPU rasterizer (nvdiffrast) takes it.

Outputs follow :mod:`rendering.backends.base` (row 0 at the top, straight alpha, planar z-depth
with ``+inf`` background, world-space normals facing the camera, 0 background), so they are
interchangeable with every backend's for evaluation.

Conventions and choices of the CPU rasterizer:

- **Projection**: the pinhole model of :mod:`rendering.cameras`: world points go through
  ``camera.w2c_opencv()`` (x right, y down, +z forward) and ``camera.intrinsics()``; pixel
  ``(i, j)`` (column, row) has its centre at ``(i + 0.5, j + 0.5)`` and is sampled only there.
- **Coverage**: a pixel is covered when its centre lies inside (or exactly on the edge of) a
  triangle: one sample per pixel, **no anti-aliasing**, so alpha is exactly 1 on covered pixels
  and 0 elsewhere. Edge functions are evaluated with each edge's endpoints in a canonical
  (lexicographic screen-position) order, relative to a fixed global tile grid, so the two
  triangles sharing an edge compute bitwise opposite values there: no pixel centre falls
  through a crack between them, none is covered by neither.
- **Both windings** are rendered (no back-face culling); the normal is the triangle's
  geometric (face) normal, flipped to face the camera, so winding never matters.
- **Near plane**: triangles with any vertex at camera depth ``<= NEAR`` (behind or on the
  camera plane) are skipped, not clipped. Cameras here look at objects in [-1, 1]^3 from
  outside, where this never triggers.
- **Visibility**: per pixel the smallest planar depth wins (``scatter_reduce(amin)`` in
  float64); exact depth ties go to the lowest face index (faces are numbered in scene-graph
  order), so renders are deterministic.
- **Colour** is the *unlit* base colour, in the colour space the file stores (sRGB for
  textures and colour factors as trimesh loads them; no colour management):
  ``baseColorFactor x baseColorTexture x COLOR_0`` for glTF/PBR materials; for
  ``SimpleMaterial`` (OBJ/MTL) the ``map_Kd`` image when there is one (as Blender's OBJ
  importer does: ``Kd`` is ignored then, also because trimesh substitutes a 0.4 grey when an
  MTL has no ``Kd``), otherwise ``Kd``; interpolated vertex colours or flat face colours for
  ``ColorVisuals``; grey :data:`DEFAULT_GREY` without any visual. ``RenderSettings.shading``
  ``"lit"`` is rendered unlit too (no lighting model here).
- **Textures**: sampled bilinearly at the perspective-correct interpolated UV with *repeat*
  wrapping and no mip-mapping (sampler settings in the file are ignored). UVs follow trimesh:
  origin at the **bottom-left** of the image (trimesh flips glTF's top-left ``v`` on load and
  back on export), so texel row ``r`` of an ``H``-row image covers ``v`` in
  ``[1 - (r + 1) / H, 1 - r / H]``; texel centres sit at ``((c + 0.5) / W, 1 - (r + 0.5) / H)``.
  Texture and factor alpha are ignored: every surface is opaque.
- Attributes (colours, UVs) are interpolated **perspective-correctly**; depth is exact planar
  depth of the triangle's plane at the pixel centre.

Algorithm (all steps vectorised over faces / pixels, no Python loop per triangle or pixel):
project the corners (float64), drop faces behind the near plane, degenerate on screen or
without a pixel centre in their bounding box; bin each face's bounding box into the
``TILE x TILE`` tiles of a global grid and cull tiles where an edge function is negative on
the whole box part; test the tiles' pixel centres densely, at most ``PAIR_BUDGET`` at once;
z-test with ``scatter_reduce(amin)`` on depth, then on face index among the depth winners;
re-evaluate the winners' barycentrics to shade.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import trimesh
from PIL import Image
from trimesh.visual.color import ColorVisuals
from trimesh.visual.material import PBRMaterial, SimpleMaterial
from trimesh.visual.texture import TextureVisuals

from rendering.backends.base import RenderError, RenderObject, View
from rendering.cameras import Camera
from rendering.mesh_io import MeshLoadError, load_scene

NEAR = 1e-4
"""Triangles with a vertex at camera depth <= NEAR (world units) are skipped."""

DEFAULT_GREY = 0.8
"""Base colour of geometry without any visual (no material, no colours)."""

PAIR_BUDGET = 1 << 21
"""Pixel-centre tests (face x pixel candidates) evaluated at once: bounds the working memory
to roughly PAIR_BUDGET x 60 bytes (about 120 MB) whatever the mesh and image size."""

TILE = 4
"""Side in pixels of the screen tiles that faces are binned into; each (face, tile) pair tests
the TILE^2 pixel centres of the tile at once (4 measured fastest overall: small triangles
waste little work, large and long thin ones skip the empty tiles of their bounding box)."""

TILE_MARGIN = 1e-9
"""Tiles are culled only when a barycentric is below -TILE_MARGIN on the whole tile, so
rounding never culls a tile holding a covered pixel centre."""

_NO_FACE = torch.iinfo(torch.int64).max


@dataclass(frozen=True, eq=False)
class RasterMesh:
    """A world-space triangle soup with per-corner shading attributes, ready to rasterize.

    Build it with :meth:`from_geometry` once and rasterize it for many cameras.

    - ``triangles`` (F, 3, 3) float64 world coordinates of each face's corners;
    - ``corner_rgb`` (F, 3, 3) float32 colour multiplier per corner in [0, 1] (factor x vertex
      or face colour; white where a texture alone gives the colour);
    - ``corner_uv`` (F, 3, 2) float32 texture coordinates (trimesh convention, see module
      docstring); zeros for untextured faces;
    - ``face_texture`` (F,) int64 index into ``textures`` or -1 for untextured faces;
    - ``textures``: per texture a (H, W, 3) uint8 tensor (row 0 = top of the image).
    """

    triangles: torch.Tensor
    corner_rgb: torch.Tensor
    corner_uv: torch.Tensor
    face_texture: torch.Tensor
    textures: tuple[torch.Tensor, ...]

    @property
    def n_faces(self) -> int:
        return int(self.triangles.shape[0])

    @classmethod
    def from_geometry(
        cls,
        geometry: trimesh.Trimesh | trimesh.Scene,
        transform: np.ndarray | None = None,
        where: str = "mesh",
    ) -> RasterMesh:
        """Flatten a mesh or scene into world space (scene-graph transforms, then
        ``transform``, a 4x4 acting on column vectors) keeping each geometry's visuals.

        Raises :class:`RenderError` (naming ``where``) for non-finite transforms or
        non-finite vertices used by a face.
        Non-triangle geometries (point clouds, paths) are ignored; a scene without triangles
        gives an empty mesh.
        """
        post = np.eye(4) if transform is None else np.asarray(transform, dtype=np.float64)
        if post.shape != (4, 4) or not np.isfinite(post).all():
            raise RenderError(f"{where}: transform must be a finite 4x4 matrix")
        parts: list[tuple[trimesh.Trimesh, np.ndarray]] = []
        if isinstance(geometry, trimesh.Scene):
            for node in geometry.graph.nodes_geometry:
                matrix, geom_name = geometry.graph[node]
                geom = geometry.geometry.get(geom_name)
                if isinstance(geom, trimesh.Trimesh):
                    parts.append((geom, post @ np.asarray(matrix, dtype=np.float64)))
        elif isinstance(geometry, trimesh.Trimesh):
            parts.append((geometry, post))
        else:
            raise TypeError(f"expected trimesh.Trimesh or trimesh.Scene, got {type(geometry)}")

        tris: list[np.ndarray] = []
        rgbs: list[np.ndarray] = []
        uvs: list[np.ndarray] = []
        tex_ids: list[np.ndarray] = []
        textures: list[torch.Tensor] = []
        texture_index: dict[int, int] = {}
        for mesh, matrix in parts:
            faces = np.asarray(mesh.faces, dtype=np.int64).reshape(-1, 3)
            if len(faces) == 0:
                continue
            vertices = np.asarray(mesh.vertices, dtype=np.float64).reshape(-1, 3)
            if faces.min() < 0 or faces.max() >= len(vertices):
                raise RenderError(f"{where}: face indices out of range")
            world = vertices @ matrix[:3, :3].T + matrix[:3, 3]
            tri = world[faces]
            if not np.isfinite(tri).all():
                bad = int((~np.isfinite(tri)).any(axis=(1, 2)).sum())
                raise RenderError(f"{where}: {bad} face(s) with NaN or infinite coordinates")
            rgb, uv, image = _shading(mesh, faces)
            tex_id = -1
            if image is not None:
                key = id(image)
                if key not in texture_index:
                    texture_index[key] = len(textures)
                    textures.append(_texture_tensor(image))
                tex_id = texture_index[key]
            tris.append(tri)
            rgbs.append(rgb)
            uvs.append(uv if uv is not None else np.zeros((len(faces), 3, 2)))
            tex_ids.append(np.full(len(faces), tex_id if uv is not None else -1, np.int64))
        if not tris:
            return cls(
                triangles=torch.zeros((0, 3, 3), dtype=torch.float64),
                corner_rgb=torch.zeros((0, 3, 3), dtype=torch.float32),
                corner_uv=torch.zeros((0, 3, 2), dtype=torch.float32),
                face_texture=torch.zeros(0, dtype=torch.int64),
                textures=(),
            )
        return cls(
            triangles=torch.from_numpy(np.concatenate(tris)),
            corner_rgb=torch.from_numpy(np.concatenate(rgbs).astype(np.float32)),
            corner_uv=torch.from_numpy(np.concatenate(uvs).astype(np.float32)),
            face_texture=torch.from_numpy(np.concatenate(tex_ids)),
            textures=tuple(textures),
        )


def _to_unit_rgb(colors: Any) -> np.ndarray:
    """Colours (..., 3 or 4) as float64 RGB in [0, 1]; integer types are normalized by their
    maximum (uint8 -> /255, uint16 -> /65535), floats are taken as [0, 1]."""
    arr = np.asarray(colors)
    if arr.dtype.kind in "iu":
        out = arr[..., :3].astype(np.float64) / float(np.iinfo(arr.dtype).max)
    else:
        out = arr[..., :3].astype(np.float64)
    return np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1.0)


def _shading(
    mesh: trimesh.Trimesh, faces: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None, Image.Image | None]:
    """Per-corner colour multiplier (F, 3, 3), per-corner UVs (F, 3, 2) or None, and the
    base-colour image (or None) of one geometry (see the module docstring for the rules)."""
    n_faces, n_vertices = len(faces), len(mesh.vertices)
    visual = getattr(mesh, "visual", None)
    grey = np.full((n_faces, 3, 3), DEFAULT_GREY)
    if isinstance(visual, TextureVisuals):
        material = visual.material
        image: Image.Image | None = None
        factor = np.ones(3)
        if isinstance(material, PBRMaterial):
            image = material.baseColorTexture
            if material.baseColorFactor is not None:
                factor = _to_unit_rgb(material.baseColorFactor)
        elif isinstance(material, SimpleMaterial):
            image = material.image
            if image is None:
                factor = _to_unit_rgb(material.diffuse)
        elif material is not None and getattr(material, "main_color", None) is not None:
            factor = _to_unit_rgb(material.main_color)
        rgb = np.broadcast_to(factor, (n_faces, 3, 3)).copy()
        vcol = visual.vertex_attributes.get("color") if visual.vertex_attributes else None
        if vcol is not None and len(vcol) == n_vertices:
            rgb *= _to_unit_rgb(vcol)[faces]
        uv_all = visual.uv
        uv: np.ndarray | None = None
        if image is not None and uv_all is not None and len(uv_all) == n_vertices:
            uv = np.asarray(uv_all, dtype=np.float64)[:, :2][faces]
            uv = np.nan_to_num(uv, nan=0.0, posinf=0.0, neginf=0.0)
        return rgb, uv, image if uv is not None else None
    if isinstance(visual, ColorVisuals):
        kind = visual.kind
        if kind == "vertex":
            return _to_unit_rgb(visual.vertex_colors)[faces], None, None
        if kind == "face":
            face_rgb = _to_unit_rgb(visual.face_colors)
            return np.repeat(face_rgb[:, None, :], 3, axis=1), None, None
    return grey, None, None


def _texture_tensor(image: Image.Image) -> torch.Tensor:
    """(H, W, 3) uint8 RGB of a PIL image (alpha dropped; palette/grey images expanded)."""
    if image.mode != "RGB":
        image = image.convert("RGBA")
    arr = np.asarray(image, dtype=np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return torch.from_numpy(np.array(arr[..., :3], dtype=np.uint8, order="C", copy=True))


def sample_texture(texture: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear, repeat-wrapped samples (N, 3) float32 in [0, 1] of an (H, W, 3) uint8 texture
    at trimesh-convention UVs (N, 2): ``u`` right, ``v`` up from the bottom-left corner."""
    h, w = int(texture.shape[0]), int(texture.shape[1])
    flat = texture.reshape(-1, 3)
    uv64 = uv.to(torch.float64)
    x = uv64[:, 0] * w - 0.5
    y = (1.0 - uv64[:, 1]) * h - 0.5
    x0f, y0f = torch.floor(x), torch.floor(y)
    fx = (x - x0f).to(torch.float32)[:, None]
    fy = (y - y0f).to(torch.float32)[:, None]
    x0 = torch.remainder(x0f.to(torch.int64), w)
    y0 = torch.remainder(y0f.to(torch.int64), h)
    x1 = torch.remainder(x0 + 1, w)
    y1 = torch.remainder(y0 + 1, h)

    def tap(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return flat[yy * w + xx].to(torch.float32)

    top = tap(y0, x0) * (1.0 - fx) + tap(y0, x1) * fx
    bottom = tap(y1, x0) * (1.0 - fx) + tap(y1, x1) * fx
    return (top * (1.0 - fy) + bottom * fy) / 255.0


@dataclass(frozen=True)
class _Screen:
    """Per-face screen-space data of the faces that can cover a pixel of one camera."""

    face: torch.Tensor  # (G,) int64 index into the RasterMesh
    # Per corner / edge k, (3, G) row-contiguous float64 (rows gathered with index_select):
    inv_z: torch.Tensor  # 1 / camera depth of corner k
    ax: torch.Tensor  # canonical first endpoint x of the edge opposite corner k
    ay: torch.Tensor  # canonical first endpoint y
    dx: torch.Tensor  # canonical edge vector x
    dy: torch.Tensor  # canonical edge vector y
    scale: torch.Tensor  # barycentric_k = scale_k * canonical edge function_k
    x0: torch.Tensor  # (G,) int64 first pixel column of the bounding box
    y0: torch.Tensor  # (G,) int64 first pixel row
    nx: torch.Tensor  # (G,) int64 bounding-box width in pixels
    count: torch.Tensor  # (G,) int64 pixels in the bounding box


def _setup(mesh: RasterMesh, camera: Camera) -> _Screen:
    """Project the triangles and keep those that may cover a pixel centre."""
    w2c = torch.from_numpy(camera.w2c_opencv())
    k = camera.intrinsics()
    cam = mesh.triangles @ w2c[:3, :3].T + w2c[:3, 3]  # (F, 3, 3)
    z = cam[..., 2]
    in_front = (z > NEAR).all(dim=1)
    z_safe = torch.where(z > NEAR, z, torch.ones_like(z))
    px = float(k[0, 0]) * cam[..., 0] / z_safe + float(k[0, 2])
    py = float(k[1, 1]) * cam[..., 1] / z_safe + float(k[1, 2])
    width, height = camera.width, camera.height

    # Bounding box of the pixel centres (i + 0.5, j + 0.5) inside the triangle's extent.
    big = 4.0 * (width + height) + 16.0
    lo_x = torch.ceil(px.min(dim=1).values.clamp(-big, big) - 0.5).clamp(0, width)
    hi_x = torch.floor(px.max(dim=1).values.clamp(-big, big) - 0.5).clamp(-1, width - 1)
    lo_y = torch.ceil(py.min(dim=1).values.clamp(-big, big) - 0.5).clamp(0, height)
    hi_y = torch.floor(py.max(dim=1).values.clamp(-big, big) - 0.5).clamp(-1, height - 1)
    nx = (hi_x - lo_x + 1).clamp_min(0).to(torch.int64)
    ny = (hi_y - lo_y + 1).clamp_min(0).to(torch.int64)

    # Twice the signed screen area; (near-)degenerate projections cover no pixel centre.
    area2 = (px[:, 1] - px[:, 0]) * (py[:, 2] - py[:, 0]) - (px[:, 2] - px[:, 0]) * (
        py[:, 1] - py[:, 0]
    )
    keep = in_front & (nx > 0) & (ny > 0) & (area2.abs() > 1e-12) & torch.isfinite(area2)
    idx = torch.nonzero(keep).squeeze(1)
    px, py, z, area2 = px[idx], py[idx], z[idx], area2[idx]

    # Edge k joins corners k+1 and k+2 (opposite corner k). Endpoints in lexicographic
    # (x, then y) order make the edge function of a shared edge bitwise identical in both
    # neighbours (up to an exact sign flip).
    p_x, p_y = px.roll(-1, dims=1), py.roll(-1, dims=1)
    q_x, q_y = px.roll(-2, dims=1), py.roll(-2, dims=1)
    swap = (q_x < p_x) | ((q_x == p_x) & (q_y < p_y))
    ax = torch.where(swap, q_x, p_x)
    ay = torch.where(swap, q_y, p_y)
    dx = torch.where(swap, p_x, q_x) - ax
    dy = torch.where(swap, p_y, q_y) - ay
    # Traversed edge function E_(p,q)(v) = (q - p) x (v - p) equals area2 at corner k, so
    # barycentric_k = sign * E_canonical / area2 with sign = -1 where the endpoints swapped.
    sign = torch.where(swap, -1.0, 1.0).to(torch.float64)
    scale = sign / area2[:, None]
    nx_k, ny_k = nx[idx], ny[idx]

    def rows(t: torch.Tensor) -> torch.Tensor:
        return t.T.contiguous()

    return _Screen(
        face=idx,
        inv_z=rows(1.0 / z),
        ax=rows(ax),
        ay=rows(ay),
        dx=rows(dx),
        dy=rows(dy),
        scale=rows(scale),
        x0=lo_x[idx].to(torch.int64),
        y0=lo_y[idx].to(torch.int64),
        nx=nx_k,
        count=nx_k * ny_k,
    )


def _barycentrics(
    s: _Screen, g: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor
) -> list[torch.Tensor]:
    """Screen-space barycentrics of pixel centres ``(cx, cy)`` in faces ``g`` of ``s``."""
    out = []
    for k in range(3):
        ax, ay = _take(s.ax[k], g), _take(s.ay[k], g)
        e = _take(s.dx[k], g) * (cy - ay) - _take(s.dy[k], g) * (cx - ax)
        out.append(e * _take(s.scale[k], g))
    return out


def _take(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``t[idx]`` along dim 0 (``index_select`` is several times faster than ``t[idx]``)."""
    return torch.index_select(t, 0, idx)


def _chunks(counts: torch.Tensor, budget: int) -> list[tuple[int, int]]:
    """Consecutive ``[start, stop)`` ranges of ``counts`` whose sums stay within ``budget``
    (a single entry larger than the budget forms its own range)."""
    n = int(counts.shape[0])
    cum = torch.cumsum(counts, 0)
    out = []
    start = 0
    while start < n:
        base = int(cum[start - 1]) if start > 0 else 0
        stop = max(int(torch.searchsorted(cum, base + budget, right=True)), start + 1)
        out.append((start, min(stop, n)))
        start = stop
    return out


def _expand(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``counts`` (n,) int64: ``owner`` (sum,) = i repeated counts[i] times and ``local``
    (sum,) = 0 .. counts[i] - 1 within each owner."""
    total = int(counts.sum())
    owner = torch.repeat_interleave(torch.arange(counts.shape[0]), counts, output_size=total)
    offsets = torch.cumsum(counts, 0) - counts
    local = torch.arange(total) - torch.repeat_interleave(offsets, counts, output_size=total)
    return owner, local


def _tile_span(s: _Screen, start: int, stop: int) -> tuple[torch.Tensor, ...]:
    """Pixel bounding boxes ``x0, y0, x1, y1`` (inclusive) of faces ``start:stop`` of ``s``
    and the first tile ``tx0, ty0`` and tile counts ``ntx, nty`` they span."""
    x0, y0 = s.x0[start:stop], s.y0[start:stop]
    x1 = x0 + s.nx[start:stop] - 1
    y1 = y0 + torch.div(s.count[start:stop], s.nx[start:stop], rounding_mode="floor") - 1
    tx0 = torch.div(x0, TILE, rounding_mode="floor")
    ty0 = torch.div(y0, TILE, rounding_mode="floor")
    ntx = torch.div(x1, TILE, rounding_mode="floor") - tx0 + 1
    nty = torch.div(y1, TILE, rounding_mode="floor") - ty0 + 1
    return x0, y0, x1, y1, tx0, ty0, ntx, nty


def _tiles(s: _Screen, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(face, tile) candidates of faces ``start:stop`` of ``s``: every TILE x TILE tile of the
    global tile grid that the face's pixel bounding box touches, kept unless a barycentric is
    negative on all pixel centres of the box's part in the tile (a conservative cull; the
    per-pixel test decides exactly).

    Returns ``g`` (index into ``s``, increasing) and the tiles' first pixel ``tile_x, tile_y``.
    """
    x0, y0, x1, y1, tx0, ty0, ntx, nty = _tile_span(s, start, stop)
    owner, local = _expand(ntx * nty)
    g = owner + start
    nt = _take(ntx, owner)
    row = torch.div(local, nt, rounding_mode="floor")
    tile_x = (_take(tx0, owner) + (local - row * nt)) * TILE
    tile_y = (_take(ty0, owner) + row) * TILE
    cx0 = torch.maximum(tile_x, _take(x0, owner)).to(torch.float64) + 0.5
    cy0 = torch.maximum(tile_y, _take(y0, owner)).to(torch.float64) + 0.5
    cx1 = torch.minimum(tile_x + TILE - 1, _take(x1, owner)).to(torch.float64) + 0.5
    cy1 = torch.minimum(tile_y + TILE - 1, _take(y1, owner)).to(torch.float64) + 0.5
    # barycentric_k is linear in the pixel centre (cx, cy) with gradient scale * (-dy, dx):
    # its maximum over the rectangle of centres is at one corner.
    keep = torch.ones_like(g, dtype=torch.bool)
    for k in range(3):
        scale, dx, dy = _take(s.scale[k], g), _take(s.dx[k], g), _take(s.dy[k], g)
        cx = torch.where(-scale * dy > 0, cx1, cx0)
        cy = torch.where(scale * dx > 0, cy1, cy0)
        e = dx * (cy - _take(s.ay[k], g)) - dy * (cx - _take(s.ax[k], g))
        keep &= e * scale >= -TILE_MARGIN
    sel = torch.nonzero(keep).squeeze(1)
    return _take(g, sel), _take(tile_x, sel), _take(tile_y, sel)


def _visibility(s: _Screen, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Z-buffer: per pixel (flattened, row-major) the nearest depth (+inf if uncovered) and
    the index into ``s`` of the winning face (``_NO_FACE`` if uncovered).

    Faces are binned into the tiles of a TILE x TILE grid (:func:`_tiles`); each (face, tile)
    pair then tests all TILE^2 pixel centres of the tile densely (broadcast, no gathers), at
    most PAIR_BUDGET pixel tests at once. The edge function of edge k at the pixel centre
    ``(tile_x + 0.5 + c, tile_y + 0.5 + r)`` is ``E(tile centre) + dx * r - dy * c``, a
    function of the canonical edge and the tile only, hence bitwise equal in the two faces
    that share the edge. Chunks come in increasing face order and are merged keeping the
    nearest depth and, on exact ties, the lowest face index.
    """
    n_pix = width * height
    zbuf = torch.full((n_pix,), float("inf"), dtype=torch.float64)
    fbuf = torch.full((n_pix,), _NO_FACE, dtype=torch.int64)
    n_faces = int(s.face.shape[0])
    if n_faces == 0:
        return zbuf, fbuf
    n_tile = TILE * TILE
    tiles_per_chunk = max(1, PAIR_BUDGET // n_tile)
    offset = torch.arange(n_tile)
    off_r = torch.div(offset, TILE, rounding_mode="floor")
    off_c = offset - off_r * TILE
    r64, c64 = off_r.to(torch.float64)[None], off_c.to(torch.float64)[None]
    *_, ntx, nty = _tile_span(s, 0, n_faces)
    first_chunk = True
    for f_start, f_stop in _chunks(ntx * nty, tiles_per_chunk):
        all_g, all_tx, all_ty = _tiles(s, f_start, f_stop)
        for start in range(0, int(all_g.shape[0]), tiles_per_chunk):
            g = all_g[start : start + tiles_per_chunk]
            tx = all_tx[start : start + tiles_per_chunk]
            ty = all_ty[start : start + tiles_per_chunk]
            ox = tx.to(torch.float64) + 0.5
            oy = ty.to(torch.float64) + 0.5
            inside = ((tx[:, None] + off_c[None]) < width) & ((ty[:, None] + off_r[None]) < height)
            bary = []
            for k in range(3):
                dx, dy = _take(s.dx[k], g), _take(s.dy[k], g)
                e0 = dx * (oy - _take(s.ay[k], g)) - dy * (ox - _take(s.ax[k], g))
                e = e0[:, None] + (dx[:, None] * r64 - dy[:, None] * c64)
                b = e * _take(s.scale[k], g)[:, None]
                inside &= b >= 0
                bary.append(b)
            hit = torch.nonzero(inside.reshape(-1)).squeeze(1)
            tile_i = torch.div(hit, n_tile, rounding_mode="floor")
            off = hit - tile_i * n_tile
            gh = _take(g, tile_i)
            pix = (_take(ty, tile_i) + _take(off_r, off)) * width + _take(tx, tile_i)
            pix += _take(off_c, off)
            inv_depth = torch.zeros_like(hit, dtype=torch.float64)
            for k in range(3):
                inv_depth += _take(bary[k].reshape(-1), hit) * _take(s.inv_z[k], gh)
            depth = 1.0 / inv_depth
            cz = torch.full((n_pix,), float("inf"), dtype=torch.float64)
            cz.scatter_reduce_(0, pix, depth, reduce="amin")
            win = torch.nonzero(depth == _take(cz, pix)).squeeze(1)
            # Faces in ``s`` are in increasing mesh order, so the lowest index wins ties.
            cf = torch.full((n_pix,), _NO_FACE, dtype=torch.int64)
            cf.scatter_reduce_(0, _take(pix, win), _take(gh, win), reduce="amin")
            if first_chunk:
                zbuf, fbuf = cz, cf
                first_chunk = False
            else:
                nearer = cz < zbuf
                tie = (cz == zbuf) & torch.isfinite(cz)
                fbuf = torch.where(nearer, cf, torch.where(tie, torch.minimum(fbuf, cf), fbuf))
                zbuf = torch.minimum(zbuf, cz)
    return zbuf, fbuf


def _shade(mesh: RasterMesh, face: torch.Tensor, pc: torch.Tensor) -> torch.Tensor:
    """Base colour (Q, 3) float32 of pixels hitting mesh faces ``face`` at perspective-correct
    barycentrics ``pc`` (Q, 3)."""
    w = pc.to(torch.float32)[:, :, None]
    rgb = (w * _take(mesh.corner_rgb, face)).sum(dim=1)
    tex = _take(mesh.face_texture, face)
    if mesh.textures:
        for t in torch.unique(tex[tex >= 0]).tolist():
            sel = torch.nonzero(tex == t).squeeze(1)
            uv = (_take(w, sel) * _take(mesh.corner_uv, _take(face, sel))).sum(dim=1)
            rgb[sel] = rgb[sel] * sample_texture(mesh.textures[int(t)], uv)
    return rgb.clamp(0.0, 1.0)


def _face_normals(mesh: RasterMesh, face: torch.Tensor, eye: torch.Tensor) -> torch.Tensor:
    """World-space unit geometric normals of ``face`` flipped to face the point ``eye``."""
    tri = _take(mesh.triangles, face)
    n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=1)
    n = n / n.norm(dim=1, keepdim=True).clamp_min(1e-300)
    facing = ((eye - tri[:, 0]) * n).sum(dim=1)
    return torch.where(facing[:, None] < 0, -n, n)


def visible_faces(mesh: RasterMesh, camera: Camera) -> tuple[torch.Tensor, torch.Tensor]:
    """Visibility only: ``(pixels, faces)``, the flattened (row-major) indices of the covered
    pixels and the index of the face seen at each (same z-buffer and tie rules as
    :func:`rasterize_raster_mesh`). Differentiable renderers recompute the barycentrics of
    these (pixel, face) pairs with autograd (``instantmesh.mesh_render``)."""
    if mesh.n_faces == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty
    screen = _setup(mesh, camera)
    _, fbuf = _visibility(screen, camera.width, camera.height)
    q = torch.nonzero(fbuf != _NO_FACE).squeeze(1)
    return q, _take(screen.face, _take(fbuf, q))


def rasterize_raster_mesh(mesh: RasterMesh, camera: Camera) -> View:
    """Render a prepared :class:`RasterMesh` (world space) with ``camera`` (see
    :func:`rasterize` and the module docstring for the conventions)."""
    width, height = camera.width, camera.height
    n_pix = width * height
    rgba = torch.zeros((n_pix, 4), dtype=torch.float32)
    depth = torch.full((n_pix,), float("inf"), dtype=torch.float32)
    normal = torch.zeros((n_pix, 3), dtype=torch.float32)
    if mesh.n_faces > 0:
        screen = _setup(mesh, camera)
        zbuf, fbuf = _visibility(screen, width, height)
        q = torch.nonzero(fbuf != _NO_FACE).squeeze(1)
        if q.numel() > 0:
            g = _take(fbuf, q)
            cx = (q % width).to(torch.float64) + 0.5
            cy = torch.div(q, width, rounding_mode="floor").to(torch.float64) + 0.5
            bary = torch.stack(_barycentrics(screen, g, cx, cy), dim=1).clamp_min(0.0)
            weighted = bary * torch.index_select(screen.inv_z, 1, g).T
            pc = weighted / weighted.sum(dim=1, keepdim=True)
            face = _take(screen.face, g)
            rgba[q, :3] = _shade(mesh, face, pc)
            rgba[q, 3] = 1.0
            depth[q] = _take(zbuf, q).to(torch.float32)
            eye = torch.from_numpy(camera.position)
            normal[q] = _face_normals(mesh, face, eye).to(torch.float32)
    return View(
        rgba=rgba.reshape(height, width, 4).numpy(),
        depth=depth.reshape(height, width).numpy(),
        normal=normal.reshape(height, width, 3).numpy(),
        camera=camera,
    )


def rasterize(mesh_world: trimesh.Trimesh | trimesh.Scene | RasterMesh, camera: Camera) -> View:
    """Render a world-space mesh or scene (scene-graph transforms applied) with ``camera``.

    Returns a :class:`View` per :mod:`rendering.backends.base`: ``rgba`` float32 unlit base
    colour with alpha 1 exactly where a face covers the pixel centre (no anti-aliasing),
    ``depth`` float32 planar z-depth (``+inf`` background), ``normal`` float32 world-space unit
    face normals oriented towards the camera (0 background); row 0 is the top of the image.
    Raises :class:`RenderError` for non-finite vertices. For many cameras build the
    :class:`RasterMesh` once with :meth:`RasterMesh.from_geometry` and pass it instead.
    """
    if not isinstance(mesh_world, RasterMesh):
        mesh_world = RasterMesh.from_geometry(mesh_world)
    return rasterize_raster_mesh(mesh_world, camera)


def load_raster_mesh(obj: RenderObject) -> RasterMesh:
    """Load ``obj.path`` and flatten it into a world-space :class:`RasterMesh` placed with
    ``obj.file_to_world`` (shared by the rasterizer backends: ``cpu`` and ``nvdiffrast``).
    A glTF base-colour texture on ``TEXCOORD_n`` (n > 0) or with ``KHR_texture_transform``
    is refused (:func:`rendering.gltf_checks.trimesh_unsupported`): trimesh drops both.

    Raises :class:`RenderError` naming the file for unreadable files (the ``MeshLoadError`` is
    chained as the cause), files without triangles and non-finite coordinates.
    """
    from rendering.gltf_checks import trimesh_unsupported

    unsupported = trimesh_unsupported(obj.path)
    if unsupported:  # trimesh drops these: the rasterizers would sample the wrong texels
        raise RenderError(
            f"{obj.path}: {'; '.join(unsupported)}: not supported by the rasterizer backends' "
            "(trimesh) texture loader; render it with --backend blender"
        )
    try:
        scene = load_scene(obj.path)
    except MeshLoadError as e:
        raise RenderError(str(e)) from e
    mesh = RasterMesh.from_geometry(scene, obj.file_to_world, where=str(obj.path))
    if mesh.n_faces == 0:
        raise RenderError(f"{obj.path}: no triangles")
    return mesh


DEPTH_MARGIN = 0.01
"""Relative widening of the bounding-box depth range for the near / far planes."""

MIN_NEAR_FRACTION = 1e-5
"""``near`` never goes below ``far`` times this (depth-buffer precision)."""


def projection_matrix(camera: Camera, near: float, far: float) -> np.ndarray:
    """OpenGL clip-from-camera 4x4 of ``camera`` (horizontal FOV, aspect ``W / H``, square
    pixels, principal point at the image centre) with depth range ``[near, far]``.

    Maps the OpenGL camera frame (looking down -Z, +Y up) to clip space; NDC x = +-1 at the
    left / right image borders, y = +-1 at the bottom / top borders, z = -1 / +1 at
    ``near`` / ``far``; clip ``w`` is the planar depth."""
    if not 0.0 < near < far:
        raise ValueError(f"need 0 < near < far, got near={near}, far={far}")
    t = math.tan(math.radians(camera.fov_deg) / 2.0)
    aspect = camera.width / camera.height
    p = np.zeros((4, 4))
    p[0, 0] = 1.0 / t
    p[1, 1] = aspect / t
    p[2, 2] = -(far + near) / (far - near)
    p[2, 3] = -2.0 * far * near / (far - near)
    p[3, 2] = -1.0
    return p


def depth_range(bounds: np.ndarray, camera: Camera) -> tuple[float, float] | None:
    """``(near, far)`` for a world bounding box ``bounds`` ``[min_xyz, max_xyz]`` seen from
    ``camera``: the planar depths of the box's 8 corners widened by :data:`DEPTH_MARGIN`
    (``near >= far * MIN_NEAR_FRACTION``), so the depth buffer has good precision and nothing
    is clipped unless the camera is inside the box; ``None`` when the whole box is behind the
    camera (nothing can be visible)."""
    lo, hi = np.asarray(bounds, dtype=np.float64)
    corners = np.array(
        [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    )
    w2c = camera.w2c
    depths = -(corners @ w2c[2, :3] + w2c[2, 3])
    z_min, z_max = float(depths.min()), float(depths.max())
    if not z_max > 0.0:
        return None
    span = max(z_max - z_min, 1e-6 * z_max)
    far = z_max + DEPTH_MARGIN * span + DEPTH_MARGIN * z_max
    near = max(z_min - DEPTH_MARGIN * span - DEPTH_MARGIN * z_min, MIN_NEAR_FRACTION * far)
    return near, far


def clip_from_world(camera: Camera, bounds: np.ndarray) -> np.ndarray | None:
    """The 4x4 clip-from-world matrix ``projection_matrix(camera, *depth_range) @ camera.w2c``
    for geometry inside the world box ``bounds``, or ``None`` when the box is behind the
    camera. Clip ``w`` is the planar depth; the GPU rasterizer's row 0 is the image bottom."""
    planes = depth_range(bounds, camera)
    if planes is None:
        return None
    return projection_matrix(camera, *planes) @ camera.w2c


def rasterize_views(
    mesh_world: trimesh.Trimesh | trimesh.Scene | RasterMesh, cameras: Sequence[Camera]
) -> list[View]:
    """:func:`rasterize` for every camera (the mesh is flattened once)."""
    if not isinstance(mesh_world, RasterMesh):
        mesh_world = RasterMesh.from_geometry(mesh_world)
    return [rasterize_raster_mesh(mesh_world, cam) for cam in cameras]


__all__ = [
    "DEFAULT_GREY",
    "NEAR",
    "RasterMesh",
    "clip_from_world",
    "depth_range",
    "load_raster_mesh",
    "projection_matrix",
    "rasterize",
    "rasterize_raster_mesh",
    "rasterize_views",
    "sample_texture",
    "visible_faces",
]
