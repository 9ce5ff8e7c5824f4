"""Triplane decoders: the NeRF synthesizer and the mesh (FlexiCubes field) synthesizer.

Both read point features with :func:`instantmesh.triplane_sampling.sample_triplane` and decode
them with small ReLU MLPs (``Linear(3C, h), ReLU, [Linear(h, h), ReLU] * (L - 2), Linear``).
Activations follow upstream InstantMesh:
- colour: ``sigmoid(x) * (1 + 2e-3) - 1e-3`` (MipNeRF's widened sigmoid);
- NeRF density: ``softplus(raw - 1)`` (applied to raw densities, or to the midpoint averages of
  raw densities inside volume rendering);
- FlexiCubes weights: ``net_weight(8 corner features concatenated) * 0.1``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from instantmesh.triplane_sampling import concat_plane_features, sample_triplane
from instantmesh.variants import VariantConfig
from instantmesh.volume_rendering import RenderOptions, rays_from_cameras, render_triplane_rays

DEFAULT_POINT_CHUNK = 2**20


def relu_mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.ReLU()]
    for _ in range(num_layers - 2):
        layers += [nn.Linear(hidden_dim, hidden_dim), nn.ReLU()]
    layers.append(nn.Linear(hidden_dim, out_dim))
    mlp = nn.Sequential(*layers)
    for module in mlp:
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)
    return mlp


def widened_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x) * (1 + 2 * 0.001) - 0.001


def density_activation(raw_sigma: torch.Tensor) -> torch.Tensor:
    """Softplus with a -1 shift (upstream ``clamp_mode='softplus'``)."""
    return F.softplus(raw_sigma - 1)


class NeRFDecoder(nn.Module):
    """3C features -> raw sigma (first output) and colour (the next three)."""

    def __init__(self, triplane_dim: int, hidden_dim: int = 64, num_layers: int = 4) -> None:
        super().__init__()
        self.net = relu_mlp(3 * triplane_dim, hidden_dim, 1 + 3, num_layers)

    def forward(self, plane_features: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.net(concat_plane_features(plane_features))
        return {"rgb": widened_sigmoid(out[..., 1:]), "sigma": out[..., 0:1]}


class NeRFSynthesizer(nn.Module):
    """Triplane NeRF: point queries, density grids and volume rendering of cameras."""

    def __init__(self, cfg: VariantConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.options = RenderOptions(
            depth_resolution=cfg.samples_per_ray // 2,
            depth_resolution_importance=cfg.samples_per_ray // 2,
        )
        self.decoder = NeRFDecoder(cfg.triplane_dim, cfg.decoder_hidden_dim, cfg.decoder_num_layers)

    def raw_points(self, planes: torch.Tensor, points: torch.Tensor) -> dict[str, torch.Tensor]:
        """Decoder outputs before the density activation (what volume rendering consumes)."""
        return self.decoder(sample_triplane(planes, points, self.options.box_warp))

    def forward_points(
        self, planes: torch.Tensor, points: torch.Tensor, chunk_size: int = DEFAULT_POINT_CHUNK
    ) -> dict[str, torch.Tensor]:
        """(N, P, 3) points -> ``sigma`` (N, P, 1) activated density and ``rgb`` (N, P, 3)."""
        chunks = []
        for start in range(0, points.shape[1], chunk_size):
            out = self.raw_points(planes, points[:, start : start + chunk_size])
            out["sigma"] = density_activation(out["sigma"])
            chunks.append(out)
        if not chunks:
            raise ValueError("forward_points needs at least one point")
        return {key: torch.cat([c[key] for c in chunks], dim=1) for key in chunks[0]}

    def forward_grid(
        self, planes: torch.Tensor, grid_size: int, chunk_size: int = DEFAULT_POINT_CHUNK
    ) -> dict[str, torch.Tensor]:
        """Query a ``grid_size``^3 lattice over [-1, 1]^3 (axis order x, y, z)."""
        points = cube_lattice(grid_size, planes.device).expand(planes.shape[0], -1, -1)
        out = self.forward_points(planes, points, chunk_size)
        n = planes.shape[0]
        return {k: v.reshape(n, grid_size, grid_size, grid_size, -1) for k, v in out.items()}

    def forward(
        self,
        planes: torch.Tensor,
        cameras: torch.Tensor,
        render_size: int,
        crop: tuple[int, int, int, int] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Volume-render (N, M, 25) render cameras into (N, M, C, h, w) images.

        ``crop`` = (top, left, height, width) renders only that window of the full image.
        Returns ``images_rgb`` (white background), ``images_depth`` and ``images_weight``.
        """
        if planes.shape[0] != cameras.shape[0] or cameras.shape[-1] != 25:
            raise ValueError(
                f"cameras must be (N, M, 25) with N = {planes.shape[0]}, got {tuple(cameras.shape)}"
            )
        n, m = cameras.shape[:2]
        origins, directions = rays_from_cameras(
            cameras[..., :16].reshape(n * m, 4, 4),
            cameras[..., 16:25].reshape(n * m, 3, 3),
            render_size,
        )
        height = width = render_size
        if crop is not None:
            top, left, height, width = crop
            grid = (n * m, render_size, render_size, 3)
            origins = origins.reshape(grid)[:, top : top + height, left : left + width]
            directions = directions.reshape(grid)[:, top : top + height, left : left + width]
            origins, directions = origins.reshape(n * m, -1, 3), directions.reshape(n * m, -1, 3)
        rgb, depth, weight = render_triplane_rays(
            lambda p, pts: self.raw_points(p, pts),
            planes.repeat_interleave(m, dim=0),
            origins,
            directions,
            self.options,
            generator,
        )

        def to_image(x: torch.Tensor) -> torch.Tensor:
            return x.permute(0, 2, 1).reshape(n, m, x.shape[-1], height, width)

        return {
            "images_rgb": to_image(rgb).contiguous(),
            "images_depth": to_image(depth),
            "images_weight": to_image(weight),
        }


class MeshDecoder(nn.Module):
    """Four heads on 3C point features: SDF, colour, vertex deformation, FlexiCubes weights."""

    def __init__(self, triplane_dim: int, hidden_dim: int = 64, num_layers: int = 4) -> None:
        super().__init__()
        features = 3 * triplane_dim
        self.net_sdf = relu_mlp(features, hidden_dim, 1, num_layers)
        self.net_rgb = relu_mlp(features, hidden_dim, 3, num_layers)
        self.net_deformation = relu_mlp(features, hidden_dim, 3, num_layers)
        self.net_weight = relu_mlp(8 * features, hidden_dim, 21, num_layers)

    def geometry(
        self, plane_features: torch.Tensor, cube_corners: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SDF (N, P, 1), raw deformation (N, P, 3), weights (N, K, 21) for K cubes.

        ``cube_corners`` (K, 8) indexes the P points at each cube's eight corners.
        """
        feats = concat_plane_features(plane_features)
        sdf = self.net_sdf(feats)
        deformation = self.net_deformation(feats)
        corner_feats = torch.index_select(feats, 1, cube_corners.reshape(-1))
        corner_feats = corner_feats.reshape(feats.shape[0], cube_corners.shape[0], -1)
        return sdf, deformation, self.net_weight(corner_feats) * 0.1

    def texture(self, plane_features: torch.Tensor) -> torch.Tensor:
        return widened_sigmoid(self.net_rgb(concat_plane_features(plane_features)))


class MeshSynthesizer(nn.Module):
    """Triplane fields for FlexiCubes: SDF, deformation, weights and colour at query points."""

    def __init__(self, cfg: VariantConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.box_warp = RenderOptions().box_warp
        self.decoder = MeshDecoder(cfg.triplane_dim, cfg.decoder_hidden_dim, cfg.decoder_num_layers)

    def geometry(
        self, planes: torch.Tensor, points: torch.Tensor, cube_corners: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Upstream ``get_geometry_prediction``: (sdf, raw deformation, weights * 0.1)."""
        features = sample_triplane(planes, points, self.box_warp)
        return self.decoder.geometry(features, cube_corners)

    def texture(self, planes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Colour (N, P, 3) at points (upstream ``get_texture_prediction``)."""
        return self.decoder.texture(sample_triplane(planes, points, self.box_warp))

    def forward_points(
        self, planes: torch.Tensor, points: torch.Tensor, chunk_size: int = DEFAULT_POINT_CHUNK
    ) -> dict[str, torch.Tensor]:
        """Per-point ``sdf`` (N, P, 1), raw ``deformation`` (N, P, 3) and ``rgb`` (N, P, 3)."""
        chunks = []
        for start in range(0, points.shape[1], chunk_size):
            feats = concat_plane_features(
                sample_triplane(planes, points[:, start : start + chunk_size], self.box_warp)
            )
            chunks.append(
                {
                    "sdf": self.decoder.net_sdf(feats),
                    "deformation": self.decoder.net_deformation(feats),
                    "rgb": widened_sigmoid(self.decoder.net_rgb(feats)),
                }
            )
        if not chunks:
            raise ValueError("forward_points needs at least one point")
        return {key: torch.cat([c[key] for c in chunks], dim=1) for key in chunks[0]}


def cube_lattice(grid_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(1, grid_size^3, 3) points of a regular lattice over [-1, 1]^3, x-major ('ij') order."""
    if grid_size < 2:
        raise ValueError(f"grid_size must be at least 2, got {grid_size}")
    axis = torch.linspace(-1.0, 1.0, grid_size, device=device)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)
    return grid.reshape(1, -1, 3)
