"""The ``instantmesh`` predictor: the paper's single-image pipeline on an evaluation object.

The evaluation side's adapter (:class:`PredictorInput` -> :class:`Prediction`) around the
``instantmesh`` package: evaluation imports the model, never the reverse. Options:
:class:`evaluation.predictors.InstantMeshOptions`.

``views="generated"`` (default; what the paper's Tables 2-4 score): the evaluation object's
``input.png`` (RGBA, rendered from the GT at a random input pose) -> the upstream preprocessing
(alpha present: crop to the foreground, pad it to 85 % of the frame, composite on white; an RGB
input goes through background removal first) -> Zero123++ v1.2 (``zero123pp`` folder, optional
white-background ``unet`` weights; EulerAncestral with trailing spacing, ``steps`` 75,
``guidance`` 4.0) -> the 640 x 960 grid of six views -> LRM -> mesh. The grid is published
beside the prediction as ``views.png``.

``views="ground-truth"``: the six Zero123++-camera views rendered from the GT mesh
(``zero123pp/001..006.png``) replace the diffusion output: reconstruction from perfect views,
an easier task. Runs of this kind are an ablation (an upper bound for the LRM), labelled as such
in every table, never the paper's "InstantMesh" rows.

Seeds: one per object, derived from ``(diffusion_seed, uid)`` (:func:`object_seed`), so an
object's views do not depend on which worker or in which order it ran. ``prediction.json`` records the view
source, the seed, the Zero123++ folder's identity (a hash of its config files, plus the UNet
file's name and size) and the dtype.

Frame: the LRM reconstructs Z up with the input view at azimuth 0 (convention
``instantmesh_lrm``, frame ``gravity``); the evaluation turns it by the input camera's azimuth
(``evaluation.alignment.to_evaluation_frame``).

Memory: both models stay resident in one actor (one load per actor). Parameters: LRM large
378.7M (fp32 ~1.5 GB), base 313.4M; Zero123++ v1.2 is a Stable Diffusion 2 UNet (~866M) +
VAE (~84M) + CLIP text and vision encoders (~0.35B and ~0.63B for ViT-H), ~1.9B in all: ~3.9 GB
in float16 (the default on CUDA) or ~7.7 GB in float32. With activations at 640 x 960 and the
LRM's FlexiCubes extraction, plan ~10-12 GB of GPU memory per actor (not measured here: no
GPU was available when this was written; the benchmark prints the measured split when run on
one).
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh
from PIL import Image

from evaluation.predictors import (
    InstantMeshOptions,
    Prediction,
    PredictorError,
    PredictorInput,
    ViewsSource,
)

DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}


def object_seed(seed: int, uid: str) -> int:
    """The diffusion seed of object ``uid`` in a run seeded with ``seed`` (31 bits)."""
    digest = hashlib.sha256(f"{int(seed)}:{uid}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def zero123pp_identity(folder: str | os.PathLike[str], unet: str | None = None) -> dict[str, Any]:
    """Identity of a Zero123++ diffusers folder: sha256 over its config files (``*.json`` and
    ``*.txt`` at the top level and one level down, names included), and the UNet weights file's
    name and size when one replaces the folder's UNet (hashing GBs per actor is not worth it)."""
    root = Path(folder)
    h = hashlib.sha256()
    files = sorted(
        p
        for pattern in ("*.json", "*/*.json", "*/*.txt")
        for p in root.glob(pattern)
        if p.is_file()
    )
    for p in files:
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(p.read_bytes())
    out: dict[str, Any] = {"path": str(root), "config_sha256": h.hexdigest(), "files": len(files)}
    if unet:
        u = Path(unet)
        out["unet"] = {"name": u.name, "bytes": u.stat().st_size if u.is_file() else None}
    return out


def _resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]  # a name of DTYPE_NAMES: InstantMeshOptions.validate checked it


class InstantMeshPredictor:
    name = "instantmesh"

    def __init__(self, options: InstantMeshOptions) -> None:
        options.validate()
        assert options.checkpoint is not None  # validate() checked it
        from instantmesh.checkpoint import load_checkpoint

        device = options.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = load_checkpoint(options.checkpoint, options.variant, device=self.device).eval()
        self.mc_resolution = int(options.mc_resolution)
        self.density_threshold = float(options.density_threshold)
        self.views: ViewsSource = options.views
        self.steps, self.guidance = int(options.steps), float(options.guidance)
        self.seed = int(options.diffusion_seed)
        self.rembg_model = options.rembg_model
        self._rembg_session: Any = None
        self.pipe: Any = None
        self.dtype: torch.dtype | None = None
        self.zero123pp: dict[str, Any] | None = None
        if options.views == "generated":
            from instantmesh.zero123pp import Zero123ppWeightsError, from_pretrained

            assert options.zero123pp is not None  # validate() checked it
            self.dtype = _resolve_dtype(options.dtype, self.device)
            try:
                self.pipe = from_pretrained(
                    options.zero123pp, torch_dtype=self.dtype, white_background_unet=options.unet
                )
            except (Zero123ppWeightsError, FileNotFoundError) as e:
                raise PredictorError(f"instantmesh: {e}") from e
            self.pipe.to(self.device)
            self.pipe.set_progress_bar_config(disable=True)
            self.zero123pp = zero123pp_identity(options.zero123pp, options.unet)

    def _generated_views(
        self, item: PredictorInput
    ) -> tuple[list[np.ndarray], dict[str, Any], Image.Image]:
        from instantmesh.background import (
            MissingDependencyError,
            RembgModelMissing,
            load_rembg_session,
            needs_background_removal,
            prepare_condition_image,
        )
        from instantmesh.zero123pp import generate_multiview

        path = item.object_dir / "input.png"
        if not path.is_file():
            raise PredictorError(f"{item.uid}: missing input image {path}")
        with Image.open(path) as im:
            im.load()
            image = im.copy()
        seed = object_seed(self.seed, item.uid)
        # Upstream's input handling: an input with transparency keeps its alpha (the evaluation
        # sets' input.png always has it), an opaque one goes through background removal.
        try:
            if needs_background_removal(image) and self._rembg_session is None:
                self._rembg_session = load_rembg_session(self.rembg_model)
            cond = prepare_condition_image(image, session=self._rembg_session)
            result = generate_multiview(
                self.pipe,
                cond.image,
                seed=seed,
                num_inference_steps=self.steps,
                guidance_scale=self.guidance,
                remove_background=False,
                foreground_ratio=None,
            )
        except (ValueError, RembgModelMissing, MissingDependencyError) as e:
            raise PredictorError(f"{item.uid}: {e}") from e
        arrays = [np.asarray(v.convert("RGB"), dtype=np.float32) / 255.0 for v in result.views]
        info = {
            "seed": seed,
            "run_seed": self.seed,
            "steps": self.steps,
            "guidance": self.guidance,
            "dtype": str(self.dtype).removeprefix("torch."),
            "input": cond.record(),
            "zero123pp": self.zero123pp,
        }
        return arrays, info, result.grid

    def predict(self, item: PredictorInput) -> Prediction:
        from instantmesh.reconstruct import reconstruct_mesh
        from instantmesh.zero123pp import merge_grid

        t0 = time.perf_counter()
        info: dict[str, Any] = {"views": self.views, "variant": self.model.cfg.name}
        if self.views == "generated":
            images, gen_info, grid = self._generated_views(item)
            info.update(gen_info)
        else:
            images, _ = item.six_views()
            grid = merge_grid(
                [Image.fromarray(np.round(im * 255).astype(np.uint8), "RGBA") for im in images]
            )
        buf = io.BytesIO()
        grid.save(buf, format="PNG")
        t1 = time.perf_counter()
        try:
            cm, _ = reconstruct_mesh(
                self.model,
                images,
                mc_resolution=self.mc_resolution,
                density_threshold=self.density_threshold,
            )
        except ValueError as e:
            raise PredictorError(f"{item.uid}: {e}") from e
        t2 = time.perf_counter()
        info["timings"] = {"diffusion_s": t1 - t0, "lrm_s": t2 - t1}
        vertices = np.asarray(cm.vertices, dtype=np.float64)
        colors = np.concatenate([cm.vertex_colors, np.full((len(vertices), 1), 255, np.uint8)], 1)
        mesh = trimesh.Trimesh(vertices, cm.faces, vertex_colors=colors, process=False)
        return Prediction(mesh, "instantmesh_lrm", info, files={"views.png": buf.getvalue()})

    def close(self) -> None:
        del self.model
        self.pipe = None
