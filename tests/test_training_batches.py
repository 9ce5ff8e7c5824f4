"""``training.batches``: upstream InstantMesh's ``prepare_batch_data`` (``src/model.py`` stage 1,
``src/model_mesh.py`` stage 2) on hand-made collated batches: shapes and ranges, the bounded
seeded camera noise, the crop window and the pixels it holds (nearest resampling derived by hand),
the stage-2 resize, loud size errors, and a real ``Instantmesh32Dataset`` batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_lrm_data import renders  # noqa: F401  (module fixture: a rendered sphere)
from torch.utils.data import default_collate

from instantmesh.cameras import fov_to_intrinsics, spherical_camera_poses
from instantmesh.lrm_data import Instantmesh32Dataset, encoder_cameras, render_cameras
from instantmesh.volume_rendering import rays_from_cameras
from training.batches import CAMERA_NOISE, PreparedBatch, prepare_mesh_batch, prepare_nerf_batch

AZIMUTHS = (0.0, 120.0, 240.0, 60.0, 180.0, 300.0)
ELEVATIONS = (20.0, -10.0, 30.0, 0.0, 10.0, -20.0)
RADIUS, FOV = 2.5, 50.0


def collate(
    images: torch.Tensor,
    alphas: torch.Tensor,
    depths: torch.Tensor,
    normals: torch.Tensor,
    c2ws: torch.Tensor,
    n_in: int,
    uids: list[str],
) -> dict[str, Any]:
    """A default-collated ``Instantmesh32Dataset`` batch from (B, V, ...) views, inputs first."""
    batch, views = images.shape[:2]
    Ks = fov_to_intrinsics(FOV).expand(views, 3, 3)
    out: dict[str, Any] = {"uid": uids}
    for side, part in (("input", slice(0, n_in)), ("target", slice(n_in, None))):
        out[f"{side}_images"] = images[:, part]
        out[f"{side}_alphas"] = alphas[:, part]
        out[f"{side}_depths"] = depths[:, part]
        out[f"{side}_normals"] = normals[:, part]
        out[f"{side}_c2ws"] = c2ws[part].expand(batch, -1, 4, 4)
        out[f"{side}_Ks"] = Ks[part].expand(batch, -1, 3, 3)
    out["input_cameras"] = encoder_cameras(c2ws[:n_in], Ks[:n_in]).expand(batch, -1, 16)
    out["render_cameras"] = render_cameras(c2ws, Ks).expand(batch, -1, 25)
    return out


def random_batch(
    batch: int = 2, n_in: int = 2, n_target: int = 1, size: int = 32, seed: int = 0
) -> dict[str, Any]:
    """Random content: half the pixels foreground (colour, depth in [2, 3], normals), the rest
    white / 0; cameras on a sphere of radius 2.5 looking at the origin."""
    views = n_in + n_target
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, views, 1, size, size)
    alphas = (torch.rand(shape, generator=gen) > 0.5).float()
    images = torch.rand((batch, views, 3, size, size), generator=gen) * alphas + (1 - alphas)
    depths = (2.0 + torch.rand(shape, generator=gen)) * alphas
    normals = torch.rand((batch, views, 3, size, size), generator=gen) * alphas
    c2ws = spherical_camera_poses(AZIMUTHS[:views], ELEVATIONS[:views], RADIUS)
    return collate(images, alphas, depths, normals, c2ws, n_in, [f"obj{i}" for i in range(batch)])


def sphere_batch(
    size: int = 32, radius: float = 0.6, colour: tuple[float, float, float] = (0.9, 0.3, 0.1)
) -> dict[str, Any]:
    """One object, 2 inputs + 1 target: a sphere of one colour at the origin traced exactly
    (alpha = the ray hits it, planar depth of the hit, normal ``(n + 1) / 2``): targets a NeRF
    can fit, consistent across views."""
    views = 3
    c2ws = spherical_camera_poses(AZIMUTHS[:views], ELEVATIONS[:views], RADIUS)
    Ks = fov_to_intrinsics(FOV).expand(views, 3, 3).contiguous()
    origins, dirs = rays_from_cameras(c2ws, Ks, size)
    half_b = (origins * dirs).sum(-1)
    disc = half_b**2 - ((origins * origins).sum(-1) - radius**2)
    hit = disc > 0
    t = -half_b - disc.clamp_min(0).sqrt()
    forward = -c2ws[:, :3, 2]
    planar = torch.where(hit, t * (dirs * forward[:, None]).sum(-1), 0.0)
    points = origins + t[..., None] * dirs
    normal = torch.where(hit[..., None], (points / radius + 1) / 2, 0.0)

    def chw(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(1, views, size, size, -1).permute(0, 1, 4, 2, 3).contiguous()

    alphas = chw(hit.float()[..., None])
    images = torch.tensor(colour).reshape(1, 1, 3, 1, 1) * alphas + (1 - alphas)
    return collate(images, alphas, chw(planar[..., None]), chw(normal), c2ws, 2, ["sphere"])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _fields(p: PreparedBatch) -> dict[str, Any]:
    return {k: getattr(p, k) for k in PreparedBatch.__dataclass_fields__}


def _assert_same(a: PreparedBatch, b: PreparedBatch) -> None:
    for key, value in _fields(a).items():
        other = getattr(b, key)
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, other), key
        else:
            assert value == other, key


def test_nerf_batch_shapes_ranges_cameras() -> None:
    raw = random_batch(batch=2, n_in=2, n_target=1, size=32)
    p = prepare_nerf_batch(raw, input_size=24, render_size=16, generator=_gen(0))
    assert p.images.shape == (2, 2, 3, 24, 24)
    assert 0.0 <= float(p.images.min()) and float(p.images.max()) <= 1.0
    assert p.cameras.shape == (2, 2, 16)
    noise = p.cameras - raw["input_cameras"]
    # uniform in [-0.02, 0.02] on every component, independently drawn
    assert float(noise.abs().max()) <= CAMERA_NOISE + 1e-7
    assert float(noise.abs().max()) > CAMERA_NOISE / 2
    assert noise.unique().numel() == noise.numel()
    views = torch.cat([raw["input_c2ws"], raw["target_c2ws"]], dim=1)
    assert torch.equal(p.render_c2ws, views) and p.render_Ks.shape == (2, 3, 3, 3)
    assert torch.equal(p.render_cameras, raw["render_cameras"])
    assert p.num_views == 3 and p.uids == ["obj0", "obj1"]
    assert 16 <= p.render_size <= 32 and p.crop is not None
    top, left, h, w = p.crop
    assert (h, w) == (16, 16) and top >= 0 and left >= 0
    assert top + h <= p.render_size and left + w <= p.render_size
    assert p.target_images.shape == (2, 3, 3, 16, 16)
    assert p.target_alphas.shape == p.target_depths.shape == (2, 3, 1, 16, 16)
    assert p.target_normals is None
    assert 0.0 <= float(p.target_images.min()) and float(p.target_images.max()) <= 1.0
    # alphas and depths are resampled (nearest), never blended: only source values appear
    assert set(p.target_alphas.unique().tolist()) <= {0.0, 1.0}


def test_nerf_batch_is_seeded() -> None:
    raw = random_batch()
    a = prepare_nerf_batch(raw, input_size=24, render_size=16, generator=_gen(7))
    b = prepare_nerf_batch(raw, input_size=24, render_size=16, generator=_gen(7))
    _assert_same(a, b)
    c = prepare_nerf_batch(raw, input_size=24, render_size=16, generator=_gen(8))
    assert not torch.equal(a.cameras, c.cameras)
    # over seeds, the full size spans [render_size, image size] and every window fits
    draws = [
        prepare_nerf_batch(raw, input_size=8, render_size=16, generator=_gen(s)) for s in range(40)
    ]
    sizes = {d.render_size for d in draws}
    assert min(sizes) >= 16 and max(sizes) <= 32 and len(sizes) >= 8
    for d in draws:
        assert d.crop is not None
        top, left, h, w = d.crop
        assert 0 <= top <= d.render_size - h and 0 <= left <= d.render_size - w
    assert len({d.crop[:2] for d in draws if d.crop is not None}) > 10


def _code_image(batch: int, views: int, size: int) -> torch.Tensor:
    """(B, V, 1, S, S): every pixel holds its own number (view, row, column)."""
    codes = torch.arange(batch * views * size * size, dtype=torch.float32)
    return codes.reshape(batch, views, 1, size, size)


def _nearest_index(out_index: torch.Tensor, in_size: int, out_size: int) -> torch.Tensor:
    """torch's 'nearest' source pixel: floor(dst * scale), scale = in / out in float32."""
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    return torch.clamp((out_index.float() * scale).floor().long(), max=in_size - 1)


def test_nerf_crop_holds_the_expected_pixels() -> None:
    size, crop_size = 24, 12
    raw = random_batch(batch=1, n_in=2, n_target=2, size=size)
    codes = _code_image(1, 4, size)
    raw["input_depths"], raw["target_depths"] = codes[:, :2], codes[:, 2:]
    full_size_seen = False
    for seed in range(30):
        p = prepare_nerf_batch(raw, input_size=8, render_size=crop_size, generator=_gen(seed))
        assert p.crop is not None
        top, left, h, w = p.crop
        rows = _nearest_index(torch.arange(top, top + h), size, p.render_size)
        cols = _nearest_index(torch.arange(left, left + w), size, p.render_size)
        # the same window of every view, nearest pixels of the resized image
        assert torch.equal(p.target_depths, codes[..., rows[:, None], cols[None, :]])
        if p.render_size == size:  # no resize: the crop is a plain slice, colours too
            full_size_seen = True
            images = torch.cat([raw["input_images"], raw["target_images"]], dim=1)
            window = images[..., top : top + h, left : left + w]
            torch.testing.assert_close(p.target_images, window, atol=1e-6, rtol=0)
            assert torch.equal(p.target_depths, codes[..., top : top + h, left : left + w])
    assert full_size_seen


def test_nerf_batch_rejects_views_smaller_than_the_crop() -> None:
    raw = random_batch(size=16)
    with pytest.raises(ValueError, match=r"16x16 px.*render_size 32"):
        prepare_nerf_batch(raw, input_size=8, render_size=32, generator=_gen(0))
    raw["target_images"] = raw["target_images"][..., :8, :8]
    with pytest.raises(ValueError, match="square and of one size"):
        prepare_nerf_batch(raw, input_size=8, render_size=8, generator=_gen(0))


def test_constant_colour_survives_the_bicubic_resize() -> None:
    raw = random_batch(batch=1, size=32)
    for key in ("input_images", "target_images"):
        raw[key] = torch.full_like(raw[key], 0.25)
    p = prepare_nerf_batch(raw, input_size=20, render_size=16, generator=_gen(3))
    torch.testing.assert_close(p.images, torch.full_like(p.images, 0.25), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        p.target_images, torch.full_like(p.target_images, 0.25), atol=1e-6, rtol=0
    )


def test_mesh_batch_resizes_the_full_views() -> None:
    raw = random_batch(batch=2, n_in=2, n_target=2, size=32)
    codes = _code_image(2, 4, 32)
    raw["input_depths"], raw["target_depths"] = codes[:, :2], codes[:, 2:]
    p = prepare_mesh_batch(raw, input_size=24, render_size=16, generator=_gen(0))
    assert p.crop is None and p.render_size == 16
    assert p.images.shape == (2, 2, 3, 24, 24)
    assert float((p.cameras - raw["input_cameras"]).abs().max()) <= CAMERA_NOISE + 1e-7
    assert p.target_images.shape == (2, 4, 3, 16, 16)
    assert p.target_normals is not None and p.target_normals.shape == (2, 4, 3, 16, 16)
    # nearest at scale 2 takes every second pixel, starting at 0
    assert torch.equal(p.target_depths, codes[..., ::2, ::2])
    # same encoder-side draws as the NeRF stage from the same seed
    q = prepare_nerf_batch(raw, input_size=24, render_size=16, generator=_gen(0))
    assert torch.equal(p.cameras, q.cameras) and torch.equal(p.images, q.images)

    same = prepare_mesh_batch(raw, input_size=24, render_size=32, generator=_gen(0))
    for name in ("images", "alphas", "depths", "normals"):
        views = torch.cat([raw[f"input_{name}"], raw[f"target_{name}"]], dim=1)
        torch.testing.assert_close(getattr(same, f"target_{name}"), views, atol=1e-6, rtol=0)


def test_prepared_batch_moves_every_tensor() -> None:
    p = prepare_mesh_batch(random_batch(size=16), input_size=8, render_size=8, generator=_gen(0))
    moved = p.to("meta")
    for key, value in _fields(moved).items():
        if isinstance(value, torch.Tensor):
            assert value.device.type == "meta", key
            assert value.shape == getattr(p, key).shape
        else:
            assert value == getattr(p, key), key


def test_sphere_batch_is_a_sphere() -> None:
    """The helper the stage tests fit: silhouette area and depth range of a traced sphere."""
    raw = sphere_batch(size=32)
    alphas = torch.cat([raw["input_alphas"], raw["target_alphas"]], dim=1)
    depths = torch.cat([raw["input_depths"], raw["target_depths"]], dim=1)
    # disc of angular radius asin(0.6 / 2.5) in a 50-degree image: area fraction ~ 0.21
    fraction = float(alphas.mean())
    assert 0.18 < fraction < 0.24
    fg = depths[alphas > 0]
    assert float(fg.min()) >= 2.5 - 0.6 - 1e-4 and float(fg.max()) <= 2.5
    assert float(depths[alphas == 0].abs().max()) == 0.0


def test_real_dataset_batch(renders: Path) -> None:  # noqa: F811
    """A default-collated batch of ``Instantmesh32Dataset`` items (64-px renders)."""
    data = Instantmesh32Dataset(renders, total_view_n=10, input_view_num=2, target_view_num=1)
    raw = default_collate([data[0], data[1]])
    p = prepare_nerf_batch(raw, input_size=32, render_size=48, generator=_gen(0))
    assert p.images.shape == (2, 2, 3, 32, 32) and p.uids == list(raw["uid"])
    assert 48 <= p.render_size <= 64 and p.target_images.shape == (2, 3, 3, 48, 48)
    assert float((p.cameras - raw["input_cameras"]).abs().max()) <= CAMERA_NOISE + 1e-7
    assert torch.equal(p.render_cameras, raw["render_cameras"])
    m = prepare_mesh_batch(raw, input_size=32, render_size=32, generator=_gen(0))
    assert m.target_normals is not None and m.target_normals.shape == (2, 3, 3, 32, 32)
    # the sphere covers the middle of every view: alpha 1 at the centre pixel
    assert bool((m.target_alphas[..., 16, 16] == 1).all())
