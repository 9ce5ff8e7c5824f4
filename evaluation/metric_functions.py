"""The compute side of the metric registry: one function per entry of
:data:`evaluation.metric_registry.METRICS`, with the signature of its scope, and the two loops
that evaluate every entry of a registry (``evaluation.evaluate_object`` calls them).

* **Per view** (``scope="view"``): ``fn(pred, gt, inputs) -> (N,) values``. ``pred`` and ``gt``
  are (N, H, W, 3) float64 batches in [0, 1], already composited on the evaluation background
  (``evaluation.metrics.composite``); ``inputs`` is a :class:`ViewInputs` (LPIPS backbone, torch
  device). A value that cannot be computed is NaN (LPIPS without a backbone); the run records
  store it as null unless the entry is ``required``.
* **Per object** (``scope="object"``): ``fn(inputs) -> float | None``. ``inputs`` is an
  :class:`ObjectInputs`: the prediction and the GT mesh in the GT's world frame, the protocol's
  settings, and the protocol geometry (16K surface samples, Chamfer / F-Score / precision /
  recall at the run's threshold: :attr:`ObjectInputs.geometry`; the best-alignment search:
  :attr:`ObjectInputs.aligned`) computed once, on first use, and shared by every entry. None
  means not computed (the ``optional`` aligned metrics of a run without ``--align search``).

Each function here is a thin call of the library implementation (``evaluation.metrics``,
``evaluation.geometry``, ``evaluation.alignment``); the values are those of
``evaluation.metrics.image_metrics`` and ``evaluation.geometry.geometry_metrics``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import trimesh

from evaluation.alignment import FRAMES, Frame
from evaluation.geometry import geometry_metrics, threshold_key
from evaluation.metric_registry import Metric

__all__ = [
    "ObjectInputs",
    "ViewInputs",
    "chamfer",
    "chamfer_aligned",
    "convention_frame_name",
    "fscore",
    "fscore_aligned",
    "lpips_views",
    "object_metric_values",
    "psnr_views",
    "ssim_views",
    "view_metric_values",
]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ViewInputs:
    """What a per-view metric function gets besides the two image batches."""

    lpips_net: str | None = None
    """LPIPS backbone (``evaluation.metrics.LPIPS_NETS``, or a ``random`` trunk for wiring
    tests); None: LPIPS is not computed (NaN)."""
    device: Any = None
    """Torch device of the metrics that run in torch (None: CUDA when visible, else CPU)."""
    lpips_batch_size: int | None = None
    """Images per LPIPS forward pass (None: ``evaluation.metrics.default_lpips_batch``)."""


def psnr_views(pred: FloatArray, gt: FloatArray, inputs: ViewInputs) -> FloatArray:
    """PSNR per view (``evaluation.metrics.psnr``)."""
    from evaluation.metrics import psnr

    return psnr(pred, gt)


def ssim_views(pred: FloatArray, gt: FloatArray, inputs: ViewInputs) -> FloatArray:
    """SSIM per view (``evaluation.metrics.ssim``; in torch on a CUDA device, as
    ``image_metrics`` does)."""
    from evaluation.metrics import ssim, ssim_device

    return ssim(pred, gt, ssim_device(inputs.device, inputs.lpips_net))


def lpips_views(pred: FloatArray, gt: FloatArray, inputs: ViewInputs) -> FloatArray:
    """LPIPS per view (``evaluation.metrics.lpips_distance``); NaN without a backbone."""
    if inputs.lpips_net is None:
        return np.full(len(pred), np.nan)
    from evaluation.metrics import default_lpips_batch, lpips_distance

    batch = inputs.lpips_batch_size or default_lpips_batch(inputs.device)
    return lpips_distance(pred, gt, inputs.lpips_net, inputs.device, batch)


def convention_frame_name(frame: str) -> Frame:
    """``frame`` checked against :data:`evaluation.alignment.FRAMES`."""
    for known in FRAMES:
        if frame == known:
            return known
    raise ValueError(f"unknown frame {frame!r}; expected one of {FRAMES}")


@dataclass(eq=False)
class ObjectInputs:
    """What a per-object metric function gets: the two meshes, the protocol's settings and the
    shared protocol geometry (computed on first use, once per object)."""

    pred: trimesh.Trimesh
    """The prediction in the GT's world frame (after the protocol alignment, and ICP if asked)."""
    gt: trimesh.Trimesh
    """The GT mesh in its world frame."""
    n_points: int = 16000
    fscore_threshold: float = 0.2
    seed: int = 0
    align: str = "protocol"
    """``protocol`` or ``search`` (also the best-aligned geometry: :attr:`aligned`)."""
    frame: str = "world"
    """The prediction's frame (``view`` also searches the pitch)."""

    def __post_init__(self) -> None:
        if self.align not in ("protocol", "search"):
            raise ValueError(f"align must be 'protocol' or 'search', got {self.align!r}")

    @functools.cached_property
    def geometry(self) -> dict[str, float]:
        """``evaluation.geometry.geometry_metrics`` of the two meshes at the run's threshold:
        ``chamfer``, ``fscore@t``, ``precision@t``, ``recall@t``, ..."""
        return geometry_metrics(
            self.pred,
            self.gt,
            n_points=self.n_points,
            thresholds=(self.fscore_threshold,),
            seed=self.seed,
        )

    @functools.cached_property
    def aligned(self) -> dict[str, Any] | None:
        """With ``align="search"``: the best-aligned ``chamfer`` and ``fscore`` and the
        alignment found (``transform``, ``yaw_deg``, ``pitch_deg``, ``scale``;
        ``evaluation.alignment.search_alignment``); None otherwise."""
        if self.align != "search":
            return None
        from evaluation.alignment import search_alignment
        from evaluation.geometry import chamfer_fscore

        frame = convention_frame_name(self.frame)
        found = search_alignment(self.pred, self.gt, frame, n_points=self.n_points, seed=self.seed)
        best = chamfer_fscore(found.pred_points, found.gt_points, (self.fscore_threshold,))
        return {
            "chamfer": best["chamfer"],
            "fscore": best[threshold_key("fscore", self.fscore_threshold)],
            "transform": found.transform.reshape(-1).tolist(),
            "yaw_deg": found.yaw_deg,
            "pitch_deg": found.pitch_deg,
            "scale": found.scale,
        }


def chamfer(inputs: ObjectInputs) -> float:
    """Chamfer Distance of the protocol geometry."""
    return inputs.geometry["chamfer"]


def fscore(inputs: ObjectInputs) -> float:
    """F-Score at the run's threshold of the protocol geometry."""
    return inputs.geometry[threshold_key("fscore", inputs.fscore_threshold)]


def chamfer_aligned(inputs: ObjectInputs) -> float | None:
    """Chamfer Distance after the best-alignment search (None without ``align="search"``)."""
    aligned = inputs.aligned
    return None if aligned is None else float(aligned["chamfer"])


def fscore_aligned(inputs: ObjectInputs) -> float | None:
    """F-Score after the best-alignment search (None without ``align="search"``)."""
    aligned = inputs.aligned
    return None if aligned is None else float(aligned["fscore"])


def view_metric_values(
    pred: FloatArray, gt: FloatArray, inputs: ViewInputs, metrics: Iterable[Metric]
) -> dict[str, FloatArray]:
    """``{name: (N,) float64 values}`` of every per-view entry of ``metrics`` (in their order)
    on two composited (N, H, W, 3) batches; a function returning another number of values is
    an error naming the metric."""
    if pred.shape != gt.shape or pred.ndim != 4 or pred.shape[-1] != 3:
        raise ValueError(
            f"per-view metrics need two (N, H, W, 3) batches of one shape, got {pred.shape} "
            f"and {gt.shape}"
        )
    out: dict[str, FloatArray] = {}
    for metric in metrics:
        if metric.scope != "view":
            continue
        values = np.asarray(metric.compute_function()(pred, gt, inputs), dtype=np.float64)
        if values.shape != (len(pred),):
            raise ValueError(
                f"metric {metric.name!r} returned values of shape {values.shape}, expected "
                f"({len(pred)},): one per view"
            )
        out[metric.name] = values
    return out


def object_metric_values(
    inputs: ObjectInputs, metrics: Iterable[Metric]
) -> dict[str, float | None]:
    """``{name: value}`` of every per-object entry of ``metrics`` (in their order); None where
    an entry was not computed."""
    out: dict[str, float | None] = {}
    for metric in metrics:
        if metric.scope != "object":
            continue
        value = metric.compute_function()(inputs)
        out[metric.name] = None if value is None else float(value)
    return out
