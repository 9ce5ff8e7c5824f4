"""Typed configurations of the reconstruction-model variants and their registry.

The four official variants mirror the upstream InstantMesh YAML configs
(``configs/instant-{nerf,mesh}-{base,large}.yaml``); the ``tiny-*`` variants shrink every
width, depth and resolution so a forward and backward pass runs in well under a second on CPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

SynthesizerKind = Literal["nerf", "mesh"]


@dataclass(frozen=True)
class EncoderConfig:
    """DINO ViT image encoder with camera-modulated adaptive LayerNorm."""

    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    patch_size: int = 16
    # Resolution the position embeddings were trained at (224 -> 14x14 patch grid + CLS).
    image_size: int = 224
    num_channels: int = 3
    layer_norm_eps: float = 1e-12
    camera_dim: int = 16

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"encoder hidden_size {self.hidden_size} is not divisible by "
                f"num_heads {self.num_heads}"
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"encoder image_size {self.image_size} is not a multiple of "
                f"patch_size {self.patch_size}"
            )

    @property
    def pretrained_grid(self) -> int:
        """Side of the square patch grid the position embeddings describe."""
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class TransformerConfig:
    """Triplane transformer: learned triplane tokens cross-attending to image tokens."""

    inner_dim: int = 1024
    num_layers: int = 12
    num_heads: int = 16
    triplane_low_res: int = 32
    triplane_high_res: int = 64
    triplane_dim: int = 40

    def __post_init__(self) -> None:
        if self.inner_dim % self.num_heads:
            raise ValueError(
                f"transformer inner_dim {self.inner_dim} is not divisible by "
                f"num_heads {self.num_heads}"
            )
        if self.triplane_high_res != 2 * self.triplane_low_res:
            raise ValueError(
                "the deconvolution upsamples by exactly 2: triplane_high_res must be "
                f"2 * triplane_low_res, got {self.triplane_high_res} and {self.triplane_low_res}"
            )


@dataclass(frozen=True)
class VariantConfig:
    """Everything needed to build one reconstruction model."""

    name: str
    synthesizer: SynthesizerKind
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    samples_per_ray: int = 96
    decoder_hidden_dim: int = 64
    decoder_num_layers: int = 4
    # FlexiCubes grid (mesh variants only).
    grid_res: int = 128
    grid_scale: float = 2.1
    # Input resolution the model is used at (Zero123++ views are 320 x 320).
    input_size: int = 320

    def __post_init__(self) -> None:
        if self.synthesizer not in ("nerf", "mesh"):
            raise ValueError(f"synthesizer must be 'nerf' or 'mesh', got {self.synthesizer!r}")
        if self.samples_per_ray < 4 or self.samples_per_ray % 2:
            raise ValueError(f"samples_per_ray must be even and >= 4, got {self.samples_per_ray}")
        if self.decoder_num_layers < 2:
            raise ValueError("decoder_num_layers must be at least 2")

    @property
    def triplane_dim(self) -> int:
        return self.transformer.triplane_dim

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VariantConfig:
        values = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown variant config fields: {unknown}")
        values["encoder"] = EncoderConfig(**values.get("encoder", {}))
        values["transformer"] = TransformerConfig(**values.get("transformer", {}))
        return cls(**values)


_BASE = TransformerConfig(num_layers=12, triplane_dim=40)
_LARGE = TransformerConfig(num_layers=16, triplane_dim=80)
_TINY_ENCODER = EncoderConfig(
    hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, patch_size=8, image_size=32
)
_TINY_TRANSFORMER = TransformerConfig(
    inner_dim=32, num_layers=2, num_heads=2, triplane_low_res=4, triplane_high_res=8, triplane_dim=8
)

VARIANTS: dict[str, VariantConfig] = {
    cfg.name: cfg
    for cfg in (
        VariantConfig("instant-nerf-base", "nerf", transformer=_BASE, samples_per_ray=96),
        VariantConfig("instant-nerf-large", "nerf", transformer=_LARGE, samples_per_ray=128),
        VariantConfig("instant-mesh-base", "mesh", transformer=_BASE, samples_per_ray=96),
        VariantConfig("instant-mesh-large", "mesh", transformer=_LARGE, samples_per_ray=128),
        VariantConfig(
            "tiny-nerf",
            "nerf",
            encoder=_TINY_ENCODER,
            transformer=_TINY_TRANSFORMER,
            samples_per_ray=8,
            decoder_hidden_dim=16,
            grid_res=8,
            input_size=48,
        ),
        VariantConfig(
            "tiny-mesh",
            "mesh",
            encoder=_TINY_ENCODER,
            transformer=_TINY_TRANSFORMER,
            samples_per_ray=8,
            decoder_hidden_dim=16,
            grid_res=8,
            input_size=48,
        ),
    )
}

OFFICIAL_VARIANTS: tuple[str, ...] = (
    "instant-nerf-base",
    "instant-nerf-large",
    "instant-mesh-base",
    "instant-mesh-large",
)


def get_variant(variant: str | VariantConfig) -> VariantConfig:
    """Look a variant up by name (or pass a config through unchanged)."""
    if isinstance(variant, VariantConfig):
        return variant
    try:
        return VARIANTS[variant]
    except KeyError:
        raise ValueError(
            f"unknown InstantMesh variant {variant!r}; known variants: {sorted(VARIANTS)}"
        ) from None
