"""The metric registry: one entry per reported metric, the single truth for every consumer.

Each :class:`Metric` entry says what its column is called in the run records, how tables label
and format it, which way is better, its unit, whether it is measured per view (image metrics:
one value per rendered view, averaged per object) or per object (geometry metrics), and the
default tolerance of ``imesh compare``. From the entries are derived:

* the metric columns of the run records (``evaluation.run_records``: per-view entries become
  ``image_metrics.parquet`` columns, per-object entries ``geometry_metrics.parquet`` columns,
  float64, nullable unless ``required``),
* the columns, arrows, number formats and best-value direction of the summary tables
  (``evaluation.tables``) and the HTML report (``evaluation.html_report``),
* the sign that orients ``compare`` deltas so that positive = better, and its default
  ``max_drop`` thresholds (``evaluation.compare``; the packaged
  ``evaluation/data/default_thresholds.yaml`` is generated from these entries and tested equal).

* the metrics ``imesh evaluate`` / ``imesh benchmark`` compute, and the columns of their stage
  results (``pipelines.benchmark``: one loop over the entries, each calling its ``compute``).

Adding a metric is one function and one entry: write its compute function with the signature
of its scope (``evaluation.metric_functions``: per view ``fn(pred, gt, inputs) -> (N,) values``
on the composited image batches; per object ``fn(inputs) -> float | None`` on the two meshes and
the shared protocol geometry), then add one entry to :data:`METRICS` naming it in ``compute``.

Directions (documented, and tested against the entries): PSNR, SSIM and F-Score are
higher-is-better; LPIPS and Chamfer Distance are lower-is-better. The best-aligned geometry
columns ``chamfer_aligned`` / ``fscore_aligned`` (``imesh evaluate --align search``) are
entries too: per object, same direction and tolerance as their protocol columns, ``optional``
(only runs evaluated with ``--align search`` hold values), so tables show them and compare
checks them only when a run has them.

This module is plain Python (pyarrow, imported on first use of a column); it imports nothing
else from the project, so command-line help can read it cheaply.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "METRICS",
    "Metric",
    "Scope",
    "default_max_drop",
    "metric_fields",
    "metric_names",
]

Scope = Literal["view", "object"]


@dataclass(frozen=True)
class Metric:
    """One reported metric."""

    name: str
    """Column name in the run records, key in thresholds and reference files."""
    label: str
    """Short label of table headers (``PSNR``, ``CD``)."""
    higher_is_better: bool
    unit: str
    """``dB``, ``length`` (in the [-1, 1]^3 normalized frame), or ``""`` for a unitless number."""
    scope: Scope
    """``view``: one value per rendered view (image metrics; tables average each object's
    views, then the objects); ``object``: one value per object (geometry metrics)."""
    fmt: str
    """Python format spec of table cells (``.2f``)."""
    max_drop: float
    """Default ``imesh compare`` tolerance: the largest worsening of the mean per-object value,
    in ``unit``, that is not a regression."""
    description: str
    required: bool = True
    """The run-records column has no nulls. False: null where a run could not compute the
    metric (LPIPS without backbone weights) or did not ask for it (``optional`` metrics)."""
    optional: bool = False
    """Computed only on request: tables show the column, and compare checks it, only when a run
    has values. Optional metrics are never ``required``."""
    compute: str | Callable[..., Any] | None = None
    """Its compute function: ``"module:function"`` (imported on first use, so reading the
    registry stays cheap) or the function itself. Per view: ``fn(pred, gt, inputs)`` on the
    (N, H, W, 3) float64 batches composited on the background, with
    :class:`evaluation.metric_functions.ViewInputs`, returning N values (NaN where it cannot
    compute one: recorded as null unless ``required``); per object: ``fn(inputs)`` with
    :class:`evaluation.metric_functions.ObjectInputs`, returning a float or None (not computed,
    e.g. an ``optional`` metric that was not asked for). None: records/tables-only entries
    (an evaluation refuses them)."""

    def __post_init__(self) -> None:
        if self.scope not in ("view", "object"):
            raise ValueError(f"metric {self.name!r}: scope must be 'view' or 'object'")
        if self.optional and self.required:
            raise ValueError(f"metric {self.name!r}: an optional metric cannot be required")
        if not self.max_drop >= 0:
            raise ValueError(f"metric {self.name!r}: max_drop must be >= 0")
        if isinstance(self.compute, str) and not all(self.compute.partition(":")[::2]):
            raise ValueError(
                f"metric {self.name!r}: compute must be 'module:function', got {self.compute!r}"
            )

    def compute_function(self) -> Callable[..., Any]:
        """The compute function (imports its module for a ``"module:function"`` target)."""
        if self.compute is None:
            raise ValueError(
                f"metric {self.name!r} has no compute function (its entry in "
                "evaluation/metric_registry.py names none): it cannot be evaluated"
            )
        if not isinstance(self.compute, str):
            return self.compute
        module, _, name = self.compute.partition(":")
        try:
            fn: Callable[..., Any] = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise ValueError(
                f"metric {self.name!r}: compute function {self.compute!r} cannot be loaded ({e})"
            ) from e
        return fn

    # ----- names kept from the former ``evaluation.tables.MetricSpec``
    @property
    def header(self) -> str:
        """Table header text (the label)."""
        return self.label

    @property
    def kind(self) -> str:
        """``image`` (per view) or ``geometry`` (per object)."""
        return "image" if self.scope == "view" else "geometry"

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"

    @property
    def sign(self) -> float:
        """+1 when higher is better, -1 when lower is better: ``sign * (new - old) > 0`` is an
        improvement."""
        return 1.0 if self.higher_is_better else -1.0

    @property
    def column(self) -> pa.Field:
        """The run-records column."""
        import pyarrow as pa

        return pa.field(self.name, pa.float64(), nullable=not self.required)


def _registry(*entries: Metric) -> dict[str, Metric]:
    out: dict[str, Metric] = {}
    for m in entries:
        if m.name in out:
            raise ValueError(f"metric {m.name!r} registered twice")
        out[m.name] = m
    return out


_FUNCTIONS = "evaluation.metric_functions"

METRICS: dict[str, Metric] = _registry(
    Metric(
        "psnr",
        "PSNR",
        True,
        "dB",
        "view",
        ".2f",
        0.5,
        "peak signal-to-noise ratio on [0, 1] images composited on white (evaluation.metrics.psnr)",
        compute=f"{_FUNCTIONS}:psnr_views",
    ),
    Metric(
        "ssim",
        "SSIM",
        True,
        "",
        "view",
        ".3f",
        0.01,
        "structural similarity, scikit-image defaults (evaluation.metrics.ssim)",
        compute=f"{_FUNCTIONS}:ssim_views",
    ),
    Metric(
        "lpips",
        "LPIPS",
        False,
        "",
        "view",
        ".3f",
        0.01,
        "learned perceptual distance; null when the backbone weights are absent "
        "(evaluation.metrics.lpips_distance)",
        required=False,
        compute=f"{_FUNCTIONS}:lpips_views",
    ),
    Metric(
        "chamfer",
        "CD",
        False,
        "length",
        "object",
        ".3f",
        0.005,
        "Chamfer Distance in the normalized [-1, 1]^3 frame (evaluation.geometry.chamfer_fscore)",
        compute=f"{_FUNCTIONS}:chamfer",
    ),
    Metric(
        "fscore",
        "FS",
        True,
        "",
        "object",
        ".3f",
        0.01,
        "F-Score at the run's threshold, 0.2 in the paper protocol "
        "(evaluation.geometry.chamfer_fscore)",
        compute=f"{_FUNCTIONS}:fscore",
    ),
    Metric(
        "chamfer_aligned",
        "CD aligned",
        False,
        "length",
        "object",
        ".3f",
        0.005,
        "Chamfer Distance after the best-alignment search (imesh evaluate --align search)",
        required=False,
        optional=True,
        compute=f"{_FUNCTIONS}:chamfer_aligned",
    ),
    Metric(
        "fscore_aligned",
        "FS aligned",
        True,
        "",
        "object",
        ".3f",
        0.01,
        "F-Score after the best-alignment search (imesh evaluate --align search)",
        required=False,
        optional=True,
        compute=f"{_FUNCTIONS}:fscore_aligned",
    ),
)
"""Every reported metric, in display order (tables list their columns in this order)."""


def metric_names(
    scope: Scope | None = None,
    *,
    optional: bool | None = None,
    registry: Mapping[str, Metric] | None = None,
) -> tuple[str, ...]:
    """Metric names in registry order, filtered by ``scope`` and by ``optional`` (None: all)."""
    reg = METRICS if registry is None else registry
    return tuple(
        m.name
        for m in reg.values()
        if (scope is None or m.scope == scope) and (optional is None or m.optional == optional)
    )


def metric_fields(scope: Scope, registry: Mapping[str, Metric] | None = None) -> list[pa.Field]:
    """The run-records columns of the metrics of ``scope``, in registry order."""
    reg = METRICS if registry is None else registry
    return [reg[n].column for n in metric_names(scope, registry=reg)]


def default_max_drop(registry: Mapping[str, Metric] | None = None) -> dict[str, float]:
    """``{metric: max_drop}``: the ``imesh compare`` defaults of every entry."""
    reg = METRICS if registry is None else registry
    return {m.name: m.max_drop for m in reg.values()}
