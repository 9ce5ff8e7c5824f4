"""Evaluate one predicted mesh against one evaluation-set object (plain Python, no Ray).

Protocol (paper section 4; every open choice is a parameter):

1. The prediction is mapped into our frame with its declared axis convention
   (``evaluation.alignment.apply_convention``), optionally refined by ICP onto the GT (off by
   default: the paper protocol).
2. **2D**: the prediction is normalized into [-1, 1]^3 exactly like the GT was (bounding box
   centred, longest side 2: ``rendering.normalize``) and rendered by the same backend at the GT
   views' cameras (``orbit``, and ``benchmark`` when the object has them), RGBA; both images are
   composited on white and compared with PSNR / SSIM / LPIPS (``evaluation.metrics``).
3. **3D**: Chamfer distance and F-Score@t on 16K surface samples, both meshes re-normalized into
   [-1, 1]^3 (``evaluation.geometry.geometry_metrics``).

A prediction that cannot be evaluated (empty, NaN vertices, render failure) raises; the
pipeline turns that into a failed status row and the report counts the object as failed.
"""

from __future__ import annotations

import dataclasses
import io
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import trimesh
from PIL import Image

from evaluation.alignment import apply_convention, refine_icp
from evaluation.geometry import geometry_metrics
from evaluation.metrics import image_metrics
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
    background: float = 1.0
    device: str | None = None
    """Torch device of the image metrics (None: CUDA when visible, else CPU)."""


@dataclass
class ObjectEvaluation:
    views: dict[str, dict[str, np.ndarray]]
    """view set -> {"psnr", "ssim", "lpips"} arrays, one value per view."""
    geometry: dict[str, float]
    renders: dict[str, list[np.ndarray]]
    """view set -> predicted RGBA uint8 images (for reports)."""


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


def to_world(mesh: trimesh.Trimesh, convention: str) -> trimesh.Trimesh:
    return apply_convention(mesh, convention)


def render_mesh(
    backend: Any, mesh_world: trimesh.Trimesh, cameras: Sequence[Camera], object_scale: float = 1.0
) -> list[Any]:
    """Render a mesh given in world coordinates with ``backend``, placed like the GT views'
    object: normalized into [-1, 1]^3 (``prepare_object``), then scaled by ``object_scale``."""
    with tempfile.TemporaryDirectory(prefix="imesh-pred-") as tmp:
        path = Path(tmp) / "pred.glb"
        path.write_bytes(world_mesh_glb_bytes(mesh_world))
        obj, _ = prepare_object(path)
        if object_scale != 1.0:
            scale = np.diag([object_scale] * 3 + [1.0])
            obj = dataclasses.replace(obj, file_to_world=scale @ obj.file_to_world)
        return list(backend.render(obj, cameras))


def evaluate_object(
    pred_world: trimesh.Trimesh, object_dir: Path, backend: Any, options: EvalOptions
) -> ObjectEvaluation:
    """Metrics of a prediction (already in our frame) against the object in ``object_dir``."""
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
        rendered = render_mesh(backend, pred_world, cams, float(record.get("object_scale", 1.0)))
        pred_u8 = [rgba_u8(v) for v in rendered]
        pred_images = np.stack(pred_u8).astype(np.float32) / 255.0
        m = image_metrics(
            pred_images,
            gt_images,
            background=options.background,
            lpips_net=options.lpips_net,
            device=options.device,
        )
        views[vs] = {k: np.asarray(v, dtype=np.float64) for k, v in m.items()}
        renders[vs] = pred_u8
    geo = geometry_metrics(
        pred_world,
        gt,
        n_points=options.n_points,
        thresholds=(options.fscore_threshold,),
        seed=options.seed,
    )
    return ObjectEvaluation(views, geo, renders)


def png_bytes(rgba: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, format="PNG")
    return buf.getvalue()
