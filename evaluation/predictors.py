"""Predictors: evaluation-set object -> predicted mesh (registry; plain Python, no Ray).

A predictor gets one :class:`PredictorInput` (an evaluation-set object folder, as written by
``imesh evalset``: ``input.png``, ``zero123pp/001..006.png`` + ``cameras.npz``, ``gt_mesh.glb``)
and returns a :class:`Prediction`: a ``trimesh.Trimesh`` in the predictor's own axis
convention (a name from ``evaluation.alignment.AXIS_CONVENTIONS``). The evaluation maps it into
our frame with that convention and then normalizes it into [-1, 1]^3, so a predictor need not
care about scale or position.

Registry (``PREDICTORS``; ``make_predictor(name, **options)``):

- ``oracle``: the GT mesh itself (sanity check: the best possible metrics; used in tests).
- ``visual-hull``: a weight-free CPU baseline (``evaluation.visual_hull``): the visual hull
  of the input view and the six Zero123++ views' silhouettes on a grid bounded by what every view
  sees, marching cubes, and vertex colours from the view that faces each vertex best. Real,
  non-trivial metrics without any weights.
- ``mesh-dir``: meshes produced by other methods (TripoSR, LGM, CRM, ...): ``<dir>/<uid>.<ext>``
  with the method's axis convention declared by option or in ``<dir>/predictor.yaml``
  (``convention: triposr``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import trimesh
import yaml
from PIL import Image

from evaluation.alignment import AXIS_CONVENTIONS
from rendering.cameras import Camera
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
    """Axis convention and, through it, frame of ``mesh`` (``evaluation.alignment``): the
    evaluation maps it into the GT's world with the object's input camera."""
    info: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)
    """Extra per-object files published beside the mesh (e.g. ``views.png``)."""


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
            try:
                loaded = yaml.safe_load(config.read_text())
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
                raise PredictorError(f"mesh-dir: {config} is unreadable ({e})") from e
            if loaded is not None and not isinstance(loaded, dict):
                raise PredictorError(
                    f"mesh-dir: {config} must be a mapping such as 'convention: instantmesh', "
                    f"not a YAML {type(loaded).__name__}"
                )
            declared = (loaded or {}).get("convention")
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
    "visual-hull": "evaluation.visual_hull:VisualHullPredictor",
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
