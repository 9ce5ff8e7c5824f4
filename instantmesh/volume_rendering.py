"""Volume rendering of a triplane NeRF (EG3D-style two-pass importance renderer).

Follows upstream InstantMesh's renderer:
- rays through pixel centres of normalized-intrinsics cameras; the 4x4 camera-to-world is
  OpenGL style and is flipped to OpenCV (y, z negated) before lifting pixels;
- ray start/end from the ray's intersection with the [-1, 1]^3 box (rays that miss get the
  batch's smallest valid start and, as upstream does, its largest valid *start* as end);
- coarse pass: ``depth_resolution`` stratified samples (uniform jitter); fine pass:
  ``depth_resolution_importance`` samples drawn from the coarse weights (max-pool/avg-pool
  smoothed, + 0.01); samples outside the box get colour 0 and density ``-float_max / 3``;
- MipNeRF compositing on interval midpoints with ``softplus(sigma - 1)``, ``1e-10`` in the
  transmittance product, depth clamped to the sampled range and a white background.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

RawField = Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class RenderOptions:
    depth_resolution: int = 48
    depth_resolution_importance: int = 48
    box_warp: float = 2.0
    bbox_min: float = -1.0
    bbox_max: float = 1.0
    white_background: bool = True


def rays_from_cameras(
    cam2world: torch.Tensor, intrinsics: torch.Tensor, render_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray origins and unit directions, each (K, render_size^2, 3), row-major pixels."""
    dtype, device = cam2world.dtype, cam2world.device
    k = cam2world.shape[0]
    fx, fy = intrinsics[:, 0, 0, None], intrinsics[:, 1, 1, None]
    cx, cy = intrinsics[:, 0, 2, None], intrinsics[:, 1, 2, None]
    skew = intrinsics[:, 0, 1, None]
    rows, cols = torch.meshgrid(
        torch.arange(render_size, dtype=dtype, device=device),
        torch.arange(render_size, dtype=dtype, device=device),
        indexing="ij",
    )
    x_cam = (cols.reshape(1, -1) * (1.0 / render_size) + (0.5 / render_size)).expand(k, -1)
    y_cam = (rows.reshape(1, -1) * (1.0 / render_size) + (0.5 / render_size)).expand(k, -1)
    z_cam = torch.ones_like(x_cam)
    x_lift = (x_cam - cx + cy * skew / fy - skew * y_cam / fy) / fx * z_cam
    y_lift = (y_cam - cy) / fy * z_cam
    cam_points = torch.stack((x_lift, y_lift, z_cam, torch.ones_like(z_cam)), dim=-1)
    opencv_from_opengl = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=dtype))
    c2w = torch.bmm(cam2world, opencv_from_opengl.to(device).expand(k, 4, 4))
    world_points = torch.bmm(c2w, cam_points.permute(0, 2, 1)).permute(0, 2, 1)[..., :3]
    origins = cam2world[:, :3, 3]
    directions = F.normalize(world_points - origins[:, None, :], dim=2)
    return origins[:, None, :].expand_as(directions).contiguous(), directions


def ray_box_limits(
    origins: torch.Tensor, directions: torch.Tensor, box_side: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slab-method entry/exit distances (..., 1) for an origin-centred cube; misses get -1/-2."""
    shape = origins.shape[:-1]
    o = origins.detach().reshape(-1, 3)
    inv = 1 / directions.detach().reshape(-1, 3)
    half = box_side / 2
    near_bound = torch.where(inv < 0, half, -half).to(o.dtype)
    far_bound = -near_bound
    t_near = (near_bound - o) * inv
    t_far = (far_bound - o) * inv
    valid = torch.ones(o.shape[0], dtype=torch.bool, device=o.device)
    tmin, tmax = t_near[:, 0], t_far[:, 0]
    for axis in (1, 2):
        valid &= ~((tmin > t_far[:, axis]) | (t_near[:, axis] > tmax))
        tmin = torch.max(tmin, t_near[:, axis])
        tmax = torch.min(tmax, t_far[:, axis])
    tmin = torch.where(valid, tmin, torch.full_like(tmin, -1.0))
    tmax = torch.where(valid, tmax, torch.full_like(tmax, -2.0))
    return tmin.reshape(*shape, 1), tmax.reshape(*shape, 1)


def _uniform(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None):
    return torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device)


def stratified_depths(
    ray_start: torch.Tensor, ray_end: torch.Tensor, n: int, generator: torch.Generator | None
) -> torch.Tensor:
    """(K, R, 1) limits -> (K, R, n, 1) jittered evenly spaced depths.

    The jitter is drawn in (n, K, R, 1) order and then permuted, the memory order in which
    upstream's ``rand_like`` fills its permuted depth tensor, so seeded runs reproduce upstream.
    """
    steps = torch.arange(n, dtype=torch.float32, device=ray_start.device) / (n - 1)
    depths = ray_start[None] + steps.reshape(n, 1, 1, 1) * (ray_end - ray_start)[None]
    noise = _uniform(tuple(depths.shape), depths, generator)
    delta = (ray_end - ray_start) / (n - 1)
    return (depths + noise * delta[None]).permute(1, 2, 0, 3)


def composite(
    colors: torch.Tensor, densities: torch.Tensor, depths: torch.Tensor, white_background: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MipNeRF-style compositing over interval midpoints.

    colors (K, R, S, C), raw densities (K, R, S, 1), depths (K, R, S, 1) ->
    rgb (K, R, C), depth (K, R, 1), weights (K, R, S - 1, 1).
    """
    dtype = colors.dtype
    deltas = depths[:, :, 1:] - depths[:, :, :-1]
    colors_mid = (colors[:, :, :-1] + colors[:, :, 1:]) / 2
    densities_mid = (densities[:, :, :-1] + densities[:, :, 1:]) / 2
    depths_mid = (depths[:, :, :-1] + depths[:, :, 1:]) / 2
    densities_mid = F.softplus(densities_mid - 1).to(dtype)
    alpha = 1 - torch.exp(-densities_mid * deltas).to(dtype)
    transmittance = torch.cat([torch.ones_like(alpha[:, :, :1]), 1 - alpha + 1e-10], -2)
    weights = (alpha * torch.cumprod(transmittance, -2)[:, :, :-1]).to(dtype)
    rgb = torch.sum(weights * colors_mid, -2)
    depth = torch.nan_to_num(torch.sum(weights * depths_mid, -2), float("inf")).to(dtype)
    depth = torch.clamp(depth, torch.min(depths), torch.max(depths))
    if white_background:
        rgb = rgb + 1 - weights.sum(2)
    return rgb, depth, weights


def importance_depths(
    depths: torch.Tensor, weights: torch.Tensor, n: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Draw (K, R, n, 1) depths from the smoothed coarse weights (inverse-CDF sampling)."""
    with torch.no_grad():
        k, r, s, _ = depths.shape
        z = depths.reshape(k * r, s)
        w = weights.reshape(k * r, -1)
        w = F.max_pool1d(w.unsqueeze(1), 2, 1, padding=1)
        w = F.avg_pool1d(w, 2, 1).squeeze(1) + 0.01
        bins = 0.5 * (z[:, :-1] + z[:, 1:])
        return sample_pdf(bins, w[:, 1:-1], n, generator).detach().reshape(k, r, n, 1)


def sample_pdf(
    bins: torch.Tensor,
    weights: torch.Tensor,
    n: int,
    generator: torch.Generator | None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Inverse-transform sampling of ``n`` values per row from piecewise-constant ``weights``."""
    rows, n_bins = weights.shape
    weights = weights + eps
    pdf = weights / torch.sum(weights, -1, keepdim=True)
    cdf = torch.cumsum(pdf, -1)
    cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf], -1)
    u = _uniform((rows, n), cdf, generator).contiguous()
    idx = torch.searchsorted(cdf, u, right=True)
    pairs = torch.stack([torch.clamp_min(idx - 1, 0), torch.clamp_max(idx, n_bins)], -1)
    pairs = pairs.view(rows, 2 * n)
    cdf_g = torch.gather(cdf, 1, pairs).view(rows, n, 2)
    bins_g = torch.gather(bins, 1, pairs).view(rows, n, 2)
    denom = cdf_g[..., 1] - cdf_g[..., 0]
    denom = torch.where(denom < eps, torch.ones_like(denom), denom)
    return bins_g[..., 0] + (u - cdf_g[..., 0]) / denom * (bins_g[..., 1] - bins_g[..., 0])


def _shade_samples(
    field: RawField,
    planes: torch.Tensor,
    origins: torch.Tensor,
    directions: torch.Tensor,
    depths: torch.Tensor,
    options: RenderOptions,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Colours and raw densities at ray samples; samples outside the box are emptied."""
    k, r, s, _ = depths.shape
    points = (origins.unsqueeze(-2) + depths * directions.unsqueeze(-2)).reshape(k, -1, 3)
    inside = ((options.bbox_min <= points) & (points <= options.bbox_max)).all(-1, keepdim=True)
    out = field(planes, points)
    dtype = out["sigma"].dtype
    # float32 arithmetic, as upstream: nan_to_num(-inf) / 3.
    empty_density = torch.tensor(-torch.finfo(dtype).max, dtype=dtype, device=points.device) / 3
    colors = torch.where(inside, out["rgb"], torch.zeros_like(out["rgb"]))
    densities = torch.where(inside, out["sigma"], empty_density)
    return colors.reshape(k, r, s, -1), densities.reshape(k, r, s, 1)


def render_triplane_rays(
    field: RawField,
    planes: torch.Tensor,
    origins: torch.Tensor,
    directions: torch.Tensor,
    options: RenderOptions,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two-pass rendering of rays (K, R, 3) through per-ray-batch planes (K, 3, C, H, W).

    Returns rgb (K, R, 3), depth (K, R, 1) and accumulated opacity (K, R, 1).
    """
    ray_start, ray_end = ray_box_limits(origins, directions, options.box_warp)
    valid = ray_end > ray_start
    if bool(valid.any()):
        ray_start = torch.where(valid, ray_start, ray_start[valid].min())
        ray_end = torch.where(valid, ray_end, ray_start[valid].max())
    depths = stratified_depths(ray_start, ray_end, options.depth_resolution, generator)
    colors, densities = _shade_samples(field, planes, origins, directions, depths, options)
    if options.depth_resolution_importance > 0:
        _, _, weights = composite(colors, densities, depths, options.white_background)
        fine = importance_depths(depths, weights, options.depth_resolution_importance, generator)
        fine_colors, fine_densities = _shade_samples(
            field, planes, origins, directions, fine, options
        )
        depths = torch.cat([depths, fine], dim=-2)
        colors = torch.cat([colors, fine_colors], dim=-2)
        densities = torch.cat([densities, fine_densities], dim=-2)
        order = torch.sort(depths, dim=-2).indices
        depths = torch.gather(depths, -2, order)
        colors = torch.gather(colors, -2, order.expand(-1, -1, -1, colors.shape[-1]))
        densities = torch.gather(densities, -2, order)
    rgb, depth, weights = composite(colors, densities, depths, options.white_background)
    return rgb, depth, weights.sum(2)
