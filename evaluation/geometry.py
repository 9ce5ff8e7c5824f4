"""3D metrics between a predicted and a ground-truth mesh: Chamfer Distance and F-Score.

Protocol (InstantMesh paper, section 4): bring both meshes into [-1, 1]^3, sample points
uniformly on each surface (16K by default), then compare the two point sets.

* **Normalisation** (``normalize``):
  ``"separate"`` (default) - each mesh on its own: translate the centre of its axis-aligned
  bounding box to the origin and scale uniformly so that the longest bounding-box side is 2
  (the paper's "re-position and re-scale both into [-1, 1]^3"). ``"joint"`` - one transform,
  computed from the GT mesh's bounding box, applied to both (keeps the prediction's scale and
  offset errors visible). ``"none"`` - use the coordinates as given. Bounding boxes use the
  vertices referenced by faces only. Axis conventions are *not* handled here: apply
  :mod:`evaluation.alignment` first.
* **Sampling**: our own area-weighted sampler (:func:`sample_surface`): faces drawn with
  probability proportional to their area, then a uniform point in the triangle (reflected
  barycentric coordinates). Deterministic per ``seed``: the prediction and the GT draw from two
  independent streams ``numpy.random.default_rng([seed, 0])`` and ``([seed, 1])``, so a mesh
  compared with itself yields two *different* samplings (Chamfer ~ sampling noise, not 0).
  Since normalisation is a similarity transform, sampling before or after it gives the same
  distribution; we sample first and transform the points.
* **Distances**: nearest neighbours with ``scipy.spatial.cKDTree``. ``distance="l2"``
  (Euclidean, default) or ``"l1"`` (Manhattan); ``squared=True`` squares each nearest-neighbour
  distance before averaging (the "squared L2 Chamfer" of many codebases).
* **Chamfer** with ``d(a, B) = min_b dist(a, b)``::

      acc  = mean_{p in P} d(p, G)      (prediction -> GT, "accuracy")
      comp = mean_{g in G} d(g, P)      (GT -> prediction, "completeness")
      chamfer = (acc + comp) / 2        reduction="mean" (default)
      chamfer = acc + comp              reduction="sum"

* **F-Score at threshold t** (on the unsquared distances of the chosen norm)::

      precision = |{p in P : d(p, G) < t}| / |P|
      recall    = |{g in G : d(g, P) < t}| / |G|
      fscore    = 2 * precision * recall / (precision + recall), and 0 when both are 0

  Keys are ``fscore@<t>``, ``precision@<t>``, ``recall@<t>`` with ``t`` written by
  ``format(t, "g")`` (0.2 -> ``"0.2"``, 0.05 -> ``"0.05"``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import trimesh
from scipy.spatial import cKDTree

__all__ = [
    "GeometryError",
    "bbox_normalization",
    "chamfer_fscore",
    "cpu_threads",
    "geometry_metrics",
    "sample_surface",
    "threshold_key",
    "validate_mesh",
]

FloatArray = npt.NDArray[np.float64]
Normalize = Literal["separate", "joint", "none"]
Distance = Literal["l2", "l1"]
Reduction = Literal["mean", "sum"]


class GeometryError(ValueError):
    """A mesh cannot be evaluated (empty, no faces, zero area, non-finite vertices, ...)."""


def cpu_threads() -> int:
    """Threads this process may use for its KD-tree queries: ``OMP_NUM_THREADS`` when set (Ray
    sets it to an actor's CPUs, so a 1-CPU worker uses one thread and W workers on W cores do
    not each start W threads), else every core the process may run on."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threshold_key(metric: str, t: float) -> str:
    """``threshold_key("fscore", 0.2) == "fscore@0.2"``."""
    return f"{metric}@{format(float(t), 'g')}"


def validate_mesh(mesh: Any, name: str) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """Return (vertices float64 Vx3, faces int64 Fx3) of a usable triangle mesh.

    Raises :class:`GeometryError` naming ``name`` when the object is not a ``trimesh.Trimesh``,
    has no vertices or faces, has face indices out of range, non-finite vertex coordinates, or
    zero total surface area.
    """
    if not isinstance(mesh, trimesh.Trimesh):
        raise GeometryError(
            f"{name} mesh: expected trimesh.Trimesh, got {type(mesh).__name__} "
            "(load scenes with force='mesh')"
        )
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if vertices.ndim != 2 or vertices.shape[0] == 0:
        raise GeometryError(f"{name} mesh is empty: it has no vertices")
    if faces.ndim != 2 or faces.shape[0] == 0:
        raise GeometryError(f"{name} mesh has no faces ({len(vertices)} vertices)")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise GeometryError(f"{name} mesh has face indices outside [0, {len(vertices)})")
    if not np.all(np.isfinite(vertices)):
        bad = int(np.count_nonzero(~np.isfinite(vertices).all(axis=1)))
        raise GeometryError(f"{name} mesh has {bad} vertices with NaN or infinite coordinates")
    if not _face_areas(vertices, faces).sum() > 0.0:
        raise GeometryError(f"{name} mesh has zero surface area ({len(faces)} degenerate faces)")
    return vertices, faces


def _face_areas(vertices: FloatArray, faces: npt.NDArray[np.int64]) -> FloatArray:
    tri = vertices[faces]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    return np.asarray(0.5 * np.linalg.norm(cross, axis=1), dtype=np.float64)


def sample_surface(
    vertices: npt.ArrayLike,
    faces: npt.ArrayLike,
    n_points: int,
    rng: np.random.Generator,
) -> FloatArray:
    """``n_points`` points uniformly distributed over the surface (area measure).

    A face is drawn with probability area / total area (inverse CDF on the cumulative areas),
    then a point ``a + u (b - a) + v (c - a)`` with ``u, v ~ U(0, 1)`` reflected to
    ``(1 - u, 1 - v)`` when ``u + v > 1``, which is uniform on the triangle.
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    if n_points <= 0:
        raise ValueError(f"n_points must be positive, got {n_points}")
    cum = np.cumsum(_face_areas(v, f))
    idx = np.searchsorted(cum, rng.random(n_points) * cum[-1], side="right")
    idx = np.minimum(idx, len(f) - 1)  # guards the u * total == total rounding edge
    uv = rng.random((n_points, 2))
    flip = uv.sum(axis=1) > 1.0
    uv[flip] = 1.0 - uv[flip]
    a, b, c = (v[f[idx, k]] for k in range(3))
    return np.asarray(a + uv[:, :1] * (b - a) + uv[:, 1:] * (c - a), dtype=np.float64)


def bbox_normalization(
    vertices: FloatArray, faces: npt.NDArray[np.int64]
) -> tuple[FloatArray, float]:
    """(centre, scale) with ``x' = (x - centre) * scale`` mapping the bounding box of the
    referenced vertices into [-1, 1]^3 with its longest side of length 2."""
    used = vertices[np.unique(faces)]
    lo, hi = used.min(axis=0), used.max(axis=0)
    extent = float((hi - lo).max())
    if not extent > 0.0:
        raise GeometryError("mesh bounding box has zero extent")
    return (lo + hi) / 2.0, 2.0 / extent


def chamfer_fscore(
    pred_points: npt.ArrayLike,
    gt_points: npt.ArrayLike,
    thresholds: Iterable[float] = (0.2,),
    *,
    distance: Distance = "l2",
    squared: bool = False,
    reduction: Reduction = "mean",
) -> dict[str, float]:
    """Chamfer and F-Score between two point sets (definitions in the module docstring).

    Besides ``chamfer`` and the per-threshold keys, returns the directional terms
    ``chamfer_pred_to_gt`` (accuracy) and ``chamfer_gt_to_pred`` (completeness), each already
    squared when ``squared=True``.
    """
    p = np.asarray(pred_points, dtype=np.float64)
    g = np.asarray(gt_points, dtype=np.float64)
    if distance not in ("l2", "l1"):
        raise ValueError(f"distance must be 'l2' or 'l1', got {distance!r}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    norm = 2 if distance == "l2" else 1
    threads = cpu_threads()
    d_pg, _ = cKDTree(g).query(p, k=1, p=norm, workers=threads)
    d_gp, _ = cKDTree(p).query(g, k=1, p=norm, workers=threads)
    d_pg = np.asarray(d_pg, dtype=np.float64)
    d_gp = np.asarray(d_gp, dtype=np.float64)
    power = 2 if squared else 1
    acc = float(np.mean(d_pg**power))
    comp = float(np.mean(d_gp**power))
    out = {
        "chamfer": (acc + comp) / 2.0 if reduction == "mean" else acc + comp,
        "chamfer_pred_to_gt": acc,
        "chamfer_gt_to_pred": comp,
    }
    for t in thresholds:
        if not t > 0:
            raise ValueError(f"F-Score thresholds must be positive, got {t}")
        precision = float(np.mean(d_pg < t))
        recall = float(np.mean(d_gp < t))
        denom = precision + recall
        out[threshold_key("fscore", t)] = 2.0 * precision * recall / denom if denom > 0 else 0.0
        out[threshold_key("precision", t)] = precision
        out[threshold_key("recall", t)] = recall
    return out


def geometry_metrics(
    pred_mesh: trimesh.Trimesh,
    gt_mesh: trimesh.Trimesh,
    n_points: int = 16000,
    thresholds: Sequence[float] = (0.2,),
    seed: int = 0,
    *,
    normalize: Normalize = "separate",
    distance: Distance = "l2",
    squared: bool = False,
    reduction: Reduction = "mean",
) -> dict[str, float]:
    """Chamfer Distance and F-Score@t between two meshes (definitions in the module docstring).

    Args:
        pred_mesh, gt_mesh: ``trimesh.Trimesh`` in a common axis convention.
        n_points: points sampled on each surface (paper: 16K).
        thresholds: F-Score thresholds in normalised units (paper: 0.2).
        seed: sampling seed; same seed, same numbers.
        normalize: ``"separate"`` (default), ``"joint"`` (GT's transform for both) or ``"none"``.
        distance, squared, reduction: Chamfer variant (default: mean of the two directional
            mean Euclidean distances).

    Returns:
        ``chamfer``, ``chamfer_pred_to_gt``, ``chamfer_gt_to_pred`` and, per threshold t,
        ``fscore@t``, ``precision@t``, ``recall@t``.

    Raises:
        GeometryError: a mesh is unusable; the message names ``pred`` or ``gt``.
    """
    pv, pf = validate_mesh(pred_mesh, "pred")
    gv, gf = validate_mesh(gt_mesh, "gt")
    pred_pts = sample_surface(pv, pf, n_points, np.random.default_rng([seed, 0]))
    gt_pts = sample_surface(gv, gf, n_points, np.random.default_rng([seed, 1]))
    if normalize == "separate":
        pc, ps = bbox_normalization(pv, pf)
        gc, gs = bbox_normalization(gv, gf)
        pred_pts = (pred_pts - pc) * ps
        gt_pts = (gt_pts - gc) * gs
    elif normalize == "joint":
        gc, gs = bbox_normalization(gv, gf)
        pred_pts = (pred_pts - gc) * gs
        gt_pts = (gt_pts - gc) * gs
    elif normalize != "none":
        raise ValueError(f"normalize must be 'separate', 'joint' or 'none', got {normalize!r}")
    return chamfer_fscore(
        pred_pts, gt_pts, thresholds, distance=distance, squared=squared, reduction=reduction
    )
