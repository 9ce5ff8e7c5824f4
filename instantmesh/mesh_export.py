"""Exporting reconstructed meshes: vertex colours or a UV texture map, with documented axes.

Frames
    * **Model frame** (triplane frame, where :func:`instantmesh.mesh_extraction.
      extract_flexicubes_mesh` and :func:`instantmesh.meshing.extract_nerf_mesh` put vertices):
      the LRM's cameras (:mod:`instantmesh.cameras`, like upstream ``src/utils/camera_util.py``)
      sit at ``r (cos el cos az, cos el sin az, sin el)`` looking at the origin with world up +z,
      and the six Zero123++ views are relative to the input view at azimuth 0. So the model frame
      **is our world frame** (``rendering.normalize``, ``evaluation.alignment``): right-handed,
      **Z up**, the input view's front facing **+X**. :data:`WORLD_FROM_MODEL` is the identity
      and no flip is ever applied to vertices.
    * **Files** follow the convention our loaders assume (``rendering.normalize``):
      glTF/GLB and OBJ are stored **Y up** (glTF requires it; Blender's OBJ importer assumes
      it): file ``(x, y, z) = (x_w, z_w, -y_w)``, the inverse of ``Y_UP_TO_Z_UP``, a proper
      rotation (winding kept, normals still point outwards). PLY/STL/OFF are stored **Z up**
      (world coordinates unchanged). Hence ``rendering.mesh_io.load_world_mesh(path)`` returns
      the mesh in the world frame for every format written here, and Blender/glTF viewers show
      it upright. For the evaluation a predictor that returns the in-memory mesh (or
      ``load_world_mesh`` of a file) declares the ``identity`` axis convention.
      (Upstream, by contrast, negates z and reverses the winding in its vertex-colour OBJ, writes
      the texture-map OBJ unchanged and applies ``diag(-1, 1, -1)`` in its GLB.)

Texture maps
    ``xatlas`` unwraps the mesh (charts packed at the texture resolution with ``padding``
    texels between charts); every texel centre inside a UV triangle is mapped to its 3D point
    by the triangle's barycentrics (a CPU rasterizer in UV space, :func:`rasterize_uv_atlas`),
    the colour head is queried there, and empty texels take the colour of the nearest covered
    texel (so bilinear filtering and mip-mapping never pull in a background colour). UVs follow
    the OBJ/trimesh convention: origin at the bottom-left of the image, ``v`` up; texel row 0
    of the PNG is the top (``v`` near 1).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image
from scipy import ndimage
from trimesh.visual.material import PBRMaterial
from trimesh.visual.texture import TextureVisuals

from instantmesh.mesh_extraction import DEFAULT_CHUNK, vertex_colors_uint8
from instantmesh.meshing import ColoredMesh
from instantmesh.model import InstantMesh, InstantNeRF
from instantmesh.synthesizer import MeshSynthesizer, NeRFSynthesizer
from rendering.normalize import Y_UP_SUFFIXES, Y_UP_TO_Z_UP, Z_UP_SUFFIXES

#: World (Z up, front +X) coordinates of model-frame (triplane) coordinates: the identity.
WORLD_FROM_MODEL: np.ndarray = np.eye(3)

#: File coordinates of world coordinates for Y-up formats (.glb, .gltf, .obj):
#: ``(x, y, z) -> (x, z, -y)``, the inverse of ``rendering.normalize.Y_UP_TO_Z_UP``.
Y_UP_FILE_FROM_WORLD: np.ndarray = np.linalg.inv(Y_UP_TO_Z_UP)[:3, :3].round(12)

VERTEX_COLOR_SUFFIXES = (".obj", ".glb", ".ply")
TEXTURE_SUFFIXES = (".obj", ".glb")

#: (triangle, texel) candidate pairs tested at once by the UV rasterizer.
UV_PAIR_BUDGET = 1 << 22


def file_from_world(path: str | os.PathLike[str]) -> np.ndarray:
    """3x3 map from world coordinates to the coordinates stored in a file of this type."""
    suffix = Path(path).suffix.lower()
    if suffix in Y_UP_SUFFIXES:
        return Y_UP_FILE_FROM_WORLD.copy()
    if suffix in Z_UP_SUFFIXES:
        return np.eye(3)
    raise ValueError(f"{path}: unsupported mesh suffix {suffix!r}")


def to_file_frame(model_vertices: np.ndarray, path: str | os.PathLike[str]) -> np.ndarray:
    """Model-frame vertices (V, 3) -> the coordinates written to ``path`` (float64)."""
    linear = file_from_world(path) @ WORLD_FROM_MODEL
    return np.asarray(model_vertices, dtype=np.float64) @ linear.T


def colored_mesh_to_trimesh(mesh: ColoredMesh) -> trimesh.Trimesh:
    """The mesh in our world frame with vertex colours (no processing: indices are kept)."""
    vertices = np.asarray(mesh.vertices, dtype=np.float64) @ WORLD_FROM_MODEL.T
    colors = np.concatenate(
        [mesh.vertex_colors, np.full((len(mesh.vertex_colors), 1), 255, np.uint8)], axis=1
    )
    return trimesh.Trimesh(
        vertices=vertices,
        faces=np.asarray(mesh.faces, dtype=np.int64),
        vertex_colors=colors,
        process=False,
    )


def _check_suffix(path: Path, allowed: tuple[str, ...]) -> str:
    suffix = path.suffix.lower()
    if suffix not in allowed:
        raise ValueError(f"{path}: unsupported suffix {suffix!r}; use one of {allowed}")
    return suffix


def export_vertex_colored_mesh(mesh: ColoredMesh, path: str | os.PathLike[str]) -> Path:
    """Write a vertex-coloured mesh as .obj / .glb (Y up) or .ply (Z up); returns the path."""
    out = Path(path)
    suffix = _check_suffix(out, VERTEX_COLOR_SUFFIXES)
    if len(mesh.faces) == 0:
        raise ValueError(f"{out}: refusing to write a mesh without faces")
    tm = colored_mesh_to_trimesh(mesh)
    tm.vertices = to_file_frame(mesh.vertices, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".glb":
        data = trimesh.Scene(tm).export(file_type="glb")
        out.write_bytes(data)
    else:
        tm.export(str(out), file_type=suffix[1:])
    return out


@dataclass(frozen=True)
class UVAtlas:
    """An unwrapped mesh: ``vertex_map`` (W,) original vertex of each atlas vertex, ``faces``
    (F, 3) into atlas vertices (same face order as the input), ``uvs`` (W, 2) in [0, 1]."""

    vertex_map: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray


def uv_unwrap(
    vertices: np.ndarray, faces: np.ndarray, texture_resolution: int = 1024, padding: int = 2
) -> UVAtlas:
    """xatlas charts packed into a ``texture_resolution`` square with ``padding`` texels."""
    try:
        import xatlas
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("texture export needs the 'xatlas' package (pip install xatlas)") from e
    atlas = xatlas.Atlas()
    atlas.add_mesh(
        np.ascontiguousarray(vertices, dtype=np.float32),
        np.ascontiguousarray(faces, dtype=np.uint32),
    )
    pack = xatlas.PackOptions()
    pack.resolution = int(texture_resolution)
    pack.padding = int(padding)
    pack.bilinear = True
    atlas.generate(pack_options=pack)
    vmapping, indices, uvs = atlas[0]
    return UVAtlas(vmapping.astype(np.int64), indices.astype(np.int64), uvs.astype(np.float64))


def rasterize_uv_atlas(
    uvs: np.ndarray, faces: np.ndarray, resolution: int
) -> tuple[np.ndarray, np.ndarray]:
    """Which triangle covers each texel centre, and where.

    Texel (row ``r``, column ``c``) of a ``resolution``^2 image has its centre at
    ``u = (c + 0.5) / R``, ``v = 1 - (r + 0.5) / R``. Returns ``face`` (R, R) int64 (-1 where
    no triangle covers the centre; where several do, e.g. on a shared edge, the highest face
    index wins) and ``bary`` (R, R, 3) float64 barycentrics in that face (zeros elsewhere).
    """
    res = int(resolution)
    uv = torch.from_numpy(np.asarray(uvs, dtype=np.float64))
    tri = torch.from_numpy(np.asarray(faces, dtype=np.int64))
    px = uv[:, 0] * res - 0.5
    py = (1.0 - uv[:, 1]) * res - 0.5
    p = torch.stack([px, py], dim=-1)[tri]  # (F, 3, 2) in texel-centre coordinates
    e1 = p[:, 1] - p[:, 0]
    e2 = p[:, 2] - p[:, 0]
    area = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    lo = torch.ceil(p.min(dim=1).values).clamp(0, res)
    hi = torch.floor(p.max(dim=1).values).clamp(-1, res - 1)
    nx = (hi[:, 0] - lo[:, 0] + 1).clamp_min(0).long()
    ny = (hi[:, 1] - lo[:, 1] + 1).clamp_min(0).long()
    count = torch.where(area.abs() > 1e-12, nx * ny, torch.zeros_like(nx))
    x0, y0 = lo[:, 0].long(), lo[:, 1].long()

    best = torch.full((res * res,), -1, dtype=torch.long)
    pair_faces, pair_pix, pair_bary = [], [], []
    ends = torch.cumsum(count, 0)
    start_face = 0
    n_faces = int(tri.shape[0])
    while start_face < n_faces:
        base = int(ends[start_face - 1]) if start_face else 0
        stop = int(torch.searchsorted(ends, torch.tensor(base + UV_PAIR_BUDGET), right=True))
        stop = max(stop, start_face + 1)
        f = torch.arange(start_face, stop)
        c = count[f]
        start_face = stop
        total = int(c.sum())
        if total == 0:
            continue
        fid = torch.repeat_interleave(f, c)
        offset = torch.arange(total) - torch.repeat_interleave(torch.cumsum(c, 0) - c, c)
        col = x0[fid] + offset % nx[fid]
        row = y0[fid] + torch.div(offset, nx[fid], rounding_mode="floor")
        q = torch.stack([col, row], dim=-1).to(torch.float64) - p[fid, 0]
        a = area[fid]
        b1 = (q[:, 0] * e2[fid, 1] - q[:, 1] * e2[fid, 0]) / a
        b2 = (e1[fid, 0] * q[:, 1] - e1[fid, 1] * q[:, 0]) / a
        b0 = 1.0 - b1 - b2
        eps = -1e-9
        inside = (b0 >= eps) & (b1 >= eps) & (b2 >= eps)
        pix = (row * res + col)[inside]
        fid = fid[inside]
        best.scatter_reduce_(0, pix, fid, reduce="amax")
        pair_faces.append(fid)
        pair_pix.append(pix)
        pair_bary.append(torch.stack([b0, b1, b2], dim=-1)[inside])
    bary = torch.zeros((res * res, 3), dtype=torch.float64)
    if pair_faces:
        fid = torch.cat(pair_faces)
        pix = torch.cat(pair_pix)
        win = fid == best[pix]
        bary[pix[win]] = torch.cat(pair_bary)[win].clamp(0.0, 1.0)
    return best.reshape(res, res).numpy(), bary.reshape(res, res, 3).numpy()


def bake_texture(
    color_fn: Callable[[torch.Tensor], torch.Tensor],
    vertices: np.ndarray,
    atlas: UVAtlas,
    resolution: int,
    chunk_size: int = DEFAULT_CHUNK,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """(R, R, 3) uint8 texture of ``color_fn`` (model-frame points -> RGB in [0, 1]) over the
    atlas, and the (R, R) mask of texels covered by a triangle (the rest is filled from the
    nearest covered texel)."""
    face, bary = rasterize_uv_atlas(atlas.uvs, atlas.faces, resolution)
    covered = face >= 0
    texture = np.full((resolution, resolution, 3), 128, dtype=np.uint8)
    if not covered.any():
        return texture, covered
    atlas_vertices = np.asarray(vertices, dtype=np.float64)[atlas.vertex_map]
    corners = atlas_vertices[atlas.faces[face[covered]]]  # (T, 3, 3)
    points = torch.from_numpy((bary[covered][:, :, None] * corners).sum(axis=1)).float()
    colors = []
    with torch.no_grad():
        for s in range(0, points.shape[0], chunk_size):
            colors.append(color_fn(points[s : s + chunk_size].to(device)))
    texture[covered] = vertex_colors_uint8(torch.cat(colors))
    if not covered.all():
        nearest = ndimage.distance_transform_edt(
            ~covered, return_distances=False, return_indices=True
        )
        texture = texture[nearest[0], nearest[1]]
    return texture, covered


def model_color_fn(
    model: InstantMesh | InstantNeRF, planes: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Model-frame points (M, 3) -> colour (M, 3) of the model's colour head on ``planes``."""
    if planes.ndim != 5 or planes.shape[0] != 1:
        raise ValueError(f"expected one triplane (1, 3, C, H, W), got {tuple(planes.shape)}")
    synth = model.synthesizer
    if isinstance(synth, MeshSynthesizer):
        mesh_synth = synth
        return lambda pts: mesh_synth.texture(planes, pts.to(planes.dtype)[None])[0]
    if isinstance(synth, NeRFSynthesizer):
        nerf_synth = synth
        return lambda pts: nerf_synth.forward_points(planes, pts.to(planes.dtype)[None])["rgb"][0]
    raise TypeError(f"no colour head on {type(synth).__name__}")


@dataclass(frozen=True)
class TexturedExport:
    paths: tuple[Path, ...]  # the mesh file first, then companions (.mtl, .png for OBJ)
    atlas: UVAtlas
    texture: np.ndarray  # (R, R, 3) uint8, row 0 at the top (v = 1)
    coverage: float  # fraction of texels inside a chart triangle


def _write_obj_with_texture(
    path: Path, vertices: np.ndarray, uvs: np.ndarray, faces: np.ndarray, texture: np.ndarray
) -> tuple[Path, ...]:
    mtl_path = path.with_suffix(".mtl")
    png_path = path.with_suffix(".png")
    Image.fromarray(texture, "RGB").save(png_path)
    mtl_path.write_text(
        f"newmtl material_0\nKa 0 0 0\nKd 1 1 1\nKs 0 0 0\nillum 1\nmap_Kd {png_path.name}\n"
    )
    lines = [f"mtllib {mtl_path.name}", "o mesh"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices]
    lines += [f"vt {u:.6f} {v:.6f}" for u, v in uvs]
    lines.append("usemtl material_0")
    lines += [f"f {a}/{a} {b}/{b} {c}/{c}" for a, b, c in (faces + 1)]
    path.write_text("\n".join(lines) + "\n")
    return path, mtl_path, png_path


def export_textured_mesh(
    model: InstantMesh | InstantNeRF,
    planes: torch.Tensor,
    mesh: ColoredMesh,
    path: str | os.PathLike[str],
    texture_resolution: int = 1024,
    *,
    padding: int = 2,
    chunk_size: int = DEFAULT_CHUNK,
) -> TexturedExport:
    """UV-unwrap ``mesh`` (model frame), bake the colour head of ``model`` on ``planes``
    (1, 3, C, H, W) into a ``texture_resolution``^2 texture and write ``path``: ``.obj`` (+
    ``.mtl`` + ``.png`` next to it) or ``.glb`` (embedded texture), both stored Y up. See the
    module docstring for the axes and UV conventions."""
    return write_textured_mesh(
        model_color_fn(model, planes),
        mesh,
        path,
        texture_resolution,
        padding=padding,
        chunk_size=chunk_size,
        device=planes.device,
    )


def write_textured_mesh(
    color_fn: Callable[[torch.Tensor], torch.Tensor],
    mesh: ColoredMesh,
    path: str | os.PathLike[str],
    texture_resolution: int = 1024,
    *,
    padding: int = 2,
    chunk_size: int = DEFAULT_CHUNK,
    device: torch.device | str = "cpu",
) -> TexturedExport:
    """:func:`export_textured_mesh` with any colour function (model-frame points (M, 3) ->
    RGB (M, 3) in [0, 1]) instead of a model's colour head."""
    out = Path(path)
    suffix = _check_suffix(out, TEXTURE_SUFFIXES)
    if len(mesh.faces) == 0:
        raise ValueError(f"{out}: refusing to write a mesh without faces")
    atlas = uv_unwrap(mesh.vertices, mesh.faces, texture_resolution, padding)
    texture, covered = bake_texture(
        color_fn, mesh.vertices, atlas, texture_resolution, chunk_size, device
    )
    file_vertices = to_file_frame(np.asarray(mesh.vertices)[atlas.vertex_map], out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".obj":
        paths = _write_obj_with_texture(out, file_vertices, atlas.uvs, atlas.faces, texture)
    else:
        material = PBRMaterial(
            baseColorTexture=Image.fromarray(texture, "RGB"),
            metallicFactor=0.0,
            roughnessFactor=1.0,
        )
        tm = trimesh.Trimesh(
            vertices=file_vertices,
            faces=atlas.faces,
            visual=TextureVisuals(uv=atlas.uvs, material=material),
            process=False,
        )
        out.write_bytes(trimesh.Scene(tm).export(file_type="glb"))
        paths = (out,)
    return TexturedExport(paths, atlas, texture, float(covered.mean()))


__all__ = [
    "TEXTURE_SUFFIXES",
    "VERTEX_COLOR_SUFFIXES",
    "WORLD_FROM_MODEL",
    "Y_UP_FILE_FROM_WORLD",
    "TexturedExport",
    "UVAtlas",
    "bake_texture",
    "colored_mesh_to_trimesh",
    "export_textured_mesh",
    "export_vertex_colored_mesh",
    "file_from_world",
    "model_color_fn",
    "rasterize_uv_atlas",
    "to_file_frame",
    "uv_unwrap",
    "write_textured_mesh",
]
