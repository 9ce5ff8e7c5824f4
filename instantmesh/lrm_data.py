"""LRM training data: the ``instantmesh32`` layout (``rendering_random_32views/<uid>/``) as the
upstream InstantMesh loader serves it, from object folders or tar shards.

Facts and conventions follow the upstream loader ``ObjaverseData`` in ``src/data/objaverse.py``
of TencentARC/InstantMesh (training configs ``configs/instant-nerf-large-train.yaml`` and
``configs/instant-mesh-large-train.yaml``: ``input_view_num 6``, ``target_view_num 4``,
``total_view_n 32``, ``fov 50``, ``camera_rotation true``); the code is ours. Per object and
epoch, :class:`Instantmesh32Dataset`:

- **samples views** as upstream: ``input_view_num + target_view_num`` distinct view indices
  drawn without replacement from ``total_view_n``; the first ``input_view_num`` are the inputs,
  the rest the targets, so **targets never include inputs** (upstream's trainer supervises on
  inputs + targets together: ``render_cameras`` below is that concatenation). Upstream draws
  from the unseeded global NumPy generator; here the draws come from a generator seeded by
  ``(seed, epoch, uid)``, so the same seed and epoch give the same views in any worker, on any
  rank, in any order;
- **images**: ``NNN.png`` (RGBA, straight alpha) composited on white,
  ``rgb * a + 1 * (1 - a)``, float32 in [0, 1]; **alphas** = the PNG's alpha / 255 (the mask);
- **depths**: metric planar depth (what the renders store, see ``rendering.cameras``):
  ``NNN_depth.png`` value / 255 * 6.0 (upstream) or, with ``depth="png16"``, the lossless
  companion ``NNN_depth16.png`` value / 65535 * 6.0; 0 on background;
- **normals**: ``NNN_normal.png`` RGB composited on black with its own alpha, decoded to
  ``2 x - 1``, L2-normalised, re-encoded ``(n + 1) / 2`` and multiplied by the image alpha
  (upstream's ``lerp(0, n, alpha)``): world-space normals in [0, 1], 0 on background;
- **cameras**: ``cameras.npz`` ``cam_poses`` (world-to-camera 3x4, OpenGL/Blender axes) padded
  to 4x4 and inverted to camera-to-world ``c2ws`` (camera looks down -Z, +Y up; upstream's ray
  sampler multiplies by ``diag(1, -1, -1, 1)`` to get OpenCV axes for its intrinsics). The
  intrinsics are upstream's **fixed** normalised ``K = [[f, 0, 0.5], [0, f, 0.5], [0, 0, 1]]``,
  ``f = 0.5 / tan(fov / 2)`` for ``fov`` = 50 deg, not read from the file: a ``cameras.npz``
  whose ``fov_deg`` disagrees raises rather than being silently mis-described. The camera
  radius is whatever was rendered (2.0 - 3.5), then augmented:
- **augmentation** (upstream, both on by default): ``camera_rotation`` rotates every ``c2w``
  about world +Z by one angle uniform in [0, 2 pi) and the normals with it; with probability
  ``scale_probability`` (0.5) the camera translations and depths are multiplied by one factor
  uniform in ``scale_range`` ([0.7, 1.1]).

Not done here (upstream does it in the trainer, ``src/model.py`` / ``src/model_mesh.py``
``prepare_batch_data``): resizing inputs to :data:`INPUT_IMAGE_SIZE` (320), resizing / random
cropping targets to the render size (:data:`NERF_RENDER_SIZE` 192, crop of a random resize in
[192, 512], for the NeRF stage; :data:`MESH_RENDER_SIZE` 512 for the mesh stage), and the
uniform [-0.02, 0.02] noise on the input camera vectors. Unlike upstream, a missing or
corrupt file is never replaced by another random object: it raises, or with
``on_error="skip"`` the object is left out and reported (``instantmesh.shard_reader``).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from instantmesh.cameras import fov_to_intrinsics
from instantmesh.shard_reader import (
    CorruptMemberError,
    OnError,
    Sample,
    SampleDataset,
    SplitMode,
    decode_npz,
    decode_png,
)
from rendering.output_layouts import DEPTH_PNG_MAX, LAYOUT_DIRS

LAYOUT = "instantmesh32"
IMAGE_DIR = LAYOUT_DIRS[LAYOUT]  # rendering_random_32views
INPUT_VIEW_NUM = 6
TARGET_VIEW_NUM = 4
TOTAL_VIEW_N = 32
FOV_DEG = 50.0
DEPTH_SCALE = DEPTH_PNG_MAX  # 6.0: upstream ``depth_scale``
SCALE_PROBABILITY = 0.5
SCALE_RANGE: tuple[float, float] = (0.7, 1.1)
INPUT_IMAGE_SIZE = 320
"""Trainer-side size of the input views (``input_size`` of both training configs)."""
NERF_RENDER_SIZE = 192
"""Trainer-side crop size of the targets in the NeRF stage (``render_size``)."""
MESH_RENDER_SIZE = 512
"""Trainer-side target size in the mesh stage (``render_size``)."""

VIEW_KEYS: tuple[str, ...] = ("images", "alphas", "depths", "normals", "c2ws", "Ks", "indices")
ITEM_KEYS: tuple[str, ...] = (
    "uid",
    *(f"{side}_{name}" for side in ("input", "target") for name in VIEW_KEYS),
    "input_cameras",
    "render_cameras",
    "rotation",
    "scale",
)
"""Keys of an item (see :class:`Instantmesh32Dataset`)."""
DepthSource = Literal["png8", "png16"]
"""Which depth PNG to read: the upstream 8-bit file or the lossless 16-bit companion."""


def _normals_unit(encoded: torch.Tensor) -> torch.Tensor:
    """(V, 3, H, W) normals in [0, 1] -> unit vectors (upstream: ``F.normalize(2 x - 1)``)."""
    return F.normalize(encoded * 2.0 - 1.0, dim=1)


def _normals_encoded(unit: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """Unit normals -> ``(n + 1) / 2`` scaled by alpha (upstream's ``lerp(0, n, alpha)``)."""
    return torch.lerp(torch.zeros_like(unit), (unit + 1.0) / 2.0, alphas)


def z_rotation(angle: float) -> torch.Tensor:
    """4x4 rotation by ``angle`` radians about world +Z (float32)."""
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor(
        [[c, -s, 0.0, 0.0], [s, c, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
        dtype=torch.float32,
    )


def encoder_cameras(c2ws: torch.Tensor, Ks: torch.Tensor) -> torch.Tensor:
    """(V, 4, 4) c2w + (V, 3, 3) normalised K -> (V, 16): the top 3x4 of c2w row-major, then
    fx, fy, cx, cy (the LRM encoder's camera vector, upstream ``prepare_batch_data``)."""
    k = Ks.flatten(-2)
    return torch.cat([c2ws.flatten(-2)[..., :12], k[..., [0, 4, 2, 5]]], dim=-1)


def render_cameras(c2ws: torch.Tensor, Ks: torch.Tensor) -> torch.Tensor:
    """(V, 4, 4) c2w + (V, 3, 3) K -> (V, 25): c2w flattened (16) then K flattened (9), the
    NeRF synthesizer's render cameras (the mesh stage passes ``inverse(c2w)`` instead)."""
    return torch.cat([c2ws.flatten(-2), Ks.flatten(-2)], dim=-1)


class Instantmesh32Dataset(SampleDataset):
    """``instantmesh32`` objects as LRM training items (the upstream loader's dict, plus
    provenance and the flattened camera vectors).

    ``source``: a shard folder / URL / list of shard URLs written by ``imesh shards``, or the
    render output root (or its ``rendering_random_32views`` folder); ``uids``, ``on_error``,
    ``rank``, ``world_size``, ``split``, ``shuffle``, ``seed``, ``storage_options``: see
    :class:`instantmesh.shard_reader.SampleDataset`. ``seed`` also seeds the per-object view
    sampling and augmentation (with the epoch and the uid). ``total_view_n``: views drawn from
    (``None``: every view in ``cameras.npz``; an object with fewer views raises).
    ``depth``: ``"png8"`` (upstream) or ``"png16"``.

    Item (``Vi = input_view_num``, ``Vt = target_view_num``, ``H x W`` the render size)::

        uid             str
        input_images    float32 (Vi, 3, H, W)  RGB on white, [0, 1]
        input_alphas    float32 (Vi, 1, H, W)  alpha (mask), [0, 1]
        input_depths    float32 (Vi, 1, H, W)  metric planar depth (x scale), 0 on background
        input_normals   float32 (Vi, 3, H, W)  world normals (rotated) as (n + 1) / 2, 0 on bg
        input_c2ws      float32 (Vi, 4, 4)     camera-to-world, OpenGL axes (rotated, scaled)
        input_Ks        float32 (Vi, 3, 3)     normalised intrinsics (fixed FOV)
        input_indices   int64   (Vi,)          view numbers (NNN of the files)
        target_*        the same with Vt views
        input_cameras   float32 (Vi, 16)       encoder camera vectors (no noise)
        render_cameras  float32 (Vi + Vt, 25)  inputs then targets: c2w (16) + K (9)
        rotation        float32 (4, 4)         the +Z rotation applied (identity when off)
        scale           float32 ()             the scale applied to translations and depths
    """

    layout = LAYOUT
    layout_dir = IMAGE_DIR
    marker_file = "cameras.npz"

    def __init__(
        self,
        source: str | os.PathLike[str] | Sequence[str],
        uids: Sequence[str] | None = None,
        *,
        input_view_num: int = INPUT_VIEW_NUM,
        target_view_num: int = TARGET_VIEW_NUM,
        total_view_n: int | None = TOTAL_VIEW_N,
        fov: float = FOV_DEG,
        camera_rotation: bool = True,
        scale_probability: float = SCALE_PROBABILITY,
        scale_range: tuple[float, float] = SCALE_RANGE,
        depth: DepthSource = "png8",
        on_error: OnError = "raise",
        rank: int | None = None,
        world_size: int | None = None,
        split: SplitMode = "auto",
        shuffle: bool = False,
        seed: int = 0,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        if input_view_num < 1 or target_view_num < 0:
            raise ValueError(
                f"need input_view_num >= 1 and target_view_num >= 0, got "
                f"{input_view_num} / {target_view_num}"
            )
        if total_view_n is not None and total_view_n < input_view_num + target_view_num:
            raise ValueError(
                f"total_view_n {total_view_n} < input_view_num + target_view_num "
                f"({input_view_num + target_view_num})"
            )
        if not 0.0 < fov < 180.0:
            raise ValueError(f"fov must be in (0, 180) degrees, got {fov}")
        if not 0.0 <= scale_probability <= 1.0:
            raise ValueError(f"scale_probability must be in [0, 1], got {scale_probability}")
        lo, hi = (float(v) for v in scale_range)
        if not 0.0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < lo <= hi, got {scale_range}")
        if depth not in ("png8", "png16"):
            raise ValueError(f"depth must be 'png8' or 'png16', got {depth!r}")
        super().__init__(
            source,
            uids,
            on_error=on_error,
            rank=rank,
            world_size=world_size,
            split=split,
            shuffle=shuffle,
            seed=seed,
            storage_options=storage_options,
        )
        self.input_view_num = int(input_view_num)
        self.target_view_num = int(target_view_num)
        self.total_view_n = total_view_n
        self.fov = float(fov)
        self.camera_rotation = bool(camera_rotation)
        self.scale_probability = float(scale_probability)
        self.scale_range = (lo, hi)
        self.depth = depth

    def rng(self, uid: str) -> np.random.Generator:
        """The generator of ``uid``'s draws this epoch (seeded by seed, epoch and uid)."""
        digest = hashlib.sha256(f"instantmesh32|{self.seed}|{self.epoch}|{uid}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def _poses(self, sample: Sample) -> np.ndarray:
        arrays = decode_npz(sample, "cameras.npz", ["cam_poses"], optional=["fov_deg"])
        poses = arrays["cam_poses"]
        if poses.ndim != 3 or poses.shape[1:] != (3, 4) or not np.isfinite(poses).all():
            raise CorruptMemberError(
                sample.uid,
                sample.where,
                "cameras.npz",
                f"cam_poses must be finite (N, 3, 4), got shape {poses.shape}",
            )
        fov = arrays.get("fov_deg")  # upstream-made files have none: the fixed FOV stands
        if fov is not None and not np.allclose(fov, self.fov, atol=1e-3):
            raise CorruptMemberError(
                sample.uid,
                sample.where,
                "cameras.npz",
                f"fov_deg {np.unique(fov).tolist()} but the dataset's fixed FOV is {self.fov}",
            )
        return poses

    def _view(
        self, sample: Sample, idx: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        stem = f"{idx:03d}"
        rgba = decode_png(sample, f"{stem}.png", ["RGBA"]).astype(np.float32) / 255.0
        alpha = rgba[..., 3:]
        image = rgba[..., :3] * alpha + 1.0 * (1.0 - alpha)
        nrm = decode_png(sample, f"{stem}_normal.png", ["RGBA"]).astype(np.float32) / 255.0
        normal = nrm[..., :3] * nrm[..., 3:]  # on black, with the normal map's own alpha
        if self.depth == "png8":
            name, top, modes = f"{stem}_depth.png", 255.0, ["L"]
        else:
            name, top, modes = f"{stem}_depth16.png", 65535.0, ["I;16", "I"]
        codes = decode_png(sample, name, modes)
        if codes.ndim != 2:
            raise CorruptMemberError(sample.uid, sample.where, name, "depth PNG is not one channel")
        depth = codes.astype(np.float64) / top * DEPTH_SCALE
        size = rgba.shape[:2]
        for member, arr in ((f"{stem}_normal.png", nrm), (name, codes)):
            if arr.shape[:2] != size:
                raise CorruptMemberError(
                    sample.uid,
                    sample.where,
                    member,
                    f"size {arr.shape[1]}x{arr.shape[0]}, the view is {size[1]}x{size[0]}",
                )

        def chw(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(2, 0, 1)

        return chw(image), chw(alpha), chw(depth[..., None]), chw(normal)

    def decode(self, sample: Sample) -> dict[str, Any]:
        poses = self._poses(sample)
        n_views = poses.shape[0]
        total = n_views if self.total_view_n is None else self.total_view_n
        if n_views < total:
            raise CorruptMemberError(
                sample.uid,
                sample.where,
                "cameras.npz",
                f"{n_views} views, the dataset samples from {total}",
            )
        rng = self.rng(sample.uid)
        n_in, n_tg = self.input_view_num, self.target_view_num
        indices = rng.choice(total, n_in + n_tg, replace=False)
        views = [self._view(sample, int(i)) for i in indices]
        sizes = {tuple(v[0].shape[1:]) for v in views}
        if len(sizes) > 1:
            raise CorruptMemberError(
                sample.uid,
                sample.where,
                f"{int(indices[0]):03d}.png",
                f"views differ in size: {sizes}",
            )
        images, alphas, depths, normals = (torch.stack(t) for t in zip(*views, strict=True))

        w2c = np.zeros((len(indices), 4, 4), dtype=np.float64)
        w2c[:, :3, :] = poses[indices]
        w2c[:, 3, 3] = 1.0
        c2ws = torch.from_numpy(np.linalg.inv(w2c)).float()

        unit = _normals_unit(normals)
        rotation = torch.eye(4)
        if self.camera_rotation:
            rotation = z_rotation(float(rng.uniform(0.0, 2.0 * math.pi)))
            c2ws = rotation @ c2ws
            v, _, h, w = unit.shape
            unit = F.normalize(
                (rotation[:3, :3] @ unit.reshape(v, 3, -1)).reshape(v, 3, h, w), dim=1
            )
        normals = _normals_encoded(unit, alphas)
        scale = 1.0
        if rng.random() < self.scale_probability:
            scale = float(rng.uniform(*self.scale_range))
            c2ws[:, :3, 3] *= scale
            depths = depths * scale

        Ks = fov_to_intrinsics(self.fov).unsqueeze(0).repeat(len(indices), 1, 1)
        item: dict[str, Any] = {"uid": sample.uid}
        for side, part in (("input", slice(0, n_in)), ("target", slice(n_in, None))):
            item[f"{side}_images"] = images[part]
            item[f"{side}_alphas"] = alphas[part]
            item[f"{side}_depths"] = depths[part]
            item[f"{side}_normals"] = normals[part]
            item[f"{side}_c2ws"] = c2ws[part]
            item[f"{side}_Ks"] = Ks[part]
            item[f"{side}_indices"] = torch.from_numpy(indices[part].astype(np.int64))
        item["input_cameras"] = encoder_cameras(c2ws[:n_in], Ks[:n_in])
        item["render_cameras"] = render_cameras(c2ws, Ks)
        item["rotation"] = rotation
        item["scale"] = torch.tensor(scale, dtype=torch.float32)
        return item


def project_points(points: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """World points (N, 3) -> normalised image coordinates (N, 2) (x right, y down, [0, 1]
    across the image) through a dataset camera: OpenGL ``c2w`` flipped to OpenCV axes, then
    the normalised ``K`` (what upstream's ray sampler inverts)."""
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=c2w.dtype))
    w2c_cv = torch.linalg.inv(c2w @ flip)
    cam = points @ w2c_cv[:3, :3].T + w2c_cv[:3, 3]
    uv = cam @ K.T
    return uv[:, :2] / uv[:, 2:3]
