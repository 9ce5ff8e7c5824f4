"""DINO ViT-B/16 image encoder with camera-modulated adaptive LayerNorm.

Parameter names follow the Hugging Face ``ViTModel`` layout (``embeddings``,
``encoder.layer.N.attention.attention.query`` ...), so DINO weights and the official InstantMesh
checkpoints load without renaming. Each layer additionally owns ``adaLN_modulation`` (SiLU then
Linear(D, 4D)) that turns the camera embedding into shift/scale pairs for its two LayerNorms.

Numerics follow upstream InstantMesh (which vendors transformers 4.34's ViT):
- eager attention: ``softmax((q @ k^T) / sqrt(head_dim)) @ v``;
- exact (erf) GELU in the MLP; LayerNorm eps from the config (1e-12 for DINO);
- position embeddings resampled with bicubic ``interpolate`` driven by the *scale factor*
  ``(grid + 0.1) / pretrained_grid`` (not by an output size), with ``align_corners=False``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from instantmesh.variants import EncoderConfig

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def read_preprocessor_normalization(
    path: str | Path,
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Read ``image_mean`` / ``image_std`` from a Hugging Face ``preprocessor_config.json``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        mean = tuple(float(v) for v in data["image_mean"])
        std = tuple(float(v) for v in data["image_std"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"cannot read image_mean/image_std from {path}: {err}") from err
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"{path}: image_mean and image_std must have 3 values each")
    return (mean[0], mean[1], mean[2]), (std[0], std[1], std[2])


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x * (1 + scale) + shift`` with per-sample (N, D) shift/scale."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class PatchProjection(nn.Module):
    """Non-overlapping patchify convolution (HF name: ``patch_embeddings.projection``)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.patch_size = cfg.patch_size
        self.projection = nn.Conv2d(
            cfg.num_channels, cfg.hidden_size, kernel_size=cfg.patch_size, stride=cfg.patch_size
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.projection(pixels).flatten(2).transpose(1, 2)


class ViTEmbeddings(nn.Module):
    """CLS token + patch tokens + (resampled) learned position embeddings."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        num_positions = cfg.pretrained_grid**2 + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, num_positions, cfg.hidden_size))
        self.patch_embeddings = PatchProjection(cfg)

    def resampled_position_embeddings(self, height: int, width: int) -> torch.Tensor:
        """Position embeddings for an input of ``height`` x ``width`` pixels.

        Reproduces transformers 4.34 / DINO: the patch grid (g0 x g0) is resized bicubically
        with ``scale_factor = (grid + 0.1) / g0``. The +0.1 guards the floor in the output size;
        because the kernel uses that scale factor, the result differs (~1e-3 in the triplanes)
        from resizing to an exact ``size=(grid_h, grid_w)``.
        """
        pos = self.position_embeddings
        grid_h, grid_w = height // self.cfg.patch_size, width // self.cfg.patch_size
        g0 = self.cfg.pretrained_grid
        if grid_h * grid_w == g0 * g0 and height == width:
            return pos
        dim = pos.shape[-1]
        cls_pos = pos[:, :1]
        patch_pos = pos[:, 1:].reshape(1, g0, g0, dim).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(
            patch_pos,
            scale_factor=((grid_h + 0.1) / math.sqrt(g0 * g0), (grid_w + 0.1) / math.sqrt(g0 * g0)),
            mode="bicubic",
            align_corners=False,
        )
        if patch_pos.shape[-2:] != (grid_h, grid_w):
            raise RuntimeError(
                f"position-embedding resampling produced {tuple(patch_pos.shape[-2:])}, "
                f"expected {(grid_h, grid_w)}"
            )
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
        return torch.cat((cls_pos, patch_pos), dim=1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = pixels.shape
        tokens = self.patch_embeddings(pixels)
        tokens = torch.cat((self.cls_token.expand(batch, -1, -1), tokens), dim=1)
        return tokens + self.resampled_position_embeddings(height, width)


class ViTSelfAttention(nn.Module):
    """Multi-head self-attention with separate, biased q/k/v projections (eager softmax)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        return x.view(n, length, self.num_heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self._split_heads(self.query(x))
        k = self._split_heads(self.key(x))
        v = self._split_heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        context = torch.matmul(scores.softmax(dim=-1), v)
        n, _, length, _ = context.shape
        return context.permute(0, 2, 1, 3).reshape(n, length, self.num_heads * self.head_dim)


class DenseProjection(nn.Module):
    """A single ``dense`` Linear (HF wraps its output / intermediate projections this way)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


class ViTAttention(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.attention = ViTSelfAttention(cfg)
        self.output = DenseProjection(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.attention(x))


class ModulatedViTLayer(nn.Module):
    """Pre-norm ViT block whose two LayerNorms are shifted/scaled by the camera embedding."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.attention = ViTAttention(cfg)
        self.intermediate = DenseProjection(cfg.hidden_size, cfg.intermediate_size)
        self.output = DenseProjection(cfg.intermediate_size, cfg.hidden_size)
        self.layernorm_before = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(cfg.hidden_size, 4 * cfg.hidden_size)
        )

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        shift_attn, scale_attn, shift_mlp, scale_mlp = self.adaLN_modulation(condition).chunk(
            4, dim=1
        )
        x = x + self.attention(modulate(self.layernorm_before(x), shift_attn, scale_attn))
        hidden = modulate(self.layernorm_after(x), shift_mlp, scale_mlp)
        hidden = F.gelu(self.intermediate(hidden))
        return self.output(hidden) + x


class ViTLayerStack(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList([ModulatedViTLayer(cfg) for _ in range(cfg.num_layers)])

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        for block in self.layer:
            x = block(x, condition)
        return x


class ModulatedViT(nn.Module):
    """ViT backbone (no pooler) conditioned per layer through adaLN."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.embeddings = ViTEmbeddings(cfg)
        self.encoder = ViTLayerStack(cfg)
        self.layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, pixels: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(self.embeddings.patch_embeddings.projection.weight.dtype)
        return self.layernorm(self.encoder(self.embeddings(pixels), condition))


class CameraConditionedDinoEncoder(nn.Module):
    """Images in [0, 1] plus 16-d cameras -> image tokens (N*V, 1 + patches, hidden)."""

    def __init__(
        self,
        cfg: EncoderConfig,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = ModulatedViT(cfg)
        self.camera_embedder = nn.Sequential(
            nn.Linear(cfg.camera_dim, cfg.hidden_size),
            nn.SiLU(),
            nn.Linear(cfg.hidden_size, cfg.hidden_size),
        )
        self.image_mean: tuple[float, ...] = tuple(float(v) for v in image_mean)
        self.image_std: tuple[float, ...] = tuple(float(v) for v in image_std)
        self.reset_vit_parameters()

    @torch.no_grad()
    def reset_vit_parameters(self, std: float = 0.02) -> None:
        """ViT-style random init (truncated normal, zero biases, zero-initialised adaLN)."""
        for module in self.model.modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                nn.init.trunc_normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, ViTEmbeddings):
                nn.init.trunc_normal_(module.position_embeddings, std=std)
                nn.init.trunc_normal_(module.cls_token, std=std)
        for module in self.model.modules():
            if isinstance(module, ModulatedViTLayer):
                projection = module.adaLN_modulation[1]
                assert isinstance(projection, nn.Linear)
                nn.init.zeros_(projection.weight)
                nn.init.zeros_(projection.bias)

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Use another processor's mean/std (e.g. from a ``preprocessor_config.json``)."""
        if len(mean) != self.cfg.num_channels or len(std) != self.cfg.num_channels:
            raise ValueError("mean and std need one value per image channel")
        self.image_mean = tuple(float(v) for v in mean)
        self.image_std = tuple(float(v) for v in std)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` in float32, as the HF image processor does (no rescale/resize)."""
        images = images.float()
        shape = (1, -1, 1, 1)
        mean = torch.tensor(self.image_mean, dtype=torch.float32, device=images.device)
        std = torch.tensor(self.image_std, dtype=torch.float32, device=images.device)
        return (images - mean.view(shape)) / std.view(shape)

    def forward(self, images: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        if images.ndim != 5 or cameras.ndim != 3:
            raise ValueError(
                "expected images (B, V, C, H, W) and cameras (B, V, D), got "
                f"{tuple(images.shape)} and {tuple(cameras.shape)}"
            )
        if images.shape[:2] != cameras.shape[:2]:
            raise ValueError(
                f"images {tuple(images.shape)} and cameras {tuple(cameras.shape)} disagree on "
                "batch / view counts"
            )
        if cameras.shape[-1] != self.cfg.camera_dim:
            raise ValueError(f"cameras must be {self.cfg.camera_dim}-d, got {cameras.shape[-1]}")
        input_dtype = images.dtype
        pixels = self.normalize(images.flatten(0, 1)).to(input_dtype)
        condition = self.camera_embedder(cameras).flatten(0, 1)
        return self.model(pixels, condition)
