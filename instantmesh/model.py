"""The sparse-view reconstruction model (LRM): encoder + triplane transformer + synthesizer."""

from __future__ import annotations

import torch
from torch import nn

from instantmesh.encoder import CameraConditionedDinoEncoder
from instantmesh.synthesizer import MeshSynthesizer, NeRFSynthesizer
from instantmesh.transformer import TriplaneTransformer
from instantmesh.variants import VariantConfig, get_variant

#: Upstream scales the raw deformation by 1 / (grid_res * deformation_multiplier).
DEFORMATION_MULTIPLIER = 4.0


class ReconstructionModel(nn.Module):
    """Shared trunk: six posed views -> triplanes (B, 3, C, 2*low_res, 2*low_res)."""

    synthesizer: nn.Module

    def __init__(self, cfg: VariantConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = CameraConditionedDinoEncoder(cfg.encoder)
        self.transformer = TriplaneTransformer(cfg.transformer, cfg.encoder.hidden_size)

    def forward_planes(self, images: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        """images (B, V, 3, H, W) in [0, 1], cameras (B, V, 16) -> planes (B, 3, C, R, R)."""
        batch = images.shape[0]
        tokens = self.encoder(images, cameras)  # (B*V, L, D)
        tokens = tokens.reshape(batch, -1, tokens.shape[-1])  # (B, V*L, D), view-major
        return self.transformer(tokens)

    def forward(self, images: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        return self.forward_planes(images, cameras)


class InstantNeRF(ReconstructionModel):
    """NeRF variants: triplanes decoded to density and colour."""

    synthesizer: NeRFSynthesizer

    def __init__(self, cfg: VariantConfig) -> None:
        super().__init__(cfg)
        self.synthesizer = NeRFSynthesizer(cfg)


class InstantMesh(ReconstructionModel):
    """Mesh variants: triplanes decoded to the SDF / deformation / weight fields of FlexiCubes."""

    synthesizer: MeshSynthesizer

    def __init__(self, cfg: VariantConfig) -> None:
        super().__init__(cfg)
        self.synthesizer = MeshSynthesizer(cfg)

    def bounded_deformation(self, raw_deformation: torch.Tensor) -> torch.Tensor:
        """Upstream's normalization: ``tanh(d) / (grid_res * 4)`` keeps vertices in their cell."""
        return torch.tanh(raw_deformation) / (self.cfg.grid_res * DEFORMATION_MULTIPLIER)


def build_model(
    variant: str | VariantConfig,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> InstantNeRF | InstantMesh:
    """Build a randomly initialised model of ``variant`` (name or config).

    ``device='meta'`` builds shapes only (no memory), e.g. to inspect the state dict.
    """
    cfg = get_variant(variant)
    with torch.device(device):
        model: InstantNeRF | InstantMesh = (
            InstantNeRF(cfg) if cfg.synthesizer == "nerf" else InstantMesh(cfg)
        )
    return model.to(dtype=dtype)
