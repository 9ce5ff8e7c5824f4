"""Compare a new evaluation run with a baseline run: paired deltas, bootstrap CIs, verdicts.

Pairing. Objects are matched by ``(dataset, uid)``; each run must hold one predictor per
dataset (compare runs of one predictor; otherwise :class:`CompareError`). Only objects whose
status is ``ok`` in *both* runs and that have the metric in both runs are paired; pairs where
either value is not finite (e.g. PSNR ``inf``) are left out and counted.

Metrics, directions and default tolerances come from the metric registry
(:data:`evaluation.metric_registry.METRICS`). Per object value. Per-view (image) metrics
(PSNR, SSIM, LPIPS): the object's mean over its views in the view set (``orbit`` or
``benchmark``). Per-object (geometry) metrics (Chamfer Distance, F-Score, and the best-aligned
``chamfer_aligned`` / ``fscore_aligned``): the object's value; these are reported under the
pseudo view set ``"3d"``. Optional metrics (the aligned ones) are compared only when either run
has values for the dataset.

Statistics, per (dataset, view_set, metric) with paired per-object values ``b_i`` and ``n_i``:

* ``delta_i = n_i - b_i``; ``mean_delta`` = mean of the deltas (raw units, new minus
  baseline);
* ``oriented_i = s * delta_i`` with the entry's sign ``s``: ``+1`` when higher is better
  (PSNR, SSIM, F-Score), ``-1`` when lower is better (LPIPS, Chamfer Distance), so
  **positive = better**;
  ``oriented_delta`` = mean of ``oriented_i``;
* a **paired bootstrap** CI of ``oriented_delta``: ``resamples`` (default 2000) resamples of
  the n objects with replacement (numpy ``default_rng(seed)``, default seed 0, vectorised),
  percentile interval at ``confidence`` (default 95%). A constant delta gives a zero-width
  interval at that constant;
* ``p_value``: two-sided Wilcoxon signed-rank test of the oriented deltas (scipy; exact null
  distribution for n <= 50 without ties or zero deltas, normal approximation otherwise), 1.0
  when every delta is zero; informational only (the verdict does not use it).

Verdict with ``t = max_drop`` of the metric (:class:`Thresholds`; defaults: the registry
entries' ``max_drop``, overridden key by key by a thresholds YAML):

* ``regression``  when ``oriented_delta < -t`` **and** ``ci_high < 0`` (the mean got worse by
  more than the tolerance, and the whole confidence interval lies on the worse side of zero);
* ``improvement`` when ``oriented_delta > t`` and ``ci_low > 0`` (mirror image);
* ``no_change``   otherwise;
* ``no_data``     when no pair exists (e.g. LPIPS unavailable in either run, or the two runs
  used different LPIPS backbones, which makes their values incomparable).

Failures. Per dataset: ``new_failures`` = ok in the baseline, failed in the new run;
``missing_in_new`` = ok in the baseline, absent from the new run; ``fixed`` = failed in the
baseline, ok in the new run; ``new_objects`` = only in the new run (not compared). The run
regresses on failures when ``sum(new_failures + missing_in_new) > max_new_failures``,
whatever the metrics say: a failed object's metrics are absent, so failures must count on their
own.

``CompareResult.regressed`` is true when any metric is a regression or failures regress.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

from evaluation.metric_registry import METRICS, Metric, default_max_drop, metric_names
from evaluation.run_records import EvaluationInputError, RunRecords, read_bytes
from evaluation.tables import (
    format_value,
    object_status,
    per_object_geometry,
    per_object_image_means,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "GEOMETRY_VIEW_SET",
    "CompareError",
    "CompareResult",
    "FailureSummary",
    "MetricComparison",
    "Thresholds",
    "ThresholdsError",
    "bootstrap_ci",
    "compare_runs",
    "default_thresholds",
    "default_thresholds_yaml",
    "load_thresholds",
]

DEFAULT_THRESHOLDS = Path(__file__).resolve().parent / "data" / "default_thresholds.yaml"
"""The packaged defaults as a YAML file to copy and edit: generated from the registry
(:func:`default_thresholds_yaml`; a test keeps it equal), e.g. psnr 0.5 dB, ssim 0.01,
lpips 0.01, chamfer 0.005, fscore 0.01, max_new_failures 0, 2000 bootstrap resamples at 95%,
seed 0."""

GEOMETRY_VIEW_SET = "3d"
"""The ``view_set`` label of per-object geometry metrics in comparisons."""

VERDICTS = ("regression", "improvement", "no_change", "no_data")


class ThresholdsError(EvaluationInputError):
    """A thresholds YAML that does not fit the expected layout."""


class CompareError(EvaluationInputError):
    """Two runs that cannot be compared (e.g. several predictors for one dataset)."""


# --------------------------------------------------------------------------- thresholds


@dataclass
class Thresholds:
    """Regression thresholds (defaults: :func:`default_thresholds`)."""

    max_drop: dict[str, float]
    """Metric -> largest tolerated worsening of the mean, in the metric's units (>= 0)."""
    max_new_failures: int = 0
    resamples: int = 2000
    confidence: float = 0.95
    seed: int = 0


def _read_yaml(source: str | Path, what: str) -> Any:
    try:
        text = read_bytes(str(source)).decode("utf-8")
    except FileNotFoundError as e:
        raise ThresholdsError(f"{what} file not found: {source}") from e
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ThresholdsError(f"{source}: not valid YAML ({e})") from e


def _merge_thresholds(base: Thresholds, data: Any, where: str) -> Thresholds:
    if not isinstance(data, dict):
        raise ThresholdsError(f"{where}: expected a mapping")
    out = Thresholds(
        max_drop=dict(base.max_drop),
        max_new_failures=base.max_new_failures,
        resamples=base.resamples,
        confidence=base.confidence,
        seed=base.seed,
    )
    for key, value in data.items():
        if key in METRICS:
            if not isinstance(value, dict) or set(value) != {"max_drop"}:
                raise ThresholdsError(f"{where}: {key} must be {{max_drop: <number >= 0>}}")
            drop = value["max_drop"]
            if isinstance(drop, bool) or not isinstance(drop, int | float) or not drop >= 0:
                raise ThresholdsError(
                    f"{where}: {key}.max_drop must be a number >= 0, got {drop!r}"
                )
            out.max_drop[key] = float(drop)
        elif key == "max_new_failures":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ThresholdsError(f"{where}: max_new_failures must be an integer >= 0")
            out.max_new_failures = value
        elif key == "bootstrap":
            if not isinstance(value, dict):
                raise ThresholdsError(f"{where}: bootstrap must be a mapping")
            unknown = sorted(set(value) - {"resamples", "confidence", "seed"})
            if unknown:
                raise ThresholdsError(f"{where}: unknown bootstrap key(s) {', '.join(unknown)}")
            if "resamples" in value:
                r = value["resamples"]
                if isinstance(r, bool) or not isinstance(r, int) or r < 1:
                    raise ThresholdsError(f"{where}: bootstrap.resamples must be an integer >= 1")
                out.resamples = r
            if "confidence" in value:
                c = value["confidence"]
                if isinstance(c, bool) or not isinstance(c, int | float) or not 0 < c < 1:
                    raise ThresholdsError(f"{where}: bootstrap.confidence must be in (0, 1)")
                out.confidence = float(c)
            if "seed" in value:
                s = value["seed"]
                if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                    raise ThresholdsError(f"{where}: bootstrap.seed must be an integer >= 0")
                out.seed = s
        else:
            raise ThresholdsError(
                f"{where}: unknown key {key!r}; expected metrics {list(METRICS)} "
                "(evaluation/metric_registry.py), max_new_failures or bootstrap"
            )
    return out


def default_thresholds(registry: Mapping[str, Metric] | None = None) -> Thresholds:
    """The defaults: every registry entry's ``max_drop``, and the :class:`Thresholds` field
    defaults (max_new_failures 0, 2000 resamples, 95 %, seed 0)."""
    return Thresholds(max_drop=default_max_drop(registry))


def _yaml_number(value: float) -> str:
    return format(value, "g")


def default_thresholds_yaml(registry: Mapping[str, Metric] | None = None) -> str:
    """The text of :data:`DEFAULT_THRESHOLDS`, generated from the registry and
    :func:`default_thresholds` (regenerate the file with ``python -c "from evaluation.compare
    import *; DEFAULT_THRESHOLDS.write_text(default_thresholds_yaml())"``)."""
    reg = METRICS if registry is None else registry
    th = default_thresholds(reg)
    units = {"length": "length in the normalized [-1,1]^3 frame"}
    lines = [
        "# Default regression thresholds for `imesh compare` (evaluation/compare.py).",
        "# GENERATED from the metric registry (evaluation/metric_registry.py): edit the entries",
        "# there, then regenerate this file (tests/test_metric_registry.py checks they agree).",
        "#",
        "# Per metric, `max_drop` is the largest tolerated worsening of the mean per-object value,",
        '# in the metric\'s own units, in the "worse" direction (higher-is-better metrics going',
        "# down, lower-is-better ones going up). A metric is a REGRESSION only when BOTH",
        "#   (1) the paired mean change (new - baseline, oriented so that positive = better) is",
        "#       below -max_drop, and",
        "#   (2) the upper end of its paired-bootstrap confidence interval is below zero",
        "#       (the whole interval lies on the worse side of zero).",
        "# The mirror image (above +max_drop and the lower CI end above zero) is an IMPROVEMENT;",
        "# anything else is NO_CHANGE.",
        "#",
        "# `max_new_failures`: the run regresses when more than this many objects that were ok in",
        "# the baseline are failed (or absent) in the new run, whatever the metrics say.",
        "#",
        "# A user file given with `imesh compare --thresholds FILE` overrides these values key by",
        "# key; metrics it does not name keep the defaults below.",
        "",
    ]
    for m in reg.values():
        better = "higher" if m.higher_is_better else "lower"
        unit = units.get(m.unit, m.unit) or "unitless"
        lines.append(
            f"{m.name}: {{max_drop: {_yaml_number(th.max_drop[m.name])}}}"
            f"  # {m.label} ({unit}), {better} is better"
        )
    lines += [
        f"max_new_failures: {th.max_new_failures}",
        "",
        "bootstrap:",
        f"  resamples: {th.resamples}  # paired bootstrap resamples of the per-object deltas",
        f"  confidence: {_yaml_number(th.confidence)}  # two-sided percentile interval",
        f"  seed: {th.seed}  # fixed: the same two runs always give the same interval",
    ]
    return "\n".join(lines) + "\n"


def load_thresholds(
    source: str | Path | Mapping[str, Any] | Thresholds | None = None,
) -> Thresholds:
    """Thresholds from the registry defaults (:func:`default_thresholds`), overridden key by
    key by ``source`` (a YAML path/URL or a parsed mapping). Raises :class:`ThresholdsError`."""
    if isinstance(source, Thresholds):
        return source
    defaults = default_thresholds()
    if source is None:
        return defaults
    if isinstance(source, str | Path):
        return _merge_thresholds(defaults, _read_yaml(source, "thresholds"), str(source))
    return _merge_thresholds(defaults, dict(source), "thresholds")


# --------------------------------------------------------------------------- statistics


def bootstrap_ci(
    values: npt.ArrayLike, *, resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampling with replacement).

    Vectorised: index matrices of at most ~4M entries at a time. Deterministic per ``seed``.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    n = x.size
    if n == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=np.float64)
    chunk = max(1, 4_000_000 // n)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = x[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _wilcoxon_p(oriented: npt.NDArray[np.float64]) -> float | None:
    if oriented.size == 0:
        return None
    if not np.any(oriented != 0):
        return 1.0
    try:
        from scipy.stats import wilcoxon

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Exact null distribution for small samples without ties/zeros; the normal
            # approximation otherwise (scipy's "auto" would run a slow permutation test).
            nonzero = oriented[oriented != 0]
            ties = np.unique(np.abs(nonzero)).size < nonzero.size
            exact = oriented.size <= 50 and not ties and nonzero.size == oriented.size
            method = "exact" if exact else "asymptotic"
            p = float(wilcoxon(oriented, alternative="two-sided", method=method).pvalue)
    except Exception:
        return None
    return None if math.isnan(p) else p


# --------------------------------------------------------------------------- results


@dataclass
class MetricComparison:
    dataset: str
    view_set: str
    metric: str
    n_pairs: int
    baseline_mean: float | None
    new_mean: float | None
    mean_delta: float | None
    """Mean of (new - baseline), raw units."""
    oriented_delta: float | None
    """Mean of the deltas oriented so that positive = better."""
    ci_low: float | None
    ci_high: float | None
    """Bootstrap interval of ``oriented_delta``."""
    p_value: float | None
    max_drop: float
    verdict: str
    n_nonfinite: int = 0
    """Pairs left out because a value was not finite."""
    n_unpaired: int = 0
    """Objects ok in both runs but with the metric in only one (or neither) of them."""
    note: str | None = None


@dataclass
class FailureSummary:
    dataset: str
    baseline_ok: int
    baseline_total: int
    new_ok: int
    new_total: int
    paired: int
    new_failures: list[str] = field(default_factory=list)
    missing_in_new: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    still_failed: list[str] = field(default_factory=list)
    new_objects: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    """uid -> ``error_type: error`` of the new failures."""


@dataclass
class CompareResult:
    baseline_run_id: str
    new_run_id: str
    metrics: list[MetricComparison]
    failures: list[FailureSummary]
    thresholds: Thresholds
    notes: list[str] = field(default_factory=list)

    @property
    def n_new_failures(self) -> int:
        """Objects ok in the baseline and failed or absent in the new run (all datasets)."""
        return sum(len(f.new_failures) + len(f.missing_in_new) for f in self.failures)

    @property
    def failures_regressed(self) -> bool:
        return self.n_new_failures > self.thresholds.max_new_failures

    @property
    def regressions(self) -> list[MetricComparison]:
        return [m for m in self.metrics if m.verdict == "regression"]

    @property
    def regressed(self) -> bool:
        return self.failures_regressed or bool(self.regressions)

    def to_dict(self) -> dict[str, Any]:
        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None if math.isnan(v) else str(v)
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v

        return clean(
            {
                "baseline_run_id": self.baseline_run_id,
                "new_run_id": self.new_run_id,
                "regressed": self.regressed,
                "failures_regressed": self.failures_regressed,
                "n_new_failures": self.n_new_failures,
                "thresholds": asdict(self.thresholds),
                "metrics": [asdict(m) for m in self.metrics],
                "failures": [asdict(f) for f in self.failures],
                "notes": list(self.notes),
            }
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        th = self.thresholds
        n_reg = len(self.regressions)
        verdict = "REGRESSION" if self.regressed else "no regression"
        lines = [
            f"## Comparison: new `{self.new_run_id}` vs baseline `{self.baseline_run_id}`",
            "",
            f"**Verdict: {verdict}** ({n_reg} metric regression(s); {self.n_new_failures} "
            f"object(s) ok in the baseline but failed or missing in the new run, "
            f"max_new_failures {th.max_new_failures})",
            "",
            "### Objects",
            "",
            "| dataset | baseline ok/total | new ok/total | compared | new failures | "
            "missing in new | fixed | still failed | new objects |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for f in self.failures:
            lines.append(
                f"| {_md(f.dataset)} | {f.baseline_ok}/{f.baseline_total} | {f.new_ok}/{f.new_total} "
                f"| {f.paired} | {len(f.new_failures)} | {len(f.missing_in_new)} | {len(f.fixed)} "
                f"| {len(f.still_failed)} | {len(f.new_objects)} |"
            )
        listed = [
            (f.dataset, u, f.errors.get(u, "failed")) for f in self.failures for u in f.new_failures
        ] + [
            (f.dataset, u, "absent from the new run")
            for f in self.failures
            for u in f.missing_in_new
        ]
        if listed:
            lines += ["", "Objects ok in the baseline, not ok in the new run:", ""]
            lines += [f"- {_md(ds)}/`{_md(u)}`: {_md(err)}" for ds, u, err in listed[:50]]
            if len(listed) > 50:
                lines.append(f"- ... and {len(listed) - 50} more")
        pct = f"{th.confidence:.0%}"
        lines += [
            "",
            "### Metrics",
            "",
            f"| dataset | views | metric | n | baseline | new | Δ new−base | Δ (+ better) | "
            f"{pct} CI (+ better) | p | max drop | verdict |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |",
        ]
        for m in self.metrics:
            spec = METRICS[m.metric]
            ci = (
                f"[{_signed(m.ci_low)}, {_signed(m.ci_high)}]"
                if m.ci_low is not None and m.ci_high is not None
                else "–"
            )
            shown = {
                "regression": "**REGRESSION**",
                "improvement": "improvement",
                "no_change": "no change",
                "no_data": "no data",
            }[m.verdict]
            lines.append(
                f"| {_md(m.dataset)} | {m.view_set} | {spec.header}{spec.arrow} | {m.n_pairs} "
                f"| {format_value(m.metric, m.baseline_mean)} | {format_value(m.metric, m.new_mean)} "
                f"| {_signed(m.mean_delta)} | {_signed(m.oriented_delta)} | {ci} "
                f"| {'–' if m.p_value is None else f'{m.p_value:.3g}'} | {m.max_drop:g} | {shown} |"
            )
        notes = list(self.notes) + [
            f"{m.dataset}/{m.view_set}/{m.metric}: {m.note}" for m in self.metrics if m.note
        ]
        lines += [
            "",
            "Per-object values (image metrics: mean over the object's views) of objects ok in "
            "both runs are paired by uid. Δ (+ better) is oriented so that positive = better. "
            f"Regression = Δ (+ better) < −max drop and the {pct} paired-bootstrap CI "
            f"({th.resamples} resamples, seed {th.seed}) entirely below 0; p = Wilcoxon "
            "signed-rank (informational).",
        ]
        lines += [f"- {_md(n)}" for n in notes]
        return "\n".join(lines) + "\n"


def _signed(v: float | None) -> str:
    if v is None:
        return "–"
    if not math.isfinite(v):
        return str(v)
    return f"{v:+.4g}"


def _md(text: str) -> str:
    return str(text).replace("|", r"\|").replace("\n", " ")


# --------------------------------------------------------------------------- comparison


def _single_predictor(status: Mapping[tuple[str, str], Any], run_id: str) -> dict[str, str]:
    by_dataset: dict[str, set[str]] = {}
    for pred, ds in status:
        by_dataset.setdefault(ds, set()).add(pred)
    several = {ds: sorted(p) for ds, p in by_dataset.items() if len(p) > 1}
    if several:
        raise CompareError(
            f"run {run_id!r} has several predictors for dataset(s) {several}; "
            "compare runs that each hold one predictor per dataset"
        )
    return {ds: next(iter(p)) for ds, p in by_dataset.items()}


def _compare_metric(
    dataset: str,
    view_set: str,
    metric: str,
    base: Mapping[str, Mapping[str, float | None]],
    new: Mapping[str, Mapping[str, float | None]],
    paired_ok: Sequence[str],
    th: Thresholds,
    note: str | None = None,
) -> MetricComparison:
    b_vals, n_vals = [], []
    n_nonfinite = n_unpaired = 0
    for u in paired_ok:
        bv = base.get(u, {}).get(metric)
        nv = new.get(u, {}).get(metric)
        if bv is None or nv is None:
            n_unpaired += 1
            continue
        if not (math.isfinite(bv) and math.isfinite(nv)):
            n_nonfinite += 1
            continue
        b_vals.append(bv)
        n_vals.append(nv)
    max_drop = th.max_drop.get(metric, METRICS[metric].max_drop)
    if note is not None or not b_vals:
        return MetricComparison(
            dataset,
            view_set,
            metric,
            0,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            max_drop,
            "no_data",
            n_nonfinite,
            n_unpaired,
            note or "no paired finite values",
        )
    b = np.asarray(b_vals, dtype=np.float64)
    n = np.asarray(n_vals, dtype=np.float64)
    delta = n - b
    oriented = METRICS[metric].sign * delta
    od = float(oriented.mean())
    lo, hi = bootstrap_ci(oriented, resamples=th.resamples, confidence=th.confidence, seed=th.seed)
    if od < -max_drop and hi < 0:
        verdict = "regression"
    elif od > max_drop and lo > 0:
        verdict = "improvement"
    else:
        verdict = "no_change"
    return MetricComparison(
        dataset=dataset,
        view_set=view_set,
        metric=metric,
        n_pairs=int(b.size),
        baseline_mean=float(b.mean()),
        new_mean=float(n.mean()),
        mean_delta=float(delta.mean()),
        oriented_delta=od,
        ci_low=lo,
        ci_high=hi,
        p_value=_wilcoxon_p(oriented),
        max_drop=max_drop,
        verdict=verdict,
        n_nonfinite=n_nonfinite,
        n_unpaired=n_unpaired,
    )


def _errors(records: RunRecords) -> dict[tuple[str, str], str]:
    t = records.objects
    cols = {c: t.column(c).to_pylist() for c in ("dataset", "uid", "status", "error_type", "error")}
    out = {}
    for i in range(t.num_rows):
        if cols["status"][i] != "ok":
            et, msg = cols["error_type"][i], cols["error"][i]
            text = ": ".join(
                x for x in (et, (msg or "").strip().splitlines()[0] if msg else None) if x
            )
            out[(cols["dataset"][i], cols["uid"][i])] = text or "failed"
    return out


def _compared(
    names: Sequence[str],
    base: Mapping[str, Mapping[str, float | None]],
    new: Mapping[str, Mapping[str, float | None]],
) -> list[str]:
    """``names`` without the optional metrics that neither run has a value of."""
    return [
        m
        for m in names
        if not METRICS[m].optional
        or any(v.get(m) is not None for objs in (base, new) for v in objs.values())
    ]


def compare_runs(
    baseline: RunRecords,
    new: RunRecords,
    thresholds: Thresholds | str | Path | Mapping[str, Any] | None = None,
) -> CompareResult:
    """Compare ``new`` with ``baseline`` (method in the module docstring).

    ``thresholds``: a :class:`Thresholds`, a YAML path/URL or mapping overriding the packaged
    defaults, or None for the defaults.
    """
    th = load_thresholds(thresholds)
    st_b, st_n = object_status(baseline), object_status(new)
    pred_b = _single_predictor(st_b, baseline.run_id)
    pred_n = _single_predictor(st_n, new.run_id)
    img_b, img_n = per_object_image_means(baseline), per_object_image_means(new)
    geo_b, geo_n = per_object_geometry(baseline), per_object_geometry(new)
    errors_n = _errors(new)
    notes: list[str] = []
    if pred_b != pred_n:
        diff = {ds: (pred_b.get(ds), pred_n.get(ds)) for ds in set(pred_b) | set(pred_n)}
        notes.append(f"predictors differ (baseline, new) per dataset: {diff}")
    lpips_note = None
    if not (baseline.info.lpips_usable and new.info.lpips_usable):
        lpips_note = "LPIPS not available (or from a random trunk) in at least one run"
    elif baseline.info.lpips_backbone != new.info.lpips_backbone:
        lpips_note = (
            f"LPIPS backbones differ ({baseline.info.lpips_backbone} vs "
            f"{new.info.lpips_backbone}): values not comparable"
        )

    metrics: list[MetricComparison] = []
    failures: list[FailureSummary] = []
    for ds in sorted(set(pred_b) | set(pred_n)):
        sb = st_b.get((pred_b.get(ds, ""), ds), {})
        sn = st_n.get((pred_n.get(ds, ""), ds), {})
        paired_ok = sorted(u for u, s in sb.items() if s == "ok" and sn.get(u) == "ok")
        fs = FailureSummary(
            dataset=ds,
            baseline_ok=sum(s == "ok" for s in sb.values()),
            baseline_total=len(sb),
            new_ok=sum(s == "ok" for s in sn.values()),
            new_total=len(sn),
            paired=len(paired_ok),
            new_failures=sorted(u for u, s in sb.items() if s == "ok" and sn.get(u, "ok") != "ok"),
            missing_in_new=sorted(u for u, s in sb.items() if s == "ok" and u not in sn),
            fixed=sorted(u for u, s in sb.items() if s != "ok" and sn.get(u) == "ok"),
            still_failed=sorted(u for u, s in sb.items() if s != "ok" and sn.get(u, "ok") != "ok"),
            new_objects=sorted(u for u in sn if u not in sb),
        )
        fs.errors = {u: errors_n.get((ds, u), "failed") for u in fs.new_failures}
        failures.append(fs)
        view_sets = sorted(
            {vs for (_p, d, vs) in img_b if d == ds} | {vs for (_p, d, vs) in img_n if d == ds}
        )
        for vs in view_sets:
            b_objs = img_b.get((pred_b.get(ds, ""), ds, vs), {})
            n_objs = img_n.get((pred_n.get(ds, ""), ds, vs), {})
            for m in _compared(metric_names("view"), b_objs, n_objs):
                note = lpips_note if m == "lpips" else None
                metrics.append(_compare_metric(ds, vs, m, b_objs, n_objs, paired_ok, th, note))
        gb = geo_b.get((pred_b.get(ds, ""), ds), {})
        gn = geo_n.get((pred_n.get(ds, ""), ds), {})
        if gb or gn:
            for m in _compared(metric_names("object"), gb, gn):
                metrics.append(_compare_metric(ds, GEOMETRY_VIEW_SET, m, gb, gn, paired_ok, th))
    return CompareResult(
        baseline_run_id=baseline.run_id,
        new_run_id=new.run_id,
        metrics=metrics,
        failures=failures,
        thresholds=th,
        notes=notes,
    )
