"""Training metrics (one Parquet row per step) and their self-contained HTML report.

``<out>/metrics.parquet`` holds one row per optimizer step, with the columns the trainer logs.
Numbers are stored as float64 (``step`` as int64), strings as strings; a list of strings (the
batch's uids) becomes one comma-joined string. :class:`MetricsLog` (rank 0 only) keeps the rows
in memory and rewrites the file atomically on :meth:`MetricsLog.flush`; on resume it starts from
the rows of the previous run up to the checkpoint's step, so steps redone after the restart are
not counted twice.

``<out>/report.html`` (:func:`write_train_report`) is one file, inline CSS and inline SVG only
(no scripts, no external files). It reads these columns when present:

- ``loss`` and every ``loss_<term>``: one plot each against ``step`` (log y when all positive);
- ``samples_per_s`` and ``images_per_s``: throughput;
- ``data_time_s`` (seconds the step waited for the data loader) and ``step_time_s`` (the whole
  step, data included): the loader's share of step time, ``data_time_s / step_time_s``;
- ``lr`` and every ``lr_<group>``: learning rate;

and shows the run config from ``<out>/config.yaml`` (when present) and, for every numeric
column, its last and minimum values. Every string from the files is HTML-escaped.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from numpy.typing import ArrayLike

from pipelines import storage
from rendering.urls import atomic_write_bytes, parquet_from_bytes, read_bytes

__all__ = [
    "CONFIG_FILE",
    "METRICS_FILE",
    "PLOT",
    "REPORT_FILE",
    "MetricsLog",
    "PlotBox",
    "plot_points",
    "read_metrics",
    "render_train_report",
    "svg_line_plot",
    "write_train_report",
]

METRICS_FILE = "metrics.parquet"
REPORT_FILE = "report.html"
CONFIG_FILE = "config.yaml"
STEP = "step"
DATA_TIME = "data_time_s"
STEP_TIME = "step_time_s"
MAX_POINTS = 1000
"""Longer series are drawn as MAX_POINTS means of consecutive steps (the file keeps every row)."""


# --------------------------------------------------------------------------- metrics log


def _cell(key: str, value: Any) -> float | str | None:
    """One metrics value as stored: float, string or None."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, str) for v in value):
            raise TypeError(f"metrics column {key!r}: a list must hold strings (uids)")
        return ",".join(value)
    if not isinstance(value, numbers.Real) and hasattr(value, "item"):
        try:
            value = value.item()  # numpy scalars, one-element arrays and tensors
        except (ValueError, RuntimeError) as err:
            raise TypeError(f"metrics column {key!r}: not a single number ({err})") from err
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(
        f"metrics column {key!r}: {type(value).__name__} is not a number, string or list of strings"
    )


def _table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    columns: dict[str, None] = {STEP: None}
    for row in rows:
        columns.update(dict.fromkeys(row))
    arrays = []
    for name in columns:
        values = [row.get(name) for row in rows]
        if name == STEP:
            arrays.append(pa.array(values, type=pa.int64()))
            continue
        kinds = {type(v) for v in values if v is not None}
        if len(kinds) > 1:
            raise TypeError(f"metrics column {name!r} mixes numbers and strings")
        kind = pa.string() if kinds == {str} else pa.float64()
        arrays.append(pa.array(values, type=kind))
    return pa.table(arrays, names=list(columns))


def read_metrics(url: str) -> pa.Table:
    """The metrics table at ``url`` (a ``metrics.parquet`` file)."""
    return parquet_from_bytes(read_bytes(url))


class MetricsLog:
    """The per-step metrics of a training run, written to ``<out>/metrics.parquet``.

    Used by rank 0 only. ``resume_from_step``: the step of the checkpoint the run resumes from;
    the previous file's rows up to it are kept, later ones dropped (they are redone). ``None``
    starts an empty log (the next flush replaces any previous file).
    """

    def __init__(self, out_url: str, resume_from_step: int | None = None) -> None:
        self.url = storage.join(out_url, METRICS_FILE)
        self._rows: list[dict[str, Any]] = []
        if resume_from_step is not None and storage.exists(self.url):
            self._rows = [
                row for row in read_metrics(self.url).to_pylist() if row[STEP] <= resume_from_step
            ]

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The rows as they will be stored (copies)."""
        return [dict(row) for row in self._rows]

    def append(self, row: Mapping[str, Any]) -> None:
        """Add one step's row; it must have an integer ``step``."""
        step = row.get(STEP)
        if isinstance(step, bool) or not isinstance(step, numbers.Integral):
            raise ValueError(f"a metrics row needs an integer {STEP!r}, got {step!r}")
        stored: dict[str, Any] = {STEP: int(step)}
        for key, value in row.items():
            if key != STEP:
                stored[str(key)] = _cell(str(key), value)
        self._rows.append(stored)

    def flush(self) -> None:
        """Rewrite ``metrics.parquet`` atomically with every row so far."""
        buf = io.BytesIO()
        pq.write_table(_table(self._rows), buf)
        atomic_write_bytes(self.url, buf.getvalue())


# --------------------------------------------------------------------------- SVG plots


@dataclass(frozen=True)
class PlotBox:
    """Geometry of one line plot (pixels): the data area spans ``left .. width - right`` and
    ``top .. height - bottom``; the first step maps to its left edge, the last to its right,
    the smallest value (log10 of it on a log axis) to its bottom and the largest to its top."""

    width: int = 360
    height: int = 190
    left: int = 58
    right: int = 14
    top: int = 26
    bottom: int = 34

    @property
    def plot_width(self) -> int:
        return self.width - self.left - self.right

    @property
    def plot_height(self) -> int:
        return self.height - self.top - self.bottom


PLOT = PlotBox()


def _e(value: Any) -> str:
    """HTML-escape any value (quotes included, so it is safe in attributes too)."""
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _reduce(steps: np.ndarray, values: np.ndarray, max_points: int) -> tuple[np.ndarray, ...]:
    if steps.size <= max_points:
        return steps, values
    chunks = np.array_split(np.arange(steps.size), max_points)
    return (
        np.array([steps[c].mean() for c in chunks]),
        np.array([values[c].mean() for c in chunks]),
    )


def plot_points(
    steps: ArrayLike,
    values: ArrayLike,
    *,
    log_y: bool,
    box: PlotBox = PLOT,
    max_points: int = MAX_POINTS,
) -> list[tuple[float, float]]:
    """SVG coordinates of the finite (and, on a log axis, positive) points.

    A single step maps to the middle of the x range, a constant value to the middle of the y
    range. More than ``max_points`` points are first reduced to ``max_points`` means of
    consecutive points.
    """
    s = np.asarray(steps, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(s) & np.isfinite(v) & ((v > 0) if log_y else True)
    s, v = _reduce(s[keep], v[keep], max_points)
    if s.size == 0:
        return []
    y = np.log10(v) if log_y else v
    s0, s1, y0, y1 = float(s.min()), float(s.max()), float(y.min()), float(y.max())
    fx = (s - s0) / (s1 - s0) if s1 > s0 else np.full(s.shape, 0.5)
    fy = (y - y0) / (y1 - y0) if y1 > y0 else np.full(y.shape, 0.5)
    xs = box.left + fx * box.plot_width
    ys = box.top + (1.0 - fy) * box.plot_height
    return [(float(a), float(b)) for a, b in zip(xs, ys, strict=True)]


def svg_line_plot(
    steps: ArrayLike,
    values: ArrayLike,
    title: str,
    *,
    log_y: bool | None = None,
    color: str = "#2563eb",
    box: PlotBox = PLOT,
    max_points: int = MAX_POINTS,
) -> str:
    """``values`` against ``steps`` as one inline ``<svg>`` with a ``<polyline>``.

    ``log_y=None``: logarithmic y when every finite value is positive. Axis labels give the
    first/last step and the smallest/largest value; non-finite values are counted in the
    caption, not drawn. Coordinates are those of :func:`plot_points`.
    """
    v = np.asarray(values, dtype=np.float64)
    s = np.asarray(steps, dtype=np.float64)
    ok = np.isfinite(v) & np.isfinite(s)
    if log_y is None:
        log_y = bool(ok.any()) and bool((v[ok] > 0).all())
    drawn = ok & (v > 0) if log_y else ok
    points = plot_points(s, v, log_y=log_y, box=box, max_points=max_points)
    w, h = box.width, box.height
    x0, x1 = box.left, box.left + box.plot_width
    y0, y1 = box.top, box.top + box.plot_height
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" role="img" aria-label="{_e(title)}">',
        f'<text x="{w / 2:.0f}" y="15" text-anchor="middle" font-size="12" '
        f'font-weight="600">{_e(title)}</text>',
        f'<rect x="{x0}" y="{y0}" width="{box.plot_width}" height="{box.plot_height}" '
        'fill="#fff" stroke="#d8dee8"/>',
    ]
    if not points:
        parts.append(
            f'<text x="{w / 2:.0f}" y="{h / 2:.0f}" text-anchor="middle" font-size="11" '
            'fill="#6b7280">no values to draw</text>'
        )
    else:
        vs, ss = v[drawn], s[drawn]
        lo, hi = float(vs.min()), float(vs.max())
        parts += [
            f'<text x="{x0 - 4}" y="{y0 + 9}" text-anchor="end" font-size="10">{_fmt(hi)}</text>',
            f'<text x="{x0 - 4}" y="{y1}" text-anchor="end" font-size="10">{_fmt(lo)}</text>',
            f'<text x="{x0}" y="{y1 + 13}" font-size="10">{_fmt(float(ss.min()))}</text>',
            f'<text x="{x1}" y="{y1 + 13}" text-anchor="end" font-size="10">'
            f"{_fmt(float(ss.max()))}</text>",
            f'<polyline fill="none" stroke="{_e(color)}" stroke-width="1.5" points="'
            + " ".join(f"{x:.2f},{y:.2f}" for x, y in points)
            + '"/>',
        ]
        if len(points) == 1:
            ((px, py),) = points
            parts.append(f'<circle cx="{px:.2f}" cy="{py:.2f}" r="2.5" fill="{_e(color)}"/>')
    caption = f"step{' · log y' if log_y else ''} · {int(drawn.sum())} point(s)"
    hidden = int(v.size - drawn.sum())
    if hidden:
        caption += f", {hidden} not drawn ({'non-positive or ' if log_y else ''}non-finite)"
    parts.append(
        f'<text x="{w / 2:.0f}" y="{h - 4}" text-anchor="middle" font-size="10" '
        f'fill="#4b5563">{_e(caption)}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------- report

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d2330;
background:#fafbfc;line-height:1.4}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:28px 0 8px;border-bottom:2px solid #d8dee8;
padding-bottom:4px}
table{border-collapse:collapse;margin:6px 0 10px;background:#fff}
th,td{border:1px solid #d8dee8;padding:3px 8px;font-size:13px}th{background:#eef2f7}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#6b7280;font-size:12px}
.plots{display:flex;flex-wrap:wrap;gap:10px}.plot{background:#fff;border:1px solid #d8dee8;padding:4px}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:2px 12px;font-size:13px}
dl.meta dt{color:#4b5563}dl.meta dd{margin:0;font-family:ui-monospace,monospace;word-break:break-all}
pre{white-space:pre-wrap;word-break:break-word;font-size:12px}
"""


def _numeric(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name)
    if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
        raise TypeError(f"column {name!r} is not numeric")
    return np.asarray(col.to_pylist(), dtype=np.float64)  # None -> nan


def _numeric_columns(table: pa.Table) -> list[str]:
    return [
        f.name
        for f in table.schema
        if f.name != STEP and (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))
    ]


def _flatten(data: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(data, Mapping):
        for key, value in data.items():
            yield from _flatten(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), data


def _config_section(config_text: str | None) -> str:
    if config_text is None:
        return f'<p class="muted">no {CONFIG_FILE} beside the metrics</p>'
    try:
        data = yaml.safe_load(config_text)
    except yaml.YAMLError as err:
        return f'<p class="muted">{CONFIG_FILE} does not parse ({_e(err)}):</p><pre>{_e(config_text)}</pre>'
    if not isinstance(data, Mapping):
        return f"<pre>{_e(config_text)}</pre>"
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in _flatten(data))
    return f'<dl class="meta">{items}</dl>'


def _summary_table(table: pa.Table, steps: np.ndarray) -> str:
    rows = []
    for name in _numeric_columns(table):
        v = _numeric(table, name)
        ok = np.isfinite(v)
        if not ok.any():
            rows.append(f"<tr><td>{_e(name)}</td><td colspan=3>no finite values</td></tr>")
            continue
        last = float(v[ok][-1])
        i_min = int(np.flatnonzero(ok)[np.argmin(v[ok])])
        rows.append(
            f'<tr><td>{_e(name)}</td><td class="num">{_fmt(last)}</td>'
            f'<td class="num">{_fmt(float(v[i_min]))}</td>'
            f'<td class="num">{int(steps[i_min])}</td></tr>'
        )
    if not rows:
        return "<p>No numeric columns.</p>"
    head = "<tr><th>column</th><th>last</th><th>min</th><th>step of min</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _plots(items: Sequence[tuple[str, np.ndarray, bool | None, str]], steps: np.ndarray) -> str:
    return (
        '<div class="plots">'
        + "".join(
            f'<div class="plot">{svg_line_plot(steps, v, title, log_y=log_y, color=color)}</div>'
            for title, v, log_y, color in items
        )
        + "</div>"
    )


def render_train_report(
    table: pa.Table, config_text: str | None = None, *, source: str = ""
) -> str:
    """The report page for a metrics ``table`` (see the module docstring)."""
    names = table.column_names
    if STEP not in names:
        raise ValueError(f"metrics from {source or 'the table'} have no {STEP!r} column")
    steps = _numeric(table, STEP)
    numeric = set(_numeric_columns(table))
    losses = [n for n in names if n in numeric and (n == "loss" or n.startswith("loss_"))]
    rates = [n for n in names if n in numeric and (n == "lr" or n.startswith("lr_"))]
    loss_plots = [(n, _numeric(table, n), None, "#2563eb") for n in losses]
    speed_plots: list[tuple[str, np.ndarray, bool | None, str]] = []
    timing = DATA_TIME in numeric and STEP_TIME in numeric
    if timing:
        data_t, step_t = _numeric(table, DATA_TIME), _numeric(table, STEP_TIME)
    if "samples_per_s" in numeric:
        speed_plots.append(("samples/s", _numeric(table, "samples_per_s"), False, "#059669"))
    if "images_per_s" in numeric:
        speed_plots.append(("images/s", _numeric(table, "images_per_s"), False, "#059669"))
    share_note = ""
    if timing:
        with np.errstate(divide="ignore", invalid="ignore"):
            share = data_t / step_t
        speed_plots.append(("data loader share of step time", share, False, "#d97706"))
        ok = np.isfinite(data_t) & np.isfinite(step_t)
        total, waiting = float(step_t[ok].sum()), float(data_t[ok].sum())
        if total > 0:
            share_note = (
                f"<p>Data loader share of all step time: {100 * waiting / total:.1f} % "
                f"({_fmt(waiting)} s of {_fmt(total)} s).</p>"
            )
    lr_plots = [(n, _numeric(table, n), False, "#7c3aed") for n in rates]
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    span = f"steps {int(steps.min())} to {int(steps.max())}" if steps.size else "no steps yet"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>InstantMesh training report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>InstantMesh training report</h1>",
        f'<p class="muted">{_e(source)} · {table.num_rows} row(s), {_e(span)} · '
        f"generated {_e(now)}</p>",
        f'<section id="config"><h2>Run config</h2>{_config_section(config_text)}</section>',
        '<section id="summary"><h2>Last and minimum values</h2>'
        f"{_summary_table(table, steps)}</section>",
        '<section id="losses"><h2>Losses</h2>'
        + (_plots(loss_plots, steps) if loss_plots else "<p>No loss columns.</p>")
        + "</section>",
        '<section id="throughput"><h2>Throughput and data loading</h2>'
        + share_note
        + (_plots(speed_plots, steps) if speed_plots else "<p>No timing columns.</p>")
        + "</section>",
        '<section id="lr"><h2>Learning rate</h2>'
        + (_plots(lr_plots, steps) if lr_plots else "<p>No learning-rate column.</p>")
        + "</section>",
        "</body></html>",
    ]
    return "\n".join(parts)


def write_train_report(out_url: str) -> str:
    """Write ``<out>/report.html`` from ``<out>/metrics.parquet`` (and ``<out>/config.yaml`` when
    present) and return its URL."""
    metrics_url = storage.join(out_url, METRICS_FILE)
    if not storage.exists(metrics_url):
        raise FileNotFoundError(f"no training metrics at {metrics_url}")
    config_url = storage.join(out_url, CONFIG_FILE)
    config_text = storage.read_text(config_url) if storage.exists(config_url) else None
    text = render_train_report(read_metrics(metrics_url), config_text, source=out_url)
    url = storage.join(out_url, REPORT_FILE)
    atomic_write_bytes(url, text.encode("utf-8"))
    return url
