"""Loss terms of both training stages, with upstream InstantMesh's weights.

Sources (TencentARC/InstantMesh): stage 1 ``src/model.py`` ``MVRecon.compute_loss``, stage 2
``src/model_mesh.py`` ``MVRecon.compute_loss`` and ``sdf_reg_loss_batch``, the FlexiCubes
regularisers returned by ``src/models/lrm_mesh.py`` ``get_geometry_prediction``. Every term is
returned already weighted, keyed ``loss_<name>`` as upstream logs it; :func:`step_output` sums
them into the loss to back-propagate.

Stage 1: ``loss_mse`` + ``loss_lpips`` + ``loss_mask``. Stage 2 adds ``loss_depth``,
``loss_normal``, ``loss_reg_sdf``, ``loss_reg_surface`` and ``loss_reg_weights``. Upstream's
fourth regulariser (``abs(sdf).mean()`` of empty shapes, ``sdf_reg_loss[0]``) is computed but
discarded by its ``compute_loss`` (``_, surface_reg, weights_reg = sdf_reg_loss``): not a term.

LPIPS: upstream uses torchmetrics' ``LearnedPerceptualImagePatchSimilarity(net_type='vgg')``
(inputs in [-1, 1], mean over the batch). Ours is the ``lpips`` package's VGG-16 LPIPS
(:func:`evaluation.metrics.load_lpips`): the same ImageNet VGG-16 trunk and the same linear
calibration layers (torchmetrics ships the ``lpips`` package's ``vgg.pth``), on [-1, 1] inputs,
averaged over the images by :func:`image_terms`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from evaluation.metrics import load_lpips
from training.step_output import StepOutput

__all__ = [
    "DEPTH_WEIGHT",
    "LPIPS_WEIGHT",
    "MASK_WEIGHT",
    "MESH_TERMS",
    "MSE_WEIGHT",
    "NERF_TERMS",
    "NORMAL_WEIGHT",
    "SDF_ENTROPY_WEIGHT",
    "SURFACE_REG_WEIGHT",
    "WEIGHTS_REG_WEIGHT",
    "LpipsLoss",
    "depth_term",
    "image_terms",
    "load_lpips_loss",
    "normal_term",
    "sdf_entropy_term",
    "step_output",
    "surface_reg_term",
    "weights_reg_term",
]

MSE_WEIGHT = 1.0
"""``loss_mse = F.mse_loss(render * 2 - 1, target * 2 - 1)`` (src/model.py and
src/model_mesh.py ``compute_loss``: images mapped to [-1, 1], unweighted)."""
LPIPS_WEIGHT = 2.0
"""``loss_lpips = 2.0 * self.lpips(render, target)`` (both ``compute_loss``)."""
MASK_WEIGHT = 1.0
"""``loss_mask = F.mse_loss(render_alphas, target_alphas)`` (both ``compute_loss``)."""
DEPTH_WEIGHT = 0.5
"""``loss_depth = 0.5 * F.l1_loss(depth[alpha > 0], target[alpha > 0])`` (src/model_mesh.py)."""
NORMAL_WEIGHT = 0.2
"""``loss_normal = 0.2 * (1 - |cos|[alpha > 0].mean())`` (src/model_mesh.py)."""
SDF_ENTROPY_WEIGHT = 0.01
"""``sdf_reg_loss_batch(sdf, all_edges).mean() * 0.01`` (src/model_mesh.py)."""
SURFACE_REG_WEIGHT = 0.5
"""``flexicubes_surface_reg.mean() * 0.5``: FlexiCubes' L_dev (src/model_mesh.py)."""
WEIGHTS_REG_WEIGHT = 0.1
"""``flexicubes_weights_reg.mean() * 0.1`` with ``(weight ** 2).mean()`` (src/model_mesh.py,
src/models/lrm_mesh.py)."""

NERF_TERMS: tuple[str, ...] = ("loss_mse", "loss_lpips", "loss_mask")
"""Weighted terms of stage 1 (``StepOutput.terms`` adds ``loss``)."""
MESH_TERMS: tuple[str, ...] = (
    *NERF_TERMS,
    "loss_depth",
    "loss_normal",
    "loss_reg_sdf",
    "loss_reg_surface",
    "loss_reg_weights",
)
"""Weighted terms of stage 2 (``StepOutput.terms`` adds ``loss``)."""


class LpipsLoss(nn.Module):
    """LPIPS as a loss: frozen weights, always in eval mode, gradients flow to the inputs.

    ``forward(x, y)`` takes two (N, 3, H, W) images in [-1, 1] and returns the per-image
    distance (N,).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LpipsLoss:
        """Stays in eval mode (LPIPS' dropout layers must stay off); ``mode`` is ignored."""
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"LPIPS needs two (N, 3, H, W) images of one shape, got {tuple(x.shape)} and "
                f"{tuple(y.shape)}"
            )
        return self.model(x, y).reshape(x.shape[0])


def load_lpips_loss(net: str, device: torch.device | str) -> LpipsLoss:
    """The LPIPS loss with backbone ``net`` on ``device``: a private copy of
    :func:`evaluation.metrics.load_lpips`'s model (whose weights are read from disk only), so
    training never shares or changes the evaluation's cached instance.

    Raises :class:`evaluation.metrics.LpipsUnavailable` (with the install hint) when the
    backbone's weights are not on disk. ``net="random"``: a random trunk, wiring tests only.
    """
    return LpipsLoss(copy.deepcopy(load_lpips(net, device)))


def _check_same(name: str, pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"{name}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ"
        )


def _flat_views(x: torch.Tensor) -> torch.Tensor:
    """(B, V, C, H, W) -> (B * V, C, H, W)."""
    if x.dim() != 5:
        raise ValueError(f"expected (B, V, C, H, W) images, got {tuple(x.shape)}")
    return x.flatten(0, 1)


def image_terms(
    pred_rgb: torch.Tensor,
    target_rgb: torch.Tensor,
    pred_alpha: torch.Tensor,
    target_alpha: torch.Tensor,
    lpips: nn.Module,
) -> dict[str, torch.Tensor]:
    """``loss_mse``, ``loss_lpips`` and ``loss_mask`` (weighted) of (B, V, 3, h, w) colours
    and (B, V, 1, h, w) alphas, all in [0, 1]. The colours are mapped to [-1, 1] for the MSE
    and LPIPS (so the MSE is 4x the [0, 1] MSE); LPIPS is averaged over the B * V images."""
    _check_same("rgb", pred_rgb, target_rgb)
    _check_same("alpha", pred_alpha, target_alpha)
    pred = _flat_views(pred_rgb) * 2.0 - 1.0
    target = _flat_views(target_rgb).to(pred) * 2.0 - 1.0
    return {
        "loss_mse": MSE_WEIGHT * F.mse_loss(pred, target),
        "loss_lpips": LPIPS_WEIGHT * lpips(pred, target).mean(),
        "loss_mask": MASK_WEIGHT * F.mse_loss(pred_alpha, target_alpha.to(pred_alpha)),
    }


def _zero(like: torch.Tensor) -> torch.Tensor:
    """0 attached to ``like``'s graph (a term with nothing to supervise)."""
    return like.sum() * 0.0


def depth_term(
    pred_depth: torch.Tensor, target_depth: torch.Tensor, target_alpha: torch.Tensor
) -> torch.Tensor:
    """``loss_depth``: 0.5 x L1 between (B, V, 1, h, w) depths where the target alpha > 0.

    Upstream's ``F.l1_loss`` over no pixels is NaN; with no foreground pixel the term is 0.
    """
    _check_same("depth", pred_depth, target_depth)
    _check_same("depth mask", pred_depth, target_alpha)
    mask = target_alpha > 0
    if not bool(mask.any()):
        return _zero(pred_depth)
    return DEPTH_WEIGHT * F.l1_loss(pred_depth[mask], target_depth.to(pred_depth)[mask])


def normal_term(
    pred_normal: torch.Tensor, target_normal: torch.Tensor, target_alpha: torch.Tensor
) -> torch.Tensor:
    """``loss_normal``: 0.2 x (1 - mean |cos|) over pixels whose target alpha > 0.

    (B, V, 3, h, w) normals encoded ``(n + 1) / 2`` are decoded ``2 x - 1``; the "cosine" is
    upstream's plain dot product of the decoded vectors (not re-normalised), its absolute value
    so a flipped face costs nothing. (B, V, 1, h, w) alpha. No foreground pixel: 0.
    """
    _check_same("normal", pred_normal, target_normal)
    if target_alpha.shape != (*pred_normal.shape[:-3], 1, *pred_normal.shape[-2:]):
        raise ValueError(
            f"normal mask: alpha {tuple(target_alpha.shape)} does not match the normals "
            f"{tuple(pred_normal.shape)}"
        )
    pred = pred_normal * 2.0 - 1.0
    target = target_normal.to(pred) * 2.0 - 1.0
    similarity = (pred * target).sum(dim=-3).abs()
    mask = target_alpha.squeeze(-3) > 0
    if not bool(mask.any()):
        return _zero(pred_normal)
    return NORMAL_WEIGHT * (1.0 - similarity[mask].mean())


def sdf_entropy_term(sdf: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """``loss_reg_sdf``: 0.01 x the SDF sign entropy over grid edges with a sign change.

    ``sdf`` (B, N) (or (B, N, 1)) at the grid vertices, ``edges`` (E, 2) vertex indices. For
    every edge (a, b) of every object whose ``sign(sdf)`` differ: ``BCE_logits(sdf_a, sdf_b >
    0)`` and ``BCE_logits(sdf_b, sdf_a > 0)``, each averaged over those edges of the whole
    batch, summed (upstream ``sdf_reg_loss_batch``). No sign change anywhere: 0.
    """
    if sdf.dim() == 3 and sdf.shape[-1] == 1:
        sdf = sdf.squeeze(-1)
    if sdf.dim() != 2 or edges.dim() != 2 or edges.shape[-1] != 2:
        raise ValueError(
            f"need sdf (B, N) and edges (E, 2), got {tuple(sdf.shape)} and {tuple(edges.shape)}"
        )
    pairs = sdf[:, edges.reshape(-1)].reshape(sdf.shape[0], -1, 2)
    pairs = pairs[torch.sign(pairs[..., 0]) != torch.sign(pairs[..., 1])]
    if pairs.shape[0] == 0:
        return _zero(sdf)
    a, b = pairs[:, 0], pairs[:, 1]
    entropy = F.binary_cross_entropy_with_logits(
        a, (b > 0).to(a)
    ) + F.binary_cross_entropy_with_logits(b, (a > 0).to(b))
    return SDF_ENTROPY_WEIGHT * entropy


def surface_reg_term(l_dev: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """``loss_reg_surface``: 0.5 x the mean of FlexiCubes' L_dev (a tensor, or one tensor per
    object: concatenated first, as upstream ``torch.cat(surface_reg_list).mean()``)."""
    if not isinstance(l_dev, torch.Tensor):
        l_dev = torch.cat([t.reshape(-1) for t in l_dev])
    if l_dev.numel() == 0:
        raise ValueError("surface_reg_term: L_dev is empty")
    return SURFACE_REG_WEIGHT * l_dev.mean()


def weights_reg_term(weights: torch.Tensor) -> torch.Tensor:
    """``loss_reg_weights``: 0.1 x mean(weights ** 2) of the FlexiCubes weights (B, K, 21)."""
    if weights.numel() == 0:
        raise ValueError("weights_reg_term: no weights")
    return WEIGHTS_REG_WEIGHT * (weights**2).mean()


def step_output(terms: Mapping[str, torch.Tensor], images: int) -> StepOutput:
    """Sum the weighted ``terms`` (scalars keyed ``loss_<name>``) into a :class:`StepOutput`:
    ``loss`` the tensor to back-propagate, ``terms`` every term and ``loss`` as floats."""
    if not terms:
        raise ValueError("step_output needs at least one term")
    for key, value in terms.items():
        if not key.startswith("loss_"):
            raise ValueError(f"loss terms are keyed 'loss_<name>', got {key!r}")
        if value.dim() != 0:
            raise ValueError(f"loss term {key!r} is not a scalar: shape {tuple(value.shape)}")
    keys = list(terms)
    values = [terms[k].float() for k in keys]
    loss = torch.stack(values).sum()
    floats: list[Any] = torch.stack([*values, loss]).detach().float().cpu().tolist()
    return StepOutput(
        loss=loss,
        terms={**dict(zip(keys, floats[:-1], strict=True)), "loss": floats[-1]},
        images=int(images),
    )
