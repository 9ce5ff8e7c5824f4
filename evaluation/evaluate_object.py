"""Evaluate one predicted mesh against one evaluation-set object (plain Python, no Ray).

Protocol (paper section 4; every open choice is a parameter):

1. The prediction arrives in the GT's world frame (``imesh predict`` applied the protocol
   alignment: its axis convention, then the input camera's pose for methods that reconstruct
   relative to the input view: ``evaluation.alignment.to_evaluation_frame``), optionally
   refined by ICP onto the GT (off by default: the paper protocol). ``align="search"`` adds
   best-aligned geometry metrics beside the protocol ones (never instead).
2. **2D**: the prediction is normalized into [-1, 1]^3 exactly like the GT was (bounding box
   centred, longest side 2: ``rendering.normalize``) and rendered by the same backend at the GT
   views' cameras (``orbit``, and ``benchmark`` when the object has them), RGBA; both images are
   composited on white and compared with every per-view metric of the registry (PSNR / SSIM /
   LPIPS: ``evaluation.metric_registry.METRICS``, computed by ``evaluation.metric_functions``).
3. **3D**: every per-object metric of the registry: Chamfer distance and F-Score@t on 16K
   surface samples, both meshes re-normalized into [-1, 1]^3
   (``evaluation.geometry.geometry_metrics``), and the best-aligned ones with ``align="search"``.

A prediction that cannot be evaluated (empty, NaN vertices, render failure) raises; the
pipeline turns that into a failed status row and the report counts the object as failed.
"""

from __future__ import annotations

import dataclasses
import io
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import trimesh
from PIL import Image
from trimesh.visual.color import ColorVisuals

from evaluation.alignment import refine_icp
from evaluation.metric_functions import (
    ObjectInputs,
    ViewInputs,
    object_metric_values,
    view_metric_values,
)
from evaluation.metric_registry import METRICS, Metric
from evaluation.metrics import composite
from rendering.backends import prepare_object
from rendering.cameras import Camera
from rendering.mesh_io import load_world_mesh, world_mesh_glb_bytes
from rendering.output_layouts import read_record, rgba_u8

EVAL_VIEW_SETS = ("orbit", "benchmark")


@dataclass(frozen=True)
class EvalOptions:
    lpips_net: str | None = "vgg"
    """LPIPS backbone (None: LPIPS not computed, reported unavailable)."""
    n_points: int = 16000
    fscore_threshold: float = 0.2
    seed: int = 0
    icp: bool = False
    align: str = "protocol"
    """``protocol``: metrics of the prediction as the protocol aligned it. ``search``: also
    best-aligned geometry metrics (``evaluation.alignment.search_alignment``), reported
    beside the protocol numbers (``chamfer_aligned``, ``fscore_aligned``, ...), never instead."""
    frame: str = "world"
    """The prediction's frame (``prediction.json``): ``view`` also searches the pitch."""
    background: float = 1.0
    device: str | None = None
    """Torch device of the image metrics (None: CUDA when visible, else CPU)."""
    image_size: int | None = None
    """Width of the prediction renders and of the compared images (height in proportion); the
    GT views are resampled to it (box filter on premultiplied RGBA). None: the GT views' size
    (the protocol; anything else is an explicit, recorded deviation)."""


@dataclass
class ObjectEvaluation:
    views: dict[str, dict[str, np.ndarray]]
    """view set -> {per-view metric name: array, one value per view} (``psnr``, ``ssim``,
    ``lpips``, ...: every per-view metric evaluated)."""
    geometry: dict[str, Any]
    """``chamfer``, ``fscore@t``, ``precision@t``, ``recall@t``, ... and, with
    ``align="search"``, ``aligned``: the best-aligned ``chamfer``, ``fscore`` and the
    transform found."""
    renders: dict[str, list[np.ndarray]]
    """view set -> predicted RGBA uint8 images (for reports)."""
    metrics: dict[str, float | None] = dataclasses.field(default_factory=dict)
    """per-object metric name -> value (``chamfer``, ``fscore``, ...: every per-object metric
    evaluated; None where not computed, e.g. the aligned ones without ``align="search"``)."""


def view_set_cameras(object_dir: Path, view_set: str) -> list[Camera]:
    data = np.load(object_dir / view_set / "cameras.npz")
    size = (int(data["size"][0]), int(data["size"][1]))
    return [
        Camera.from_c2w(c.astype(np.float64), float(f), size)
        for c, f in zip(data["c2w"], data["fov_deg"], strict=True)
    ]


def read_rgba(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0


def resized_views(
    cameras: Sequence[Camera], images: np.ndarray, width: int
) -> tuple[list[Camera], np.ndarray]:
    """``cameras`` at image width ``width`` (same pose and FOV; height in proportion) and the
    (N, H, W, 4) float RGBA ``images`` resampled to that size: box filter on premultiplied
    colour, so the transparent background does not bleed into the object's edge."""
    height = max(1, round(width * cameras[0].height / cameras[0].width))
    cams = [Camera.from_c2w(c.c2w, c.fov_deg, (width, height), c.name) for c in cameras]
    out = []
    for image in images:
        premultiplied = np.concatenate([image[..., :3] * image[..., 3:], image[..., 3:]], axis=-1)
        channels = [
            np.asarray(
                Image.fromarray(premultiplied[..., k].astype(np.float32), mode="F").resize(
                    (width, height), Image.Resampling.BOX
                )
            )
            for k in range(4)
        ]
        small = np.stack(channels, axis=-1)
        alpha = small[..., 3:]
        rgb = np.where(alpha > 0, small[..., :3] / np.maximum(alpha, 1e-12), 0.0)
        out.append(np.concatenate([np.clip(rgb, 0.0, 1.0), np.clip(alpha, 0.0, 1.0)], axis=-1))
    return cams, np.stack(out).astype(np.float32)


def render_mesh(
    backend: Any, mesh_world: trimesh.Trimesh, cameras: Sequence[Camera], object_scale: float = 1.0
) -> list[Any]:
    """Render a mesh given in world coordinates with ``backend``, placed like the GT views'
    object: normalized into [-1, 1]^3 (``prepare_object``), then scaled by ``object_scale``.

    The backend reads a file: a vertex-coloured mesh goes through a (Z-up) PLY, whose byte
    colours every backend reads as the sRGB values they are (predicted colours are display
    values); in a glTF they would be ``COLOR_0``, which Blender, following the glTF spec,
    decodes as linear (a render ~0.1 brighter than the rasterizers'). Anything else (textures)
    goes through a glTF."""
    with tempfile.TemporaryDirectory(prefix="imesh-pred-") as tmp:
        visual = getattr(mesh_world, "visual", None)
        if isinstance(visual, ColorVisuals) and visual.kind == "vertex":
            path = Path(tmp) / "pred.ply"
            mesh_world.export(path, file_type="ply")
        else:
            path = Path(tmp) / "pred.glb"
            path.write_bytes(world_mesh_glb_bytes(mesh_world))
        obj, _ = prepare_object(path)
        if object_scale != 1.0:
            scale = np.diag([object_scale] * 3 + [1.0])
            obj = dataclasses.replace(obj, file_to_world=scale @ obj.file_to_world)
        return list(backend.render(obj, cameras))


def evaluate_object(
    pred_world: trimesh.Trimesh,
    object_dir: Path,
    backend: Any,
    options: EvalOptions,
    metrics: Iterable[Metric] | None = None,
) -> ObjectEvaluation:
    """Metrics of a prediction (already in our frame) against the object in ``object_dir``:
    every entry of ``metrics`` (default: the registry, ``METRICS``), each computed by its
    entry's ``compute`` function."""
    entries = list(METRICS.values() if metrics is None else metrics)
    if options.align not in ("protocol", "search"):
        raise ValueError(f"align must be 'protocol' or 'search', got {options.align!r}")
    view_inputs = ViewInputs(lpips_net=options.lpips_net, device=options.device)
    gt = load_world_mesh(object_dir / "gt_mesh.glb")
    if options.icp:
        pred_world = refine_icp(pred_world, gt, seed=options.seed).mesh
    record = read_record(object_dir)
    views: dict[str, dict[str, np.ndarray]] = {}
    renders: dict[str, list[np.ndarray]] = {}
    for vs in EVAL_VIEW_SETS:
        if vs not in record["view_sets"]:
            continue
        cams = view_set_cameras(object_dir, vs)
        files = record["view_sets"][vs]["files"]
        gt_images = np.stack([read_rgba(object_dir / vs / f"{f}.png") for f in files])
        if options.image_size is not None and options.image_size != cams[0].width:
            cams, gt_images = resized_views(cams, gt_images, options.image_size)
        rendered = render_mesh(backend, pred_world, cams, float(record.get("object_scale", 1.0)))
        pred_u8 = [rgba_u8(v) for v in rendered]
        pred_images = np.stack(pred_u8).astype(np.float32) / 255.0
        views[vs] = view_metric_values(
            composite(pred_images, options.background),
            composite(gt_images, options.background),
            view_inputs,
            entries,
        )
        renders[vs] = pred_u8
    object_inputs = ObjectInputs(
        pred_world,
        gt,
        n_points=options.n_points,
        fscore_threshold=options.fscore_threshold,
        seed=options.seed,
        align=options.align,
        frame=options.frame,
    )
    values = object_metric_values(object_inputs, entries)
    geo: dict[str, Any] = dict(object_inputs.geometry)
    if object_inputs.aligned is not None:
        geo["aligned"] = object_inputs.aligned
    return ObjectEvaluation(views, geo, renders, values)


def png_bytes(rgba: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, format="PNG")
    return buf.getvalue()
