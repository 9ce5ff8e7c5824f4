"""Stage 2 of LRM training (mesh variants): FlexiCubes surfaces rendered by rasterisation.

Upstream InstantMesh trains its mesh variants (``configs/instant-mesh-large-train.yaml``) with
``src/model_mesh.py`` (``MVRecon``: initialisation from stage 1, ``compute_loss``) around
``src/models/lrm_mesh.py`` (``InstantMesh.forward_geometry``). One step, per object:

1. triplanes from the input views (``model.forward_planes``);
2. the synthesizer's geometry heads on **every** vertex of the FlexiCubes grid (the variant's
   ``grid_res`` / ``grid_scale``; upstream's training path, unlike the surface-only inference
   path of :mod:`instantmesh.mesh_extraction`): SDF, raw deformation and the 21 raw weights per
   cube; the deformation is bounded (``InstantMesh.bounded_deformation``);
3. upstream's empty-shape fix (:func:`instantmesh.mesh_extraction.upstream_empty_shape_fix`):
   an object whose SDF has no sign change inside the grid gets a surface made up, and its SDF
   and deformation are detached (no gradient from a made-up surface, upstream step 4 of
   ``get_sdf_deformation_prediction``). Upstream takes the max / min SDF for the made-up values
   over the whole batch, we take them per object; the values of such an object carry no
   gradient either way. Upstream's extra ``sdf_reg_loss`` for empty objects is computed there
   but dropped by ``compute_loss``, so it is not computed here;
4. FlexiCubes in training mode (:func:`instantmesh.flexicubes.flexicubes_extract_training`):
   four triangles per quad around a gamma-weighted centre, and L_dev;
5. every view of ``batch.render_c2ws`` is rasterised at ``batch.render_size``
   (:func:`instantmesh.mesh_render.render_mesh`, cameras from the c2w and the field of view of
   the normalised intrinsics, ``f = 0.5 / tan(fov / 2)``) with the world positions and vertex
   normals as attributes (upstream ``neural_render.py``): the mask, the planar depth (upstream's
   negated camera-space z), the normals ``(n + 1) / 2`` on black, and the colour = the texture
   head (``model.synthesizer.texture``) at the world position of each covered pixel, on white;
6. the loss (:mod:`training.losses`): ``loss_mse``, ``loss_lpips``, ``loss_mask`` on the images
   and masks, ``loss_depth``, ``loss_normal`` inside the target silhouettes, ``loss_reg_sdf``
   (SDF sign entropy over the grid's cube edges), ``loss_reg_surface`` (L_dev) and
   ``loss_reg_weights`` (squared raw weights).

Rendering paths: on a CUDA device :func:`mesh_step` uses nvdiffrast (``render_mesh``'s cuda
path), elsewhere the CPU path (for tests and small runs); on both the mask and the normals are
antialiased (``render_mesh(..., antialias=True)``: ``dr.antialias`` on CUDA, the same analytic
antialiasing in torch on the CPU), as upstream, so the mask loss moves silhouettes; the colour
(texture head at the covered pixels), its composite and the depth use the hard mask, as
upstream.

:func:`mesh_state_from_nerf` is upstream's initialisation of stage 2 from a stage-1
checkpoint (``MVRecon.__init__`` with ``init_ckpt``).
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from instantmesh.flexicubes import (
    CUBE_EDGES,
    FlexiCubesTrainingMesh,
    flexicubes_extract_training,
    voxel_grid,
)
from instantmesh.mesh_extraction import upstream_empty_shape_fix
from instantmesh.mesh_render import render_mesh
from instantmesh.model import InstantMesh
from rendering.cameras import Camera
from training.batches import PreparedBatch
from training.losses import (
    depth_term,
    image_terms,
    normal_term,
    sdf_entropy_term,
    step_output,
    surface_reg_term,
    weights_reg_term,
)
from training.step_output import StepOutput

__all__ = [
    "SDF_FROM_DENSITY_OFFSET",
    "MeshGeometry",
    "MeshRenders",
    "TrainingGrid",
    "cameras_from_intrinsics",
    "mesh_state_from_nerf",
    "mesh_step",
    "predict_geometry",
    "render_geometry",
    "training_grid",
    "vertex_normals",
]

SDF_FROM_DENSITY_OFFSET = 10.0
"""Stage-2 SDF head initialised as ``10 - raw density`` (upstream ``src/model_mesh.py``,
``MVRecon.__init__``: "we assume the density field's isosurface threshold is t ... (-w)*x +
(t - b)" with t = 10.0)."""

_DECODER_NERF = "synthesizer.decoder.net."
_DECODER_HEADS_AT_INIT = ("net_deformation", "net_weight")
_UPSTREAM_PREFIX = "lrm_generator."


# --------------------------------------------------------------------------- grid


@dataclass(frozen=True)
class TrainingGrid:
    """The FlexiCubes grid of a variant, as stage 2 evaluates it (every vertex and cube)."""

    res: int
    vertices: torch.Tensor  # ((res + 1)^3, 3) undeformed positions
    cubes: torch.Tensor  # (res^3, 8) corner vertex ids
    cube_coords: torch.Tensor  # (res^3, 3)
    edges: torch.Tensor  # (E, 2) the unique cube edges (upstream ``FlexiCubesGeometry.all_edges``)


@lru_cache(maxsize=4)
def training_grid(res: int, scale: float, device: torch.device) -> TrainingGrid:
    """The ``res``^3 grid spanning ``scale`` (cached: it depends on nothing else)."""
    vertices, cubes, cube_coords = voxel_grid(res, scale, device)
    pairs = cubes[:, torch.tensor(CUBE_EDGES, device=device)].reshape(-1, 2)
    n = vertices.shape[0]
    keys = torch.unique(pairs[:, 0] * n + pairs[:, 1])
    edges = torch.stack([keys // n, keys % n], dim=1)
    return TrainingGrid(res, vertices, cubes, cube_coords, edges)


# --------------------------------------------------------------------------- geometry


@dataclass
class MeshGeometry:
    """Stage-2 geometry of a batch of B objects."""

    sdf: torch.Tensor
    """(B, P) SDF at the grid vertices after the empty-shape fix (detached for fixed objects)."""
    deformation: torch.Tensor
    """(B, P, 3) bounded deformation (detached for fixed objects)."""
    weights: torch.Tensor
    """(B, K, 21) raw FlexiCubes weights of every cube."""
    meshes: list[FlexiCubesTrainingMesh]
    """One training-mode FlexiCubes mesh per object."""
    empty: list[bool]
    """Per object: had no surface, the empty-shape fix made one (no geometry gradient)."""


def _interior_has_surface(volume: torch.Tensor) -> bool:
    """The test of upstream's empty-shape fix: signs of both kinds inside the outer layer."""
    interior = volume[1:-1, 1:-1, 1:-1]
    return bool((interior > 0).any()) and bool((interior < 0).any())


def predict_geometry(model: InstantMesh, planes: torch.Tensor) -> MeshGeometry:
    """Steps 2-4 of the module docstring for triplanes ``planes`` (B, 3, C, H, W)."""
    cfg = model.cfg
    grid = training_grid(cfg.grid_res, cfg.grid_scale, planes.device)
    batch = planes.shape[0]
    points = grid.vertices.to(planes.dtype)[None].expand(batch, -1, -1)
    sdf, raw_deformation, weights = checkpoint(
        model.synthesizer.geometry, planes, points, grid.cubes, use_reentrant=False
    )
    deformation = model.bounded_deformation(raw_deformation)
    n = cfg.grid_res + 1
    sdfs, deformations, meshes, empty = [], [], [], []
    for b in range(batch):
        sdf_b, deformation_b = sdf[b, :, 0], deformation[b]
        volume = sdf_b.reshape(n, n, n)
        empty.append(not _interior_has_surface(volume))
        if empty[-1]:
            sdf_b = upstream_empty_shape_fix(volume).reshape(-1).detach()
            deformation_b = deformation_b.detach()
        sdfs.append(sdf_b)
        deformations.append(deformation_b)
        meshes.append(
            flexicubes_extract_training(
                grid.vertices.to(planes.dtype) + deformation_b,
                sdf_b,
                grid.cubes,
                grid.cube_coords,
                grid.res,
                weights[b, :, :12],
                weights[b, :, 12:20],
                weights[b, :, 20],
            )
        )
    return MeshGeometry(torch.stack(sdfs), torch.stack(deformations), weights, meshes, empty)


# --------------------------------------------------------------------------- rendering


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted vertex normals (V, 3), unit length; (0, 0, 1) where the sum vanishes
    (upstream ``neural_render.py`` ``compute_vertex_normal``)."""
    v0, v1, v2 = (vertices[faces[:, i]] for i in range(3))
    face_normals = torch.linalg.cross(v1 - v0, v2 - v0, dim=-1)
    normals = torch.zeros_like(vertices)
    for i in range(3):
        normals = normals.index_add(0, faces[:, i], face_normals)
    default = torch.tensor([0.0, 0.0, 1.0], dtype=vertices.dtype, device=vertices.device)
    degenerate = (normals * normals).sum(dim=-1, keepdim=True) <= 1e-20
    return F.normalize(torch.where(degenerate, default, normals), dim=-1)


def cameras_from_intrinsics(
    c2ws: torch.Tensor, intrinsics: torch.Tensor, size: int
) -> list[Camera]:
    """Cameras for (V, 4, 4) camera-to-world matrices (OpenGL axes) and (V, 3, 3) normalised
    intrinsics (square pixels, centred principal point): ``fov = 2 atan(0.5 / fx)``."""
    ks = intrinsics.detach().double().cpu()
    fx, fy, cx, cy = ks[:, 0, 0], ks[:, 1, 1], ks[:, 0, 2], ks[:, 1, 2]
    centred = torch.allclose(cx, torch.full_like(cx, 0.5), atol=1e-4) and torch.allclose(
        cy, torch.full_like(cy, 0.5), atol=1e-4
    )
    if not centred or not torch.allclose(fx, fy, rtol=1e-4) or not bool((fx > 0).all()):
        raise ValueError(
            "render intrinsics must be normalised with fx = fy > 0 and a centred principal point "
            f"(cx = cy = 0.5), got fx {fx.tolist()}, fy {fy.tolist()}, cx {cx.tolist()}, "
            f"cy {cy.tolist()}"
        )
    poses = c2ws.detach().double().cpu().numpy()
    return [
        Camera.from_c2w(pose, math.degrees(2.0 * math.atan(0.5 / float(f))), size)
        for pose, f in zip(poses, fx, strict=True)
    ]


@dataclass
class MeshRenders:
    """Rendered predictions, (B, V, C, H, W) each, row 0 at the image top."""

    images: torch.Tensor  # RGB on white, [0, 1]
    masks: torch.Tensor  # coverage, antialiased along silhouettes
    depths: torch.Tensor  # planar depth, 0 on background
    normals: torch.Tensor  # world normals (n + 1) / 2, 0 on background


def _render_path(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    if importlib.util.find_spec("nvdiffrast") is None:
        raise RuntimeError(
            "mesh training on CUDA rasterises with nvdiffrast, which is not installed "
            "(pip install -e '.[gpu]')"
        )
    return "cuda"


def _render_object(
    model: InstantMesh,
    planes: torch.Tensor,
    mesh: FlexiCubesTrainingMesh,
    cameras: list[Camera],
    path: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One object's (V, H, W, C) colour, mask, depth and encoded normals."""
    views, height, width = len(cameras), cameras[0].height, cameras[0].width
    dtype, device = planes.dtype, planes.device
    if mesh.faces.shape[0] == 0:  # nothing to see (cannot follow the empty-shape fix)
        zeros = torch.zeros((views, height, width, 1), dtype=dtype, device=device)
        ones3 = torch.ones((views, height, width, 3), dtype=dtype, device=device)
        return ones3, zeros, zeros, zeros.expand(-1, -1, -1, 3)
    normals = vertex_normals(mesh.vertices, mesh.faces)
    out = render_mesh(
        mesh.vertices,
        mesh.faces,
        torch.cat([mesh.vertices, normals], dim=1),
        cameras,
        path=path,
        antialias=True,
    )
    hard = out.mask
    mask, attrs = out.antialiased_mask, out.antialiased_attrs
    assert mask is not None and attrs is not None  # antialias=True fills both
    pixel_normals = F.normalize(attrs[..., 3:6], dim=-1)
    encoded_normals = (pixel_normals + 1.0) / 2.0 * hard
    covered = torch.nonzero(hard.reshape(-1) > 0).squeeze(1)
    colour = torch.ones((views * height * width, 3), dtype=dtype, device=device)
    if covered.numel() > 0:
        positions = out.attrs[..., :3].reshape(-1, 3)[covered]
        rgb = checkpoint(
            model.synthesizer.texture, planes, positions[None].to(dtype), use_reentrant=False
        )[0]
        colour = colour.index_copy(0, covered, rgb.to(dtype))
    colour = colour.reshape(views, height, width, 3).clamp(0.0, 1.0)
    return colour, mask, out.depth, encoded_normals


def render_geometry(
    model: InstantMesh,
    planes: torch.Tensor,
    geometry: MeshGeometry,
    c2ws: torch.Tensor,
    intrinsics: torch.Tensor,
    render_size: int,
) -> MeshRenders:
    """Step 5 of the module docstring: every view (B, V, 4, 4) of every object."""
    path = _render_path(planes.device)
    parts = []
    for b, mesh in enumerate(geometry.meshes):
        cameras = cameras_from_intrinsics(c2ws[b], intrinsics[b], render_size)
        parts.append(_render_object(model, planes[b : b + 1], mesh, cameras, path))

    def stack(i: int) -> torch.Tensor:
        return torch.stack([p[i] for p in parts]).permute(0, 1, 4, 2, 3)

    return MeshRenders(stack(0), stack(1), stack(2), stack(3))


# --------------------------------------------------------------------------- step


def _crop(x: torch.Tensor, crop: tuple[int, int, int, int] | None) -> torch.Tensor:
    if crop is None:
        return x
    top, left, height, width = crop
    return x[..., top : top + height, left : left + width]


def mesh_step(
    model: InstantMesh,
    batch: PreparedBatch,
    lpips: torch.nn.Module,
    generator: torch.Generator,
) -> StepOutput:
    """One stage-2 forward pass and loss (module docstring); back-propagate ``.loss``.

    ``generator`` is unused (stage 2 draws nothing; the argument keeps one step signature for
    both stages). ``batch.target_normals`` is required (:func:`training.batches.
    prepare_mesh_batch` provides it).
    """
    del generator
    if not isinstance(model, InstantMesh):
        raise TypeError(f"mesh_step trains the mesh variants (InstantMesh), got {type(model)}")
    if batch.target_normals is None:
        raise ValueError("mesh_step needs target normals (prepare the batch for the mesh stage)")
    planes = checkpoint(model.forward_planes, batch.images, batch.cameras, use_reentrant=False)
    geometry = predict_geometry(model, planes)
    renders = render_geometry(
        model, planes, geometry, batch.render_c2ws, batch.render_Ks, batch.render_size
    )
    images, masks = _crop(renders.images, batch.crop), _crop(renders.masks, batch.crop)
    depths, normals = _crop(renders.depths, batch.crop), _crop(renders.normals, batch.crop)
    grid = training_grid(model.cfg.grid_res, model.cfg.grid_scale, planes.device)
    terms = image_terms(images, batch.target_images, masks, batch.target_alphas, lpips)
    terms["loss_depth"] = depth_term(depths, batch.target_depths, batch.target_alphas)
    terms["loss_normal"] = normal_term(normals, batch.target_normals, batch.target_alphas)
    terms["loss_reg_sdf"] = sdf_entropy_term(geometry.sdf, grid.edges)
    terms["loss_reg_surface"] = surface_reg_term(torch.cat([m.l_dev for m in geometry.meshes]))
    terms["loss_reg_weights"] = weights_reg_term(geometry.weights)
    return step_output(terms, images=int(images.shape[0] * images.shape[1]))


# --------------------------------------------------------------------------- initialisation


def _layer_index(key: str, prefix: str) -> int:
    match = re.match(re.escape(prefix) + r"(\d+)\.(weight|bias)$", key)
    if match is None:
        raise ValueError(f"unexpected decoder key {key!r}")
    return int(match.group(1))


def mesh_state_from_nerf(
    nerf_state: Mapping[str, torch.Tensor], mesh_model: InstantMesh
) -> dict[str, torch.Tensor]:
    """Stage-2 initial weights from a stage-1 (NeRF variant) state dict.

    Upstream ``src/model_mesh.py`` (``MVRecon.__init__``, ``init_ckpt``): the encoder and the
    transformer are copied; the NeRF decoder ``synthesizer.decoder.net`` initialises both the
    SDF head ``net_sdf`` and the colour head ``net_rgb``: hidden layers copied to both; last
    layer: ``net_sdf`` weight ``-w[0:1]`` and bias ``10 - b[0:1]`` (SDF = 10 - raw density,
    :data:`SDF_FROM_DENSITY_OFFSET`), ``net_rgb`` rows 1:4 (the colour outputs).
    ``net_deformation`` and ``net_weight`` have no stage-1 counterpart: their keys are absent
    from the result and stay at the mesh model's initialisation, so load with
    ``mesh_model.load_state_dict(state, strict=False)``.

    ``nerf_state`` uses our key layout (upstream's minus ``lrm_generator.``; a state whose
    every key carries that prefix is accepted too). Raises ``ValueError`` naming the keys when
    the state is not a NeRF state or does not fit ``mesh_model`` (another variant: missing or
    extra keys, shape mismatches).
    """
    state = dict(nerf_state)
    if state and all(k.startswith(_UPSTREAM_PREFIX) for k in state):
        state = {k[len(_UPSTREAM_PREFIX) :]: v for k, v in state.items()}
    target = mesh_model.state_dict()
    if not any(k.startswith(_DECODER_NERF) for k in state):
        raise ValueError(
            "not a NeRF-variant state: no 'synthesizer.decoder.net.*' keys "
            f"({len(state)} keys, e.g. {sorted(state)[:3]})"
        )
    decoder_keys = [k for k in state if k.startswith(_DECODER_NERF)]
    last = max(_layer_index(k, _DECODER_NERF) for k in decoder_keys)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith(_DECODER_NERF):
            out[key] = value
            continue
        rest = key[len(_DECODER_NERF) :]
        sdf_key = f"synthesizer.decoder.net_sdf.{rest}"
        rgb_key = f"synthesizer.decoder.net_rgb.{rest}"
        if _layer_index(key, _DECODER_NERF) == last:
            is_weight = rest.endswith("weight")
            out[sdf_key] = -value[0:1] if is_weight else SDF_FROM_DENSITY_OFFSET - value[0:1]
            out[rgb_key] = value[1:4]
        else:
            out[sdf_key] = value
            out[rgb_key] = value

    extra = sorted(set(out) - set(target))
    left = sorted(
        k
        for k in set(target) - set(out)
        if not any(k.startswith(f"synthesizer.decoder.{h}.") for h in _DECODER_HEADS_AT_INIT)
    )
    mismatched = sorted(
        f"{k}: {tuple(out[k].shape)} vs {tuple(target[k].shape)}"
        for k in set(out) & set(target)
        if out[k].shape != target[k].shape
    )
    if extra or left or mismatched:
        raise ValueError(
            f"the NeRF state does not fit the mesh variant {mesh_model.cfg.name!r}: "
            f"keys the mesh model lacks {extra[:5]}, keys the NeRF state lacks {left[:5]}, "
            f"shape mismatches {mismatched[:5]}"
        )
    return out
