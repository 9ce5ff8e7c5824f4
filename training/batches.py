"""A collated :class:`instantmesh.lrm_data.Instantmesh32Dataset` batch -> model inputs and
supervision, as upstream InstantMesh's trainers prepare it (``prepare_batch_data`` of
``src/model.py`` for stage 1 and ``src/model_mesh.py`` for stage 2, TencentARC/InstantMesh).

Both stages:

- the input views are resized to ``input_size`` (bicubic, antialiased, clamped to [0, 1]);
- the encoder cameras are the dataset's ``input_cameras`` (top 3x4 of c2w + fx, fy, cx, cy)
  plus uniform noise in [-:data:`CAMERA_NOISE`, +:data:`CAMERA_NOISE`] on every component
  (upstream: ``cameras + torch.rand_like(cameras) * 0.04 - 0.02``);
- the supervised views are the inputs then the targets (images, alphas, depths; normals in
  stage 2), with their camera-to-world matrices and intrinsics.

Stage 1 (:func:`prepare_nerf_batch`) draws a full render size uniformly in
``[render_size, image size]`` (upstream ``np.random.randint(192, 513)`` on 512-px renders),
resizes the supervision to it (images bicubic + antialias, clamped; alphas and depths nearest)
and crops one random ``render_size`` square, the same window for every view and object (upstream
``v2.RandomCrop.get_params`` on the whole batch); the synthesizer renders only that window.
Stage 2 (:func:`prepare_mesh_batch`) resizes the supervision to ``render_size`` (normals bicubic,
not clamped, as upstream) and renders full images.

Every random draw comes from the ``generator`` argument (a CPU :class:`torch.Generator`), in a
fixed order (camera noise, then the render size, then the crop's top and left), so a step's
batch is reproducible from the generator's seed. Depths are planar (camera-axis) depth, the
target of upstream's stage-2 depth loss; stage 1 has no depth term.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

__all__ = [
    "CAMERA_NOISE",
    "PreparedBatch",
    "prepare_mesh_batch",
    "prepare_nerf_batch",
]

CAMERA_NOISE = 0.02
"""Half-width of the uniform noise on the encoder camera vectors (upstream ``src/model.py`` and
``src/model_mesh.py`` ``prepare_batch_data``: ``torch.rand_like(cameras) * 0.04 - 0.02``)."""


@dataclass
class PreparedBatch:
    """Model inputs and supervision of one training step.

    ``V = Vi + Vt`` supervised views (inputs then targets); ``h x w`` is the crop (stage 1) or
    ``render_size`` (stage 2).
    """

    images: torch.Tensor
    """(B, Vi, 3, S, S) input views resized to ``input_size``, [0, 1]."""
    cameras: torch.Tensor
    """(B, Vi, 16) encoder cameras with the uniform [-0.02, 0.02] noise."""
    render_c2ws: torch.Tensor
    """(B, V, 4, 4) camera-to-world (OpenGL axes), inputs then targets."""
    render_Ks: torch.Tensor
    """(B, V, 3, 3) normalised intrinsics."""
    render_size: int
    """Side of the full rendered image."""
    crop: tuple[int, int, int, int] | None
    """(top, left, height, width) of the supervised window; ``None``: the full image."""
    target_images: torch.Tensor
    """(B, V, 3, h, w) RGB on white, [0, 1]."""
    target_alphas: torch.Tensor
    """(B, V, 1, h, w) alpha (mask)."""
    target_depths: torch.Tensor
    """(B, V, 1, h, w) planar depth, 0 on background."""
    target_normals: torch.Tensor | None
    """(B, V, 3, h, w) world normals encoded ``(n + 1) / 2`` (stage 2); ``None`` in stage 1."""
    uids: list[str]

    @property
    def render_cameras(self) -> torch.Tensor:
        """(B, V, 25): c2w flattened (16) then K flattened (9), the NeRF synthesizer's cameras."""
        return torch.cat([self.render_c2ws.flatten(-2), self.render_Ks.flatten(-2)], dim=-1)

    @property
    def num_views(self) -> int:
        """Supervised views per object (inputs + targets)."""
        return int(self.render_c2ws.shape[1])

    def to(self, device: torch.device | str) -> PreparedBatch:
        """The same batch with every tensor on ``device``."""
        normals = self.target_normals
        return dataclasses.replace(
            self,
            images=self.images.to(device),
            cameras=self.cameras.to(device),
            render_c2ws=self.render_c2ws.to(device),
            render_Ks=self.render_Ks.to(device),
            target_images=self.target_images.to(device),
            target_alphas=self.target_alphas.to(device),
            target_depths=self.target_depths.to(device),
            target_normals=None if normals is None else normals.to(device),
        )


def _resize(x: torch.Tensor, size: int, mode: InterpolationMode) -> torch.Tensor:
    """Resize the last two dims to ``size`` x ``size`` (torchvision's resize, as upstream)."""
    return tvf.resize(x, [size, size], interpolation=mode, antialias=True)


def _bicubic(x: torch.Tensor, size: int) -> torch.Tensor:
    return _resize(x, size, InterpolationMode.BICUBIC)


def _nearest(x: torch.Tensor, size: int) -> torch.Tensor:
    return _resize(x, size, InterpolationMode.NEAREST)


def _views(batch: Mapping[str, Any], name: str) -> torch.Tensor:
    """Inputs then targets of ``name`` (B, Vi + Vt, ...)."""
    return torch.cat([batch[f"input_{name}"], batch[f"target_{name}"]], dim=1)


def _image_size(batch: Mapping[str, Any]) -> int:
    height, width = (int(s) for s in batch["input_images"].shape[-2:])
    target = tuple(int(s) for s in batch["target_images"].shape[-2:])
    if height != width or target != (height, width):
        raise ValueError(
            f"training views must be square and of one size, got inputs {height}x{width} and "
            f"targets {target[0]}x{target[1]}"
        )
    return height


def _check_sizes(input_size: int, render_size: int) -> None:
    if input_size < 1 or render_size < 1:
        raise ValueError(
            f"input_size and render_size must be positive, got {input_size} / {render_size}"
        )


def _inputs(
    batch: Mapping[str, Any], input_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resized input views and noisy encoder cameras (the first draw from ``generator``)."""
    images = _bicubic(batch["input_images"], input_size).clamp(0.0, 1.0)
    cameras = batch["input_cameras"]
    noise = torch.rand(cameras.shape, generator=generator, dtype=cameras.dtype)
    return images, cameras + noise.to(cameras.device) * (2 * CAMERA_NOISE) - CAMERA_NOISE


def _uids(batch: Mapping[str, Any]) -> list[str]:
    uids = batch["uid"]
    return [uids] if isinstance(uids, str) else [str(u) for u in uids]


def prepare_nerf_batch(
    batch: Mapping[str, Any], *, input_size: int, render_size: int, generator: torch.Generator
) -> PreparedBatch:
    """Stage 1 (NeRF): inputs, noisy cameras and one random ``render_size`` crop of the
    supervision resized to a random full size in ``[render_size, image size]``.

    ``batch``: a default-collated batch of :class:`~instantmesh.lrm_data.Instantmesh32Dataset`
    items. Raises ``ValueError`` when the views are smaller than ``render_size``.
    """
    _check_sizes(input_size, render_size)
    image_size = _image_size(batch)
    if image_size < render_size:
        raise ValueError(
            f"training views are {image_size}x{image_size} px, smaller than the NeRF stage's "
            f"render_size {render_size}: render the data at >= {render_size} px or lower "
            "render_size"
        )
    images, cameras = _inputs(batch, input_size, generator)
    full = int(torch.randint(render_size, image_size + 1, (1,), generator=generator))
    span = full - render_size + 1
    top = int(torch.randint(0, span, (1,), generator=generator))
    left = int(torch.randint(0, span, (1,), generator=generator))
    window = (slice(top, top + render_size), slice(left, left + render_size))

    def crop(x: torch.Tensor) -> torch.Tensor:
        return x[..., window[0], window[1]]

    return PreparedBatch(
        images=images,
        cameras=cameras,
        render_c2ws=_views(batch, "c2ws"),
        render_Ks=_views(batch, "Ks"),
        render_size=full,
        crop=(top, left, render_size, render_size),
        target_images=crop(_bicubic(_views(batch, "images"), full).clamp(0.0, 1.0)),
        target_alphas=crop(_nearest(_views(batch, "alphas"), full)),
        target_depths=crop(_nearest(_views(batch, "depths"), full)),
        target_normals=None,
        uids=_uids(batch),
    )


def prepare_mesh_batch(
    batch: Mapping[str, Any], *, input_size: int, render_size: int, generator: torch.Generator
) -> PreparedBatch:
    """Stage 2 (mesh): inputs, noisy cameras and the full supervision (normals included)
    resized to ``render_size``; ``crop`` is ``None``.

    ``batch``: a default-collated batch of :class:`~instantmesh.lrm_data.Instantmesh32Dataset`
    items.
    """
    _check_sizes(input_size, render_size)
    _image_size(batch)
    images, cameras = _inputs(batch, input_size, generator)
    return PreparedBatch(
        images=images,
        cameras=cameras,
        render_c2ws=_views(batch, "c2ws"),
        render_Ks=_views(batch, "Ks"),
        render_size=render_size,
        crop=None,
        target_images=_bicubic(_views(batch, "images"), render_size).clamp(0.0, 1.0),
        target_alphas=_nearest(_views(batch, "alphas"), render_size),
        target_depths=_nearest(_views(batch, "depths"), render_size),
        target_normals=_bicubic(_views(batch, "normals"), render_size),
        uids=_uids(batch),
    )
