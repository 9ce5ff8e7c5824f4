"""What one training step returns (both stages)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StepOutput:
    """The result of one forward pass and loss computation.

    ``loss`` is the scalar to back-propagate (weighted sum of the terms); ``terms`` holds every
    weighted term as a plain float, keyed ``loss_<name>`` (e.g. ``loss_mse``, ``loss_lpips``,
    ``loss_mask``; stage 2 adds ``loss_depth``, ``loss_normal``, ``loss_reg_sdf``,
    ``loss_reg_surface``, ``loss_reg_weights``) plus ``loss`` (the total); ``images`` is the
    number of supervised images (batch x rendered views).
    """

    loss: torch.Tensor
    terms: dict[str, float]
    images: int
