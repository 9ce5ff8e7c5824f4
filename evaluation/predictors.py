"""Predictors: evaluation-set object -> predicted mesh (registry; plain Python, no Ray).

A predictor gets one :class:`PredictorInput` (an evaluation-set object folder, as written by
``imesh evalset``: ``input.png``, ``zero123pp/001..006.png`` + ``cameras.npz``, ``gt_mesh.glb``)
and returns a :class:`Prediction`: a ``trimesh.Trimesh`` in the predictor's own axis
convention (a name from ``evaluation.alignment.AXIS_CONVENTIONS``). The evaluation maps it into
our frame with that convention and then normalizes it into [-1, 1]^3, so a predictor need not
care about scale or position.

Registry (``PREDICTORS``; ``make_predictor(name, **options)``):

- ``oracle``: the GT mesh itself (sanity check: the best possible metrics; used in tests).
- ``visual-hull``: a weight-free CPU baseline. Space carving of a voxel grid with the six
  Zero123++-camera views' silhouettes (a voxel survives when every view that sees it has it
  inside the mask), a light Gaussian smoothing, marching cubes, and vertex colours sampled
  from the view that faces each vertex best. Real, non-trivial metrics without any weights.
- ``mesh-dir``: meshes produced by other methods (TripoSR, LGM, CRM, ...): ``<dir>/<uid>.<ext>``
  with the method's axis convention declared by option or in ``<dir>/predictor.yaml``
  (``convention: triposr``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import trimesh
import yaml
from PIL import Image

from evaluation.alignment import AXIS_CONVENTIONS
from rendering.cameras import Camera, project
from rendering.mesh_io import MeshLoadError, load_world_mesh

MESH_EXTENSIONS = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")


class PredictionMissing(FileNotFoundError):
    """No prediction exists for an object (a mesh-dir predictor without that uid's file)."""


class PredictorError(ValueError):
    """A predictor that cannot produce a mesh for this input (the message says why)."""


@dataclass(frozen=True)
class PredictorInput:
    uid: str
    dataset: str
    object_dir: Path
    """The evaluation-set object folder (see module docstring)."""

    def image(self, name: str) -> np.ndarray:
        """RGBA float32 [0, 1] image ``name`` (relative to the object folder)."""
        path = self.object_dir / name
        if not path.is_file():
            raise PredictorError(f"{self.uid}: missing input image {path}")
        with Image.open(path) as im:
            return np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0

    def cameras(self, view_set: str) -> list[Camera]:
        """Cameras of a view set of the object folder (``""``: the input view at the top level,
        ``"zero123pp"``, ``"orbit"``, ``"benchmark"``), from its ``cameras.npz``."""
        npz_path = self.object_dir / view_set / "cameras.npz"
        if not npz_path.is_file():
            raise PredictorError(f"{self.uid}: missing {npz_path}")
        data = np.load(npz_path)
        size = (int(data["size"][0]), int(data["size"][1]))
        return [
            Camera.from_c2w(c2w.astype(np.float64), float(fov), size)
            for c2w, fov in zip(data["c2w"], data["fov_deg"], strict=True)
        ]

    def input_view(self) -> tuple[np.ndarray, Camera]:
        """The single input image (``input.png``, RGBA) and its camera: what a single-image
        method sees, and the pose its reconstruction is relative to."""
        cams = self.cameras("")
        if len(cams) != 1:
            raise PredictorError(f"{self.uid}: expected one input camera, found {len(cams)}")
        return self.image("input.png"), cams[0]

    def six_views(self) -> tuple[list[np.ndarray], list[Camera]]:
        """The six Zero123++ target views rendered from the GT (RGBA) and their cameras."""
        cams = self.cameras("zero123pp")
        images = [self.image(f"zero123pp/{i:03d}.png") for i in range(1, len(cams) + 1)]
        return images, cams


@dataclass
class Prediction:
    mesh: trimesh.Trimesh
    convention: str
    info: dict[str, Any]


class Predictor(Protocol):
    name: str

    def predict(self, item: PredictorInput) -> Prediction: ...

    def close(self) -> None: ...


class OraclePredictor:
    """Returns the GT mesh (in our frame, convention ``identity``)."""

    name = "oracle"

    def __init__(self) -> None:
        pass

    def predict(self, item: PredictorInput) -> Prediction:
        mesh = load_world_mesh(item.object_dir / "gt_mesh.glb")
        return Prediction(mesh, "identity", {})

    def close(self) -> None:
        pass


def silhouette_masks(images: list[np.ndarray], white_threshold: float = 0.98) -> list[np.ndarray]:
    """Foreground masks: alpha >= 0.5 when the images carry alpha, else "not white" (generated
    multi-view images come on a white background without alpha)."""
    masks = []
    for im in images:
        alpha = im[..., 3]
        if (alpha < 0.5).any():
            masks.append(alpha >= 0.5)
        else:
            masks.append((im[..., :3] < white_threshold).any(axis=-1))
    return masks


class VisualHullPredictor:
    """Space carving from six silhouettes + vertex colours (see module docstring)."""

    name = "visual-hull"

    def __init__(
        self, resolution: int = 64, extent: float = 1.1, smooth_sigma: float = 0.8
    ) -> None:
        if resolution < 8:
            raise ValueError(f"visual-hull resolution must be >= 8, got {resolution}")
        self.resolution = int(resolution)
        self.extent = float(extent)
        self.smooth_sigma = float(smooth_sigma)

    def predict(self, item: PredictorInput) -> Prediction:
        images, cams = item.six_views()
        mesh = carve(images, cams, self.resolution, self.extent, self.smooth_sigma, item.uid)
        return Prediction(mesh, "identity", {"resolution": self.resolution})

    def close(self) -> None:
        pass


def carve(
    images: list[np.ndarray],
    cameras: list[Camera],
    resolution: int = 64,
    extent: float = 1.1,
    smooth_sigma: float = 0.8,
    where: str = "object",
) -> trimesh.Trimesh:
    """Visual hull of the silhouettes in ``images`` seen by ``cameras`` as a vertex-coloured mesh
    in world coordinates. Voxels projecting outside an image are not carved by that view."""
    from scipy.ndimage import gaussian_filter
    from skimage.measure import marching_cubes

    masks = silhouette_masks(images)
    axis = np.linspace(-extent, extent, resolution)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    occupied = np.ones(len(grid), dtype=bool)
    for mask, cam in zip(masks, cameras, strict=True):
        px, depth = project(grid, cam)
        col = np.floor(px[:, 0]).astype(np.int64)
        row = np.floor(px[:, 1]).astype(np.int64)
        inside = (depth > 0) & (col >= 0) & (col < cam.width) & (row >= 0) & (row < cam.height)
        keep = np.ones(len(grid), dtype=bool)
        keep[inside] = mask[row[inside], col[inside]]
        occupied &= keep
    volume = occupied.reshape(resolution, resolution, resolution).astype(np.float32)
    if volume.sum() == 0:
        raise PredictorError(f"{where}: the silhouettes carve away every voxel (empty masks?)")
    volume = np.pad(volume, 1)
    if smooth_sigma > 0:
        volume = gaussian_filter(volume, smooth_sigma)
    level = 0.5 if volume.max() > 0.5 else float(volume.max()) / 2.0
    verts, faces, normals, _ = marching_cubes(volume, level=level)
    step = axis[1] - axis[0]
    verts = (verts - 1.0) * step - extent
    # marching_cubes orients faces by the gradient (towards higher occupancy): flip to outwards.
    colours = _vertex_colours(verts, -normals, images, masks, cameras)
    return trimesh.Trimesh(verts, faces[:, ::-1], vertex_colors=colours, process=False)


def _vertex_colours(
    verts: np.ndarray,
    normals: np.ndarray,
    images: list[np.ndarray],
    masks: list[np.ndarray],
    cameras: list[Camera],
) -> np.ndarray:
    best = np.full(len(verts), -np.inf)
    colour = np.full((len(verts), 3), 0.5)
    unit = normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    for im, mask, cam in zip(images, masks, cameras, strict=True):
        px, depth = project(verts, cam)
        col = np.clip(np.floor(px[:, 0]).astype(np.int64), 0, cam.width - 1)
        row = np.clip(np.floor(px[:, 1]).astype(np.int64), 0, cam.height - 1)
        to_cam = cam.position[None, :] - verts
        to_cam /= np.maximum(np.linalg.norm(to_cam, axis=1, keepdims=True), 1e-12)
        score = (unit * to_cam).sum(axis=1)
        ok = (depth > 0) & mask[row, col] & (score > best)
        colour[ok] = im[row[ok], col[ok], :3]
        best[ok] = score[ok]
    rgba = np.concatenate([colour, np.ones((len(verts), 1))], axis=1)
    return np.round(rgba * 255).astype(np.uint8)


class MeshDirPredictor:
    """Meshes from another method: ``<root>/<uid>.<ext>`` with a declared axis convention."""

    name = "mesh-dir"

    def __init__(self, root: str, convention: str | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise PredictorError(f"mesh-dir: {self.root} is not a directory")
        declared = None
        config = self.root / "predictor.yaml"
        if config.is_file():
            declared = (yaml.safe_load(config.read_text()) or {}).get("convention")
        chosen = convention or declared
        if chosen is None:
            raise PredictorError(
                f"mesh-dir: declare the meshes' axis convention (--convention or 'convention:' in "
                f"{config}); known: {sorted(AXIS_CONVENTIONS)}"
            )
        if chosen not in AXIS_CONVENTIONS:
            raise PredictorError(
                f"mesh-dir: unknown convention {chosen!r}; known: {sorted(AXIS_CONVENTIONS)}"
            )
        self.convention: str = str(chosen)

    def predict(self, item: PredictorInput) -> Prediction:
        for ext in MESH_EXTENSIONS:
            path = self.root / f"{item.uid}{ext}"
            if path.is_file():
                from rendering.mesh_io import load_mesh

                try:
                    mesh = load_mesh(path)
                except MeshLoadError as e:
                    raise PredictorError(str(e)) from e
                return Prediction(mesh, self.convention, {"path": str(path)})
        raise PredictionMissing(f"mesh-dir: no prediction for {item.uid} in {self.root}")

    def close(self) -> None:
        pass


PREDICTORS: dict[str, str] = {
    "oracle": "evaluation.predictors:OraclePredictor",
    "visual-hull": "evaluation.predictors:VisualHullPredictor",
    "mesh-dir": "evaluation.predictors:MeshDirPredictor",
    "instantmesh": "instantmesh.predictor:InstantMeshPredictor",
}
"""Predictor name -> ``module:Class`` (imported lazily; one line per predictor)."""

GPU_PREDICTORS = ("instantmesh",)


def make_predictor(name: str, **options: Any) -> Predictor:
    if name not in PREDICTORS:
        raise ValueError(f"unknown predictor {name!r}; choose one of {sorted(PREDICTORS)}")
    module, cls_name = PREDICTORS[name].split(":")
    cls: Callable[..., Predictor] = getattr(importlib.import_module(module), cls_name)
    return cls(**{k: v for k, v in options.items() if v is not None})
