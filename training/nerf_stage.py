"""Stage 1: train a NeRF variant on random crops (upstream InstantMesh ``src/model.py``,
``configs/instant-nerf-large-train.yaml``).

One step: triplanes from the noisy input views, volume rendering of the supervised window of
every view (inputs then targets, one view at a time as upstream's ``chunk_size=1``), colour and
opacity clamped to [0, 1], then ``loss_mse + 2.0 loss_lpips + 1.0 loss_mask``
(:func:`training.losses.image_terms`). With ``grad_checkpoint=True`` the triplane trunk and each
view's rendering are recomputed in the backward pass (``torch.utils.checkpoint``,
``use_reentrant=False``, as upstream's ``forward_lrm_generator``); the loss and the gradients
are the same as without it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from instantmesh.model import InstantNeRF
from instantmesh.synthesizer import NeRFSynthesizer
from training.batches import PreparedBatch
from training.losses import image_terms, step_output
from training.step_output import StepOutput

__all__ = ["nerf_step", "render_views"]


def _render_checkpointed(
    render: Callable[[torch.Tensor, torch.Tensor, torch.Generator], dict[str, torch.Tensor]],
    planes: torch.Tensor,
    cameras: torch.Tensor,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """``render(planes, cameras, g)`` under activation checkpointing.

    ``torch.utils.checkpoint`` restores the global RNGs for the recomputation, not an explicit
    generator: the samples are drawn from a copy of ``generator``'s state at the call, so the
    recomputation draws the same depths; ``generator`` is then advanced as a plain call would.
    """
    start = generator.get_state()
    ends: list[torch.Tensor] = []

    def run(p: torch.Tensor, c: torch.Tensor) -> dict[str, torch.Tensor]:
        local = torch.Generator(device=generator.device)
        local.set_state(start)
        out = render(p, c, local)
        ends.append(local.get_state())
        return out

    out: dict[str, torch.Tensor] = checkpoint(run, planes, cameras, use_reentrant=False)
    generator.set_state(ends[0])
    return out


def render_views(
    synthesizer: NeRFSynthesizer,
    planes: torch.Tensor,
    batch: PreparedBatch,
    generator: torch.Generator,
    *,
    grad_checkpoint: bool = False,
) -> dict[str, torch.Tensor]:
    """Render ``batch``'s views (window ``batch.crop`` of ``batch.render_size``) one view at a
    time: ``images_rgb`` (B, V, 3, h, w), ``images_depth`` and ``images_weight`` (B, V, 1, h, w),
    unclamped."""
    cameras = batch.render_cameras

    def render(p: torch.Tensor, c: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
        return synthesizer(p, c, batch.render_size, crop=batch.crop, generator=g)

    frames = []
    for view in range(cameras.shape[1]):
        one = cameras[:, view : view + 1]
        if grad_checkpoint:
            frames.append(_render_checkpointed(render, planes, one, generator))
        else:
            frames.append(render(planes, one, generator))
    return {key: torch.cat([f[key] for f in frames], dim=1) for key in frames[0]}


def nerf_step(
    model: InstantNeRF,
    batch: PreparedBatch,
    lpips: nn.Module,
    generator: torch.Generator,
    *,
    grad_checkpoint: bool = False,
) -> StepOutput:
    """Forward pass and stage-1 loss of ``batch`` (prepared by
    :func:`training.batches.prepare_nerf_batch`, on the model's device).

    ``lpips``: :func:`training.losses.load_lpips_loss`'s module. ``generator`` (on the model's
    device) draws the stratified and importance samples. Terms: ``loss_mse``, ``loss_lpips``,
    ``loss_mask`` and their sum ``loss``; ``images`` = B x V.
    """
    if not isinstance(model.synthesizer, NeRFSynthesizer):
        raise TypeError(
            f"nerf_step trains NeRF variants; {model.cfg.name!r} has a "
            f"{type(model.synthesizer).__name__}"
        )
    if grad_checkpoint:
        planes = checkpoint(model.forward_planes, batch.images, batch.cameras, use_reentrant=False)
    else:
        planes = model.forward_planes(batch.images, batch.cameras)
    out = render_views(model.synthesizer, planes, batch, generator, grad_checkpoint=grad_checkpoint)
    rgb = torch.clamp(out["images_rgb"], 0.0, 1.0)
    alpha = torch.clamp(out["images_weight"], 0.0, 1.0)
    terms = image_terms(rgb, batch.target_images, alpha, batch.target_alphas, lpips)
    return step_output(terms, images=rgb.shape[0] * rgb.shape[1])
