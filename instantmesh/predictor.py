"""The ``instantmesh`` predictor: six views -> LRM triplanes -> mesh (evaluation registry entry).

Setting (``source="views"``, the paper's sparse-view reconstruction setting): the evaluation
object's six Zero123++-camera views (``zero123pp/001..006.png``, RGBA) are composited on white,
resized to the variant's input size (320 px) and fed with the fixed Zero123++ input cameras (``input_cameras``: radius 4,
FOV 30, azimuths 30..330, elevations 20/-10) to the model; the triplanes are turned into a
vertex-coloured mesh: marching cubes on the density for NeRF variants
(``extract_nerf_mesh``), FlexiCubes for mesh variants (``instantmesh.mesh_extraction``).

Frames: the model's frame is Z up with its azimuth 0 at the condition view; our evaluation
views put the six targets at ``condition azimuth + 30 ... 330``. The mesh is therefore rotated
by the condition view's azimuth about +Z into our world frame (recorded in the prediction info)
and returned with the ``identity`` convention.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import torch
import trimesh

from evaluation.predictors import Prediction, PredictorError, PredictorInput


class InstantMeshPredictor:
    name = "instantmesh"

    def __init__(
        self,
        checkpoint: str | None = None,
        variant: str | None = None,
        device: str = "auto",
        mc_resolution: int = 256,
        density_threshold: float = 10.0,
    ) -> None:
        if not checkpoint:
            raise PredictorError(
                "predictor instantmesh needs --checkpoint (an official .ckpt with --variant, or a "
                "folder written by instantmesh.save_model)"
            )
        from instantmesh.checkpoint import load_checkpoint

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = load_checkpoint(checkpoint, variant, device=self.device).eval()
        self.mc_resolution = int(mc_resolution)
        self.density_threshold = float(density_threshold)

    def predict(self, item: PredictorInput) -> Prediction:
        from instantmesh.reconstruct import reconstruct_mesh

        images, _ = item.six_views()
        try:
            cm, _ = reconstruct_mesh(
                self.model,
                images,
                mc_resolution=self.mc_resolution,
                density_threshold=self.density_threshold,
            )
        except ValueError as e:
            raise PredictorError(f"{item.uid}: {e}") from e
        azimuth = _condition_azimuth(item)
        c, s = math.cos(math.radians(azimuth)), math.sin(math.radians(azimuth))
        rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        vertices = np.asarray(cm.vertices, dtype=np.float64) @ rot.T
        colors = np.concatenate([cm.vertex_colors, np.full((len(vertices), 1), 255, np.uint8)], 1)
        mesh = trimesh.Trimesh(vertices, cm.faces, vertex_colors=colors, process=False)
        return Prediction(
            mesh, "identity", {"variant": self.model.cfg.name, "azimuth_deg": azimuth}
        )

    def close(self) -> None:
        del self.model


def _condition_azimuth(item: PredictorInput) -> float:
    record: dict[str, Any] = json.loads((item.object_dir / "render.json").read_text())
    return float(record["view_sets"][""]["azimuth_deg"][0])
