"""``training.losses``: every weighted term on tiny tensors against values derived by hand
(upstream InstantMesh ``compute_loss`` of ``src/model.py`` / ``src/model_mesh.py`` and
``sdf_reg_loss_batch``), the LPIPS loss module, and ``step_output``."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from evaluation import metrics
from evaluation.metrics import LpipsUnavailable, load_lpips
from training import losses
from training.losses import (
    MESH_TERMS,
    NERF_TERMS,
    LpipsLoss,
    depth_term,
    image_terms,
    load_lpips_loss,
    normal_term,
    sdf_entropy_term,
    step_output,
    surface_reg_term,
    weights_reg_term,
)


class MeanAbs(nn.Module):
    """Stand-in for LPIPS with a hand-computable value: mean |x - y| per image; records inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.seen += [x.detach(), y.detach()]
        return (x - y).abs().mean(dim=(1, 2, 3))


def value(t: torch.Tensor) -> float:
    return float(t.detach())


def softplus(x: float) -> float:
    """BCE-with-logits of logit x against label 0 (= of -x against label 1)."""
    return math.log1p(math.exp(x))


def test_weights_are_upstreams() -> None:
    assert (losses.MSE_WEIGHT, losses.LPIPS_WEIGHT, losses.MASK_WEIGHT) == (1.0, 2.0, 1.0)
    assert (losses.DEPTH_WEIGHT, losses.NORMAL_WEIGHT) == (0.5, 0.2)
    assert (
        losses.SDF_ENTROPY_WEIGHT,
        losses.SURFACE_REG_WEIGHT,
        losses.WEIGHTS_REG_WEIGHT,
    ) == (0.01, 0.5, 0.1)
    assert NERF_TERMS == ("loss_mse", "loss_lpips", "loss_mask")
    assert MESH_TERMS[:3] == NERF_TERMS and len(set(MESH_TERMS)) == 8


def test_image_terms_constant_images() -> None:
    shape = (2, 3, 3, 4, 4)  # B=2, V=3
    pred = torch.full(shape, 0.75, requires_grad=True)
    target = torch.full(shape, 0.25)
    pred_alpha = torch.full((2, 3, 1, 4, 4), 0.5)
    target_alpha = torch.ones(2, 3, 1, 4, 4)
    lpips = MeanAbs()
    terms = image_terms(pred, target, pred_alpha, target_alpha, lpips)
    assert set(terms) == set(NERF_TERMS)
    # [0, 1] difference 0.5 -> [-1, 1] difference 1.0: MSE 1.0 = 4 x the [0, 1] MSE (0.25)
    assert value(terms["loss_mse"]) == pytest.approx(1.0)
    # LPIPS stand-in sees images in [-1, 1], one row per view: 2.0 x mean |0.5 - (-0.5)|
    assert value(terms["loss_lpips"]) == pytest.approx(2.0)
    assert lpips.seen[0].shape == (6, 3, 4, 4)
    assert set(lpips.seen[0].unique().tolist()) == {0.5}
    assert set(lpips.seen[1].unique().tolist()) == {-0.5}
    assert value(terms["loss_mask"]) == pytest.approx(0.25)  # (0.5 - 1)^2
    terms["loss_mse"].backward()
    # d/dp mean((2p - 2t)^2) = 4 (2p - 2t) / n = 4 / n
    torch.testing.assert_close(pred.grad, torch.full(shape, 4.0 / pred.numel()))


def test_image_terms_half_the_pixels_wrong() -> None:
    pred = torch.ones(1, 1, 3, 2, 2)
    target = pred.clone()
    target[..., 0, :] = 0.0  # half the pixels: [-1, 1] difference 2 -> squared 4
    alpha = torch.zeros(1, 1, 1, 2, 2)
    terms = image_terms(pred, target, alpha, alpha, MeanAbs())
    assert value(terms["loss_mse"]) == pytest.approx(2.0)
    assert value(terms["loss_lpips"]) == pytest.approx(2.0 * 1.0)
    assert value(terms["loss_mask"]) == 0.0
    with pytest.raises(ValueError, match="rgb"):
        image_terms(pred, target[..., :1], alpha, alpha, MeanAbs())


def test_depth_term_counts_foreground_only() -> None:
    pred = torch.full((1, 2, 1, 2, 2), 2.0, requires_grad=True)
    alpha = torch.tensor([[1.0, 0.3], [0.0, 0.0]]).expand(1, 2, 1, 2, 2)
    target = torch.where(alpha > 0, 1.5, 0.0)
    term = depth_term(pred, target, alpha)
    # |2 - 1.5| on the 4 foreground pixels (alpha 0.3 counts: > 0); background |2 - 0| ignored
    assert value(term) == pytest.approx(0.5 * 0.5)
    term.backward()
    assert pred.grad is not None
    assert bool((pred.grad[alpha == 0] == 0).all()) and bool((pred.grad[alpha > 0] > 0).all())
    empty = depth_term(pred, target, torch.zeros_like(alpha))
    assert value(empty) == 0.0 and empty.requires_grad


def _encode(v: list[float]) -> list[float]:
    return [(x + 1) / 2 for x in v]


def test_normal_term_known_angles() -> None:
    up = _encode([0.0, 0.0, 1.0])
    s60, c60 = math.sin(math.radians(60)), math.cos(math.radians(60))
    # three pixels: 60 degrees off (cos 0.5), flipped (|cos| 1), background (anything)
    pred_px = [_encode([s60, 0.0, c60]), _encode([0.0, 0.0, -1.0]), _encode([1.0, 0.0, 0.0])]
    pred = torch.tensor(pred_px).T.reshape(1, 1, 3, 1, 3)
    target = torch.tensor([up, up, up]).T.reshape(1, 1, 3, 1, 3)
    alpha = torch.tensor([1.0, 1.0, 0.0]).reshape(1, 1, 1, 1, 3)
    # 0.2 x (1 - mean(0.5, 1.0)) = 0.05
    assert value(normal_term(pred, target, alpha)) == pytest.approx(0.05, abs=1e-6)
    # the background pixel (cos 0) would raise it to 0.2 x (1 - 0.5) = 0.1
    assert value(normal_term(pred, target, torch.ones_like(alpha))) == pytest.approx(0.1, abs=1e-6)
    assert value(normal_term(pred, target, torch.zeros_like(alpha))) == 0.0
    with pytest.raises(ValueError, match="normal mask"):
        normal_term(pred, target, alpha[..., :2])


def test_sdf_entropy_by_hand() -> None:
    edges = torch.tensor([[0, 1], [1, 2]])
    one = torch.tensor([[-2.0, 3.0, 1.0]], requires_grad=True)
    # edge (0, 1) changes sign: BCE(-2, label 1) + BCE(3, label 0); edge (1, 2) does not
    expected = 0.01 * (softplus(2.0) + softplus(3.0))
    assert value(sdf_entropy_term(one, edges)) == pytest.approx(expected, rel=1e-6)
    assert value(sdf_entropy_term(one[..., None], edges)) == pytest.approx(expected, rel=1e-6)
    # a batch: each BCE is averaged over the sign-changing edges of all objects, then summed
    two = torch.tensor([[-2.0, 3.0, 1.0], [0.5, -1.0, -4.0]])
    first = (softplus(2.0) + softplus(0.5)) / 2  # BCE(-2, 1), BCE(0.5, 0)
    second = (softplus(3.0) + softplus(1.0)) / 2  # BCE(3, 0), BCE(-1, 1)
    assert value(sdf_entropy_term(two, edges)) == pytest.approx(0.01 * (first + second))
    sdf_entropy_term(one, edges).backward()
    assert one.grad is not None and float(one.grad[0, 2]) == 0.0
    no_change = sdf_entropy_term(torch.tensor([[1.0, 2.0, 3.0]]), edges)
    assert value(no_change) == 0.0
    with pytest.raises(ValueError, match="edges"):
        sdf_entropy_term(one, edges.reshape(-1))


def test_flexicubes_regularisers() -> None:
    weights = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    assert value(weights_reg_term(weights)) == pytest.approx(0.1 * (1 + 4 + 9 + 16) / 4)
    # per-object L_dev lists are concatenated, then averaged (not a mean of means)
    parts = [torch.tensor([1.0, 2.0]), torch.tensor([3.0])]
    assert value(surface_reg_term(parts)) == pytest.approx(0.5 * 2.0)
    assert value(surface_reg_term(torch.tensor([1.0, 2.0, 3.0]))) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        surface_reg_term(torch.zeros(0))


def test_step_output_sums_terms() -> None:
    a = torch.tensor(2.0, requires_grad=True)
    out = step_output({"loss_mse": a * 0.5, "loss_mask": a**2}, images=6)
    assert out.terms == {"loss_mse": 1.0, "loss_mask": 4.0, "loss": 5.0}
    assert out.images == 6 and value(out.loss) == 5.0
    out.loss.backward()
    assert a.grad is not None and float(a.grad) == pytest.approx(0.5 + 2 * 2.0)
    for bad in ({"mse": a}, {"loss": a}, {"loss_mse": a.expand(2)}):
        with pytest.raises(ValueError):
            step_output(bad, images=1)


def _pair(size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 3, size, size, generator=gen) * 2 - 1
    return x, torch.rand(3, 3, size, size, generator=gen) * 2 - 1


def test_lpips_loss_is_the_metric_network_trainable_inputs() -> None:
    loss = load_lpips_loss("random", "cpu")
    assert isinstance(loss, LpipsLoss)
    cached = load_lpips("random", "cpu")
    assert loss.model is not cached  # a private copy
    x, y = _pair()
    x.requires_grad_(True)
    d = loss(x, y)
    assert d.shape == (3,)
    with torch.no_grad():
        torch.testing.assert_close(d.detach(), cached(x, y).reshape(3))
    assert float(loss(y, y).abs().max()) == 0.0
    d.sum().backward()
    assert (
        x.grad is not None and bool(torch.isfinite(x.grad).all()) and float(x.grad.abs().sum()) > 0
    )
    assert not any(p.requires_grad for p in loss.parameters())
    loss.train()
    assert not loss.training and not any(m.training for m in loss.modules())
    with pytest.raises(ValueError, match="LPIPS needs"):
        loss(x, y[:2])


def test_lpips_loss_without_backbone_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    metrics.clear_lpips_cache()
    try:
        hint = metrics.lpips_install_hint("vgg")
        with pytest.raises(LpipsUnavailable, match=re.escape(hint)):
            load_lpips_loss("vgg", "cpu")
    finally:
        metrics.clear_lpips_cache()
