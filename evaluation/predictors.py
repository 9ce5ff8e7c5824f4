"""Predictors: evaluation-set object -> predicted mesh (registry; plain Python, no Ray).

A predictor gets one :class:`PredictorInput` (an evaluation-set object folder, as written by
``imesh evalset``: ``input.png``, ``zero123pp/001..006.png`` + ``cameras.npz``, ``gt_mesh.glb``)
and returns a :class:`Prediction`: a ``trimesh.Trimesh`` in the predictor's own axis
convention (a name from ``evaluation.alignment.AXIS_CONVENTIONS``). The evaluation maps it into
our frame with that convention and then normalizes it into [-1, 1]^3, so a predictor need not
care about scale or position.

Registry (:data:`PREDICTORS`, the single truth: the ``--predictor`` choices and their help, the
options each predictor takes, whether it needs a GPU, what feeds its resume fingerprint):

- ``oracle``: the GT mesh itself (sanity check: the best possible metrics; used in tests).
- ``visual-hull``: a weight-free CPU baseline (``evaluation.visual_hull``): the visual hull
  of the input view and the six Zero123++ views' silhouettes on a grid bounded by what every view
  sees, marching cubes, and vertex colours from the view that faces each vertex best. Real,
  non-trivial metrics without any weights.
- ``mesh-dir``: meshes produced by other methods (TripoSR, LGM, CRM, ...): ``<dir>/<uid>.<ext>``
  with the method's axis convention declared by option or in ``<dir>/predictor.yaml``
  (``convention: triposr``).
- ``instantmesh``: the paper's pipeline, input.png -> Zero123++ -> LRM
  (``evaluation.instantmesh_predictor``; GPU).

Each entry (:class:`PredictorEntry`) names its class lazily (``target = "module:Class"``: the
heavy dependencies of a predictor load only when it is built) and holds its options dataclass
(a :class:`BasePredictorOptions` subclass, defined here so the driver validates options and
fingerprints inputs without importing any predictor). A predictor class takes one instance of
its options dataclass. ``make_predictor(name, **options)`` builds one from keyword options.
Adding a predictor: one module with its class, one options dataclass and one entry here.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

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


@dataclass(frozen=True, kw_only=True)
class BasePredictorOptions:
    """Base of a predictor's options dataclass (frozen, keyword-only fields).

    Field names are the job configs' option names (``mesh_dir`` is ``--mesh-dir``), so a job
    builds a predictor's options from its config by field name (:meth:`PredictorEntry.options_from`);
    a field no job config has is an API-only option that keeps its default there.
    """

    def validate(self) -> None:
        """Raise :class:`PredictorError` naming the option when these options cannot work.
        Cheap (no weights loaded): the driver calls it before starting any worker."""

    def input_files(self, uid: str) -> InputFiles:
        """Files the prediction of ``uid`` reads besides its evaluation-set object (which every
        prediction reads): they feed the item's resume fingerprint, so replacing one redoes
        the item. None by default."""
        del uid
        return InputFiles()


@dataclass(frozen=True)
class InputFiles:
    """What a prediction reads besides the evaluation-set object, by role."""

    files: Mapping[str, Path] = field(default_factory=dict)
    """Plain files (fingerprinted by content)."""
    meshes: Mapping[str, Path | None] = field(default_factory=dict)
    """Mesh files (fingerprinted with the files they reference); None: no such file."""


@dataclass(frozen=True, kw_only=True)
class OracleOptions(BasePredictorOptions):
    """The oracle takes no options."""


@dataclass(frozen=True, kw_only=True)
class VisualHullOptions(BasePredictorOptions):
    resolution: int = 64
    """Samples along the longest side of the hull's box (cubic voxels; >= 8)."""
    smooth_sigma: float = 0.0
    """Gaussian blur of the signed-distance field, in voxels (0: none)."""
    use_input_view: bool = True
    """Carve with the input view too (seven views), not only the six Zero123++ views."""
    layout_prior: bool = True
    """Clip the hull to the box the evaluation layout's ``render.json`` implies."""

    def validate(self) -> None:
        if self.resolution < 8:
            raise PredictorError(f"visual-hull: --resolution must be >= 8, got {self.resolution}")
        if self.smooth_sigma < 0:
            raise PredictorError(f"visual-hull: smooth_sigma must be >= 0, got {self.smooth_sigma}")


@dataclass(frozen=True, kw_only=True)
class MeshDirOptions(BasePredictorOptions):
    mesh_dir: str | None = None
    """Folder with ``<uid>.<ext>`` meshes (``MESH_EXTENSIONS``, first found wins)."""
    convention: str | None = None
    """Axis convention of those meshes; default: ``convention:`` in ``<mesh_dir>/predictor.yaml``."""

    def validate(self) -> None:
        if not self.mesh_dir:
            raise PredictorError("predictor mesh-dir needs --mesh-dir <folder of <uid>.glb/.obj>")
        if not Path(self.mesh_dir).is_dir():
            raise PredictorError(f"mesh-dir: {self.mesh_dir} is not a directory")
        if self.convention is not None and self.convention not in AXIS_CONVENTIONS:
            raise PredictorError(
                f"mesh-dir: unknown convention {self.convention!r}; "
                f"known: {sorted(AXIS_CONVENTIONS)}"
            )

    def input_files(self, uid: str) -> InputFiles:
        """``predictor.yaml`` and the mesh imported for ``uid``: the first candidate name that
        exists as any kind of entry (a FIFO or a folder is fingerprinted as what it is, and the
        prediction then fails naming it), None when there is none; nothing without a mesh_dir."""
        if not self.mesh_dir:
            return InputFiles()
        root = Path(self.mesh_dir)
        found = next((p for p in mesh_candidates(root, uid) if os.path.lexists(p)), None)
        return InputFiles(
            files={"predictor_yaml": root / "predictor.yaml"}, meshes={"prediction": found}
        )


ViewsSource = Literal["generated", "ground-truth"]
VIEWS_SOURCES: tuple[ViewsSource, ...] = get_args(ViewsSource)
DtypeName = Literal["auto", "float16", "float32", "bfloat16"]
"""Zero123++ dtypes (``auto``: float16 on CUDA, float32 on CPU)."""
DTYPE_NAMES: tuple[DtypeName, ...] = get_args(DtypeName)


@dataclass(frozen=True, kw_only=True)
class InstantMeshOptions(BasePredictorOptions):
    checkpoint: str | None = None
    """An official ``.ckpt`` (with ``variant``) or a folder written by ``instantmesh.save_model``."""
    variant: str | None = None
    """Model variant (instant-mesh-large, instant-nerf-base, ...)."""
    device: str = "auto"
    """Torch device of both models; auto: CUDA when available."""
    mc_resolution: int = 256
    """NeRF variants: marching-cubes grid resolution."""
    density_threshold: float = 10.0
    """NeRF variants: density iso-level of the extracted surface."""
    views: ViewsSource = "generated"
    """generated: input.png -> Zero123++ -> six views (the paper's task); ground-truth: the six
    views rendered from the GT mesh (an ablation, labelled as one)."""
    zero123pp: str | None = None
    """The Zero123++ v1.2 diffusers folder (local; never downloaded)."""
    unet: str | None = None
    """InstantMesh's white-background UNet weights file, loaded into the Zero123++ UNet."""
    dtype: DtypeName = "auto"
    """Zero123++ dtype (``DTYPE_NAMES``)."""
    steps: int = 75
    """Diffusion steps (paper: 75)."""
    guidance: float = 4.0
    """Classifier-free guidance scale (paper: 4.0)."""
    diffusion_seed: int = 42
    """Run seed; each object's diffusion seed derives from (this, uid)."""
    rembg_model: str | None = None
    """Local u2net.onnx for inputs without transparency; default: rembg's cache."""

    def validate(self) -> None:
        if not self.checkpoint:
            raise PredictorError(
                "predictor instantmesh needs --checkpoint (an official .ckpt with --variant, or a "
                "folder written by instantmesh.save_model)"
            )
        if self.variant is not None:
            from instantmesh.variants import VARIANTS  # the model's registry (imports torch)

            if self.variant not in VARIANTS:
                raise PredictorError(
                    f"instantmesh: unknown --variant {self.variant!r}; choose one of "
                    f"{', '.join(VARIANTS)}"
                )
        if self.views not in VIEWS_SOURCES:
            raise PredictorError(f"instantmesh: --views must be one of {VIEWS_SOURCES}")
        if self.views == "generated" and not self.zero123pp:
            raise PredictorError(
                "instantmesh --views generated needs --zero123pp (the Zero123++ v1.2 diffusers "
                "folder, e.g. a local copy of sudo-ai/zero123plus-v1.2) and usually --unet "
                "(InstantMesh's white-background UNet, diffusion_pytorch_model.bin); "
                "--views ground-truth skips diffusion (an ablation, labelled as one)"
            )
        if self.dtype not in DTYPE_NAMES:
            raise PredictorError(f"instantmesh: --dtype must be one of {DTYPE_NAMES}")
        if self.steps < 1:
            raise PredictorError(f"instantmesh: --steps must be >= 1, got {self.steps}")
        # weights every object reads (--rembg-model only serves opaque inputs: checked there)
        paths: list[tuple[str, str | None]] = [("--checkpoint", self.checkpoint)]
        if self.views == "generated":
            paths += [("--zero123pp", self.zero123pp), ("--unet", self.unet)]
        for option, value in paths:
            if value and not os.path.exists(value):
                raise PredictorError(f"instantmesh: {option} {value}: no such file or folder")


class OraclePredictor:
    """Returns the GT mesh (in our frame, convention ``identity``)."""

    name = "oracle"

    def __init__(self, options: OracleOptions | None = None) -> None:
        (options or OracleOptions()).validate()

    def predict(self, item: PredictorInput) -> Prediction:
        mesh = load_world_mesh(item.object_dir / "gt_mesh.glb")
        return Prediction(mesh, "identity", {})

    def close(self) -> None:
        pass


def mesh_candidates(root: Path, uid: str) -> list[Path]:
    """The files a mesh-dir predictor looks for, in order: ``<root>/<uid><ext>``."""
    return [root / f"{uid}{ext}" for ext in MESH_EXTENSIONS]


class MeshDirPredictor:
    """Meshes from another method: ``<root>/<uid>.<ext>`` with a declared axis convention."""

    name = "mesh-dir"

    def __init__(self, options: MeshDirOptions) -> None:
        options.validate()
        self.root = Path(options.mesh_dir or "")
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
        chosen = options.convention or declared
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
        for path in mesh_candidates(self.root, item.uid):
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


@dataclass(frozen=True)
class PredictorEntry:
    """One registered predictor."""

    name: str
    target: str
    """``"module:Class"`` of the predictor, imported when one is built."""
    options: type[BasePredictorOptions]
    """Its options dataclass; the class is called with one instance of it."""
    description: str
    """One line for ``--help``."""
    needs_gpu: bool = False
    """Its actors reserve a GPU when the cluster has some."""

    def load(self) -> Callable[[Any], Predictor]:
        """The predictor class (imports its module)."""
        module, cls_name = self.target.split(":")
        cls: Callable[[Any], Predictor] = getattr(importlib.import_module(module), cls_name)
        return cls

    def make_options(self, **values: Any) -> BasePredictorOptions:
        """Options from keywords (None: the default); an option this predictor does not take
        is a :class:`PredictorError` naming the ones it takes."""
        names = {f.name for f in fields(self.options)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise PredictorError(
                f"predictor {self.name} takes no option(s) {', '.join(unknown)}; "
                f"its options: {', '.join(sorted(names)) or 'none'}"
            )
        return self.options(**{k: v for k, v in values.items() if v is not None})

    def options_from(self, values: Mapping[str, Any]) -> BasePredictorOptions:
        """Options from a mapping that holds them among others (a job config's fields, by
        name); the names this predictor does not take are ignored."""
        names = {f.name for f in fields(self.options)}
        return self.make_options(**{k: v for k, v in values.items() if k in names})

    def build(self, options: BasePredictorOptions) -> Predictor:
        """A predictor built with ``options`` (validated first)."""
        if not isinstance(options, self.options):
            raise TypeError(
                f"predictor {self.name} takes {self.options.__name__}, got {type(options).__name__}"
            )
        options.validate()
        return self.load()(options)


PREDICTORS: dict[str, PredictorEntry] = {
    e.name: e
    for e in (
        PredictorEntry(
            "oracle",
            "evaluation.predictors:OraclePredictor",
            OracleOptions,
            "the GT mesh itself (sanity check: the best possible metrics)",
        ),
        PredictorEntry(
            "visual-hull",
            "evaluation.visual_hull:VisualHullPredictor",
            VisualHullOptions,
            "weight-free CPU baseline: visual hull of the seven views' silhouettes",
        ),
        PredictorEntry(
            "mesh-dir",
            "evaluation.predictors:MeshDirPredictor",
            MeshDirOptions,
            "meshes of another method: <mesh-dir>/<uid>.glb/.obj/... (needs --mesh-dir)",
        ),
        PredictorEntry(
            "instantmesh",
            "evaluation.instantmesh_predictor:InstantMeshPredictor",
            InstantMeshOptions,
            "input.png -> Zero123++ -> LRM (needs --checkpoint; GPU)",
            needs_gpu=True,
        ),
    )
}
"""Predictor name -> entry (one entry per predictor)."""


def predictor_entry(name: str) -> PredictorEntry:
    """The entry of predictor ``name`` (:class:`PredictorError` naming the choices if none)."""
    if name not in PREDICTORS:
        raise PredictorError(f"unknown predictor {name!r}; choose one of {sorted(PREDICTORS)}")
    return PREDICTORS[name]


def predictor_help() -> str:
    """``--predictor`` help: each registered predictor with its description."""
    return "; ".join(f"{e.name}: {e.description}" for e in PREDICTORS.values())


def make_predictor(name: str, **options: Any) -> Predictor:
    """Predictor ``name`` built with keyword ``options`` (its options dataclass's fields; None
    values take the default)."""
    entry = predictor_entry(name)
    return entry.build(entry.make_options(**options))
