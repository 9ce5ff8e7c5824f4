"""Paper-style summary tables (InstantMesh Tables 2-4) from run records, beside published numbers.

Aggregation (per run, predictor, dataset and view set; :func:`paper_tables`):

* **Columns** come from the metric registry (:data:`evaluation.metric_registry.METRICS`):
  its labels, arrows, formats and directions. A registry entry marked ``optional`` (the
  best-aligned ``CD aligned`` / ``FS aligned`` of ``--align search``) gets a column only in
  tables where one of the shown runs has values for it.
* **Image metrics** (per-view entries: PSNR, SSIM, LPIPS): first the mean over the views of
  one object (all views of that object in the view set), then the plain mean of those
  per-object means over the objects. Every object therefore weighs the same whatever its
  number of views.
* **Geometry metrics** (per-object entries: Chamfer Distance, F-Score): one value per object;
  mean over objects.
* **Which objects count**: only objects whose status is ``ok`` *and* that have every metric
  the table needs (image rows in the view set; a geometry row when the table has geometry
  columns and the run has geometry rows at all). All columns of a row are averaged over that
  same set of objects. The row's ``Objects`` cell reads ``ok/total`` where ``total`` counts
  every object of the run in that dataset (``metrics/objects.parquet``); rows where
  ``ok < total`` carry a marker (``⚠`` in Markdown/HTML, ``$^\\dagger$`` in LaTeX) and a note
  giving the number of failed and incomplete objects. Failures are never averaged away
  silently.
* **LPIPS** is shown only when the run says LPIPS was available with a real backbone
  (``lpips_available`` and a backbone not ending in ``-random``) and every counted object has
  LPIPS values; otherwise the cell reads ``n/a`` and a note says why and, when the backbone
  weights were absent, which file is needed, where it goes and the command that installs it
  from a local copy (:func:`evaluation.metrics.lpips_install_hint`). The LPIPS backbone of
  each run is listed under the table (the paper's is unknown: LPIPS numbers from different
  backbones are not comparable).
* Non-finite values propagate: an object with identical prediction and GT has PSNR ``inf``,
  and so does the mean. Numbers are printed as PSNR ``.2f``, others ``.3f``.

Row labels say each thing once: ``visual-hull (ours)`` when the run id repeats the predictor,
variant or run label, else ``instantmesh/mesh-large (ours, nightly-3)``.

Reference rows are shown only when they hold a number in one of the table's cells; empty
reference cells (``null`` in the YAML: not verified from the paper) print as ``–``. A table
whose reference rows hold no number at all shows none of them and one note instead: the
paper's numbers are not on file, and where to add them.
Bold (LaTeX) marks the best displayed value per column among the shown rows (reference and
ours, ties all bold; only when at least two rows have a value).

The reference YAML (default: ``evaluation/data/paper_reference.yaml``) defines the tables:
``source`` (paper, arxiv id, version, verified) and ``tables``: a list of ``{key, title,
paper_table, dataset, view_set, metrics, rows: [{method, <metric>: number|null}]}``. Our rows
go into the table whose (dataset, view_set) matches; (dataset, view_set) pairs of our runs
without a reference table get a table of their own (orbit tables with geometry columns).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from evaluation.metric_registry import METRICS, Metric, metric_names
from evaluation.run_records import EvaluationInputError, RunInfo, RunRecords, read_bytes

__all__ = [
    "DEFAULT_REFERENCE",
    "GEOMETRY_EXTRA",
    "GEOMETRY_METRICS",
    "IMAGE_METRICS",
    "METRICS",
    "MetricSpec",
    "Reference",
    "ReferenceFileError",
    "ReferenceTable",
    "Table",
    "TableRow",
    "format_value",
    "load_reference",
    "lpips_hints",
    "paper_tables",
    "per_object_geometry",
    "per_object_image_means",
    "tables_to_latex",
    "tables_to_markdown",
]

DEFAULT_REFERENCE = Path(__file__).resolve().parent / "data" / "paper_reference.yaml"
"""The packaged reference file (InstantMesh paper, arXiv 2404.07191)."""


MetricSpec = Metric
"""Former name of a metric entry (now :class:`evaluation.metric_registry.Metric`)."""
IMAGE_METRICS: tuple[str, ...] = metric_names("view", optional=False)
"""The per-view (image) metrics every run has: psnr, ssim, lpips (from the registry)."""
GEOMETRY_METRICS: tuple[str, ...] = metric_names("object", optional=False)
"""The per-object (geometry) metrics every run has: chamfer, fscore (from the registry)."""
GEOMETRY_EXTRA: tuple[str, ...] = ("precision", "recall", "fscore_threshold")
"""Per-object columns beside the geometry metrics (not table columns)."""

MISSING = "–"
"""Cell text for a value nobody has (a null reference cell, or no object to average)."""
UNAVAILABLE = "n/a"
"""Cell text for a metric our run could not compute (e.g. LPIPS without backbone weights)."""
FAILURE_MARK = "⚠"


class ReferenceFileError(EvaluationInputError):
    """A reference-table YAML that does not fit the expected layout."""


def format_value(metric: str, value: float | None) -> str:
    """Display text of one cell: ``–`` for None, ``inf``/``nan`` as such, else the metric's
    registry format (PSNR ``.2f``, others ``.3f``)."""
    if value is None:
        return MISSING
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(value, METRICS[metric].fmt)


# --------------------------------------------------------------------------- per-object values


def per_object_image_means(
    records: RunRecords,
) -> dict[tuple[str, str, str], dict[str, dict[str, float | None]]]:
    """``{(predictor, dataset, view_set): {uid: {metric: mean over the object's views}}}``
    for every per-view metric of the registry.

    Also holds ``"n_views"`` per object. An object's value of a metric is None when any of its
    views has no value, or when the run's values are not usable (LPIPS unavailable or from a
    random trunk).
    """
    t = records.image_metrics
    cols = {c: t.column(c).to_pylist() for c in ("predictor", "dataset", "uid", "view_set")}
    view_metrics = [m for m in metric_names("view") if _usable(records.info, m)]
    vals = {m: t.column(m).to_numpy(zero_copy_only=False).astype(np.float64) for m in view_metrics}
    nulls = {m: t.column(m).is_null().to_numpy(zero_copy_only=False) for m in view_metrics}
    groups: dict[tuple[str, str, str, str], list[int]] = defaultdict(list)
    for i, key in enumerate(
        zip(cols["predictor"], cols["dataset"], cols["view_set"], cols["uid"], strict=True)
    ):
        groups[key].append(i)
    out: dict[tuple[str, str, str], dict[str, dict[str, float | None]]] = defaultdict(dict)
    for (pred, ds, vs, uid), idx in groups.items():
        ia = np.asarray(idx)
        obj: dict[str, float | None] = dict.fromkeys(metric_names("view"))
        for m in view_metrics:
            if not nulls[m][ia].any():
                obj[m] = float(np.mean(vals[m][ia]))
        obj["n_views"] = float(len(idx))
        out[(pred, ds, vs)][uid] = obj
    return dict(out)


def _usable(info: RunInfo, metric: str) -> bool:
    """Whether a run's values of ``metric`` are real numbers (LPIPS: available and not from a
    random trunk; every other metric: yes)."""
    return info.lpips_usable if metric == "lpips" else True


def per_object_geometry(
    records: RunRecords,
) -> dict[tuple[str, str], dict[str, dict[str, float | None]]]:
    """``{(predictor, dataset): {uid: {metric: value}}}`` for every per-object metric of the
    registry (None where an optional metric was not computed) and :data:`GEOMETRY_EXTRA`."""
    t = records.geometry_metrics
    names = (*metric_names("object"), *GEOMETRY_EXTRA)
    data = {c: t.column(c).to_pylist() for c in ("predictor", "dataset", "uid", *names)}
    out: dict[tuple[str, str], dict[str, dict[str, float | None]]] = defaultdict(dict)
    for i in range(t.num_rows):
        out[(data["predictor"][i], data["dataset"][i])][data["uid"][i]] = {
            n: None if data[n][i] is None else float(data[n][i]) for n in names
        }
    return dict(out)


def object_status(records: RunRecords) -> dict[tuple[str, str], dict[str, str]]:
    """``{(predictor, dataset): {uid: status}}`` from ``objects.parquet``."""
    t = records.objects
    p, d, u, s = (t.column(c).to_pylist() for c in ("predictor", "dataset", "uid", "status"))
    out: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for pred, ds, uid, st in zip(p, d, u, s, strict=True):
        out[(pred, ds)][uid] = st
    return dict(out)


# --------------------------------------------------------------------------- reference file


@dataclass
class ReferenceRow:
    method: str
    values: dict[str, float | None]


@dataclass
class ReferenceTable:
    key: str
    title: str
    dataset: str
    view_set: str
    metrics: tuple[str, ...]
    rows: list[ReferenceRow]
    paper_table: int | None = None
    source: dict[str, Any] = field(default_factory=dict)


@dataclass
class Reference:
    source: dict[str, Any]
    tables: list[ReferenceTable]
    path: str | None = None

    def citation(self, table: ReferenceTable | None = None) -> str:
        """e.g. ``arXiv 2404.07191 v2, Table 2``."""
        src = {**self.source, **(table.source if table else {})}
        parts = []
        if src.get("arxiv"):
            parts.append(
                f"arXiv {src['arxiv']}" + (f" {src['version']}" if src.get("version") else "")
            )
        elif src.get("paper"):
            parts.append(str(src["paper"]))
        if table is not None and table.paper_table is not None:
            parts.append(f"Table {table.paper_table}")
        return ", ".join(parts) or "unspecified source"

    def source_text(self, table: ReferenceTable | None = None) -> str:
        """e.g. ``arXiv 2404.07191 v2, Table 2 (verified)``."""
        src = {**self.source, **(table.source if table else {})}
        verified = bool(src.get("verified"))
        return (
            f"{self.citation(table)} "
            f"({'verified' if verified else 'not verified: empty cells are unknown'})"
        )


_TABLE_KEYS = {"key", "title", "paper_table", "dataset", "view_set", "metrics", "rows", "source"}


def load_reference(source: str | Path | Mapping[str, Any] | None = None) -> Reference:
    """Load reference tables from a YAML file/URL, an already-parsed mapping, or (``None``)
    the packaged :data:`DEFAULT_REFERENCE`. Raises :class:`ReferenceFileError`."""
    path: str | None = None
    if source is None or isinstance(source, str | Path):
        path = str(source if source is not None else DEFAULT_REFERENCE)
        try:
            text = read_bytes(path).decode("utf-8")
        except FileNotFoundError as e:
            raise ReferenceFileError(f"reference file not found: {path}") from e
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ReferenceFileError(f"{path}: not valid YAML ({e})") from e
    else:
        data = dict(source)
    where = path or "reference"
    if not isinstance(data, dict):
        raise ReferenceFileError(f"{where}: expected a mapping with 'source' and 'tables'")
    unknown = sorted(set(data) - {"source", "tables"})
    if unknown:
        raise ReferenceFileError(f"{where}: unknown key(s) {', '.join(unknown)}")
    src = data.get("source") or {}
    if not isinstance(src, dict):
        raise ReferenceFileError(f"{where}: 'source' must be a mapping")
    raw_tables = data.get("tables") or []
    if not isinstance(raw_tables, list):
        raise ReferenceFileError(f"{where}: 'tables' must be a list")
    tables = [_parse_table(t, f"{where}: tables[{i}]") for i, t in enumerate(raw_tables)]
    keys = [t.key for t in tables]
    if len(set(keys)) != len(keys):
        raise ReferenceFileError(f"{where}: duplicated table key(s)")
    return Reference(source=src, tables=tables, path=path)


def _parse_table(raw: Any, where: str) -> ReferenceTable:
    if not isinstance(raw, dict):
        raise ReferenceFileError(f"{where}: expected a mapping")
    unknown = sorted(set(raw) - _TABLE_KEYS)
    if unknown:
        raise ReferenceFileError(f"{where}: unknown key(s) {', '.join(unknown)}")
    for k in ("key", "dataset", "view_set", "metrics"):
        if k not in raw:
            raise ReferenceFileError(f"{where}: missing key {k!r}")
    metrics = raw["metrics"]
    if not isinstance(metrics, list) or not metrics:
        raise ReferenceFileError(f"{where}: 'metrics' must be a non-empty list")
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise ReferenceFileError(
            f"{where}: unknown metric(s) {bad}; expected from {list(METRICS)} "
            "(evaluation/metric_registry.py)"
        )
    rows = []
    for j, r in enumerate(raw.get("rows") or []):
        loc = f"{where}.rows[{j}]"
        if not isinstance(r, dict) or "method" not in r:
            raise ReferenceFileError(f"{loc}: expected a mapping with 'method'")
        extra = sorted(set(r) - {"method", *metrics})
        if extra:
            raise ReferenceFileError(f"{loc}: key(s) {extra} are not metrics of this table")
        values: dict[str, float | None] = {}
        for m in metrics:
            v = r.get(m)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
                raise ReferenceFileError(f"{loc}.{m}: expected a number or null, got {v!r}")
            values[m] = None if v is None else float(v)
        rows.append(ReferenceRow(method=str(r["method"]), values=values))
    paper_table = raw.get("paper_table")
    if paper_table is not None and not isinstance(paper_table, int):
        raise ReferenceFileError(f"{where}.paper_table: expected an integer or null")
    return ReferenceTable(
        key=str(raw["key"]),
        title=str(raw.get("title") or raw["key"]),
        dataset=str(raw["dataset"]),
        view_set=str(raw["view_set"]),
        metrics=tuple(metrics),
        rows=rows,
        paper_table=paper_table,
        source=dict(raw.get("source") or {}),
    )


# --------------------------------------------------------------------------- tables


@dataclass
class TableRow:
    """One displayed row: a published reference row or one of ours."""

    label: str
    values: dict[str, float | None]
    is_reference: bool
    run_id: str | None = None
    predictor: str | None = None
    n_ok: int | None = None
    """Objects averaged (status ok and every needed metric present)."""
    n_total: int | None = None
    """Objects of the run in this dataset (the ``objects.parquet`` rows)."""
    n_failed: int = 0
    n_incomplete: int = 0
    """Objects with status ok but without every metric the table needs."""
    unavailable: frozenset[str] = frozenset()
    """Metrics the run could not compute (shown as ``n/a``)."""
    notes: list[str] = field(default_factory=list)

    @property
    def has_failures(self) -> bool:
        return self.n_total is not None and (self.n_ok or 0) < self.n_total

    def cell(self, metric: str) -> str:
        if metric in self.unavailable:
            return UNAVAILABLE
        return format_value(metric, self.values.get(metric))

    def objects_cell(self, mark: str = FAILURE_MARK) -> str:
        if self.n_total is None:
            return MISSING
        text = f"{self.n_ok}/{self.n_total}"
        return f"{text} {mark}" if self.has_failures and mark else text


@dataclass
class Table:
    """A summary table: reference rows first, then ours."""

    key: str
    title: str
    dataset: str
    view_set: str
    metrics: tuple[str, ...]
    rows: list[TableRow]
    notes: list[str] = field(default_factory=list)
    source: str | None = None
    """Where the reference rows come from (None for tables without a reference)."""

    # ----- shared display cells (Markdown, LaTeX and HTML print the same strings)
    def header_cells(self, arrows: bool = True) -> list[str]:
        heads = [METRICS[m].header + (METRICS[m].arrow if arrows else "") for m in self.metrics]
        return ["Method", *heads, "Objects (ok/total)"]

    def best(self) -> dict[str, set[int]]:
        """Per metric, the indices of rows holding the best *displayed* value (ties all;
        empty when fewer than two rows have a value)."""
        out: dict[str, set[int]] = {}
        for m in self.metrics:
            shown: list[tuple[int, float]] = []
            for i, r in enumerate(self.rows):
                text = r.cell(m)
                if text in (MISSING, UNAVAILABLE, "nan"):
                    continue
                shown.append((i, float(text)))
            if len(shown) < 2:
                out[m] = set()
                continue
            pick = max if METRICS[m].higher_is_better else min
            target = pick(v for _, v in shown)
            out[m] = {i for i, v in shown if v == target}
        return out

    def all_notes(self) -> list[str]:
        notes = []
        for r in self.rows:
            notes.extend(r.notes)
        notes.extend(self.notes)
        return notes

    # ----- renderers
    def to_markdown(self, heading_level: int = 3) -> str:
        """GitHub-flavoured Markdown: a heading, the table, then notes as a list."""
        lines = [f"{'#' * heading_level} {self.title}", ""]
        head = self.header_cells()
        lines.append("| " + " | ".join(head) + " |")
        lines.append("| --- | " + " | ".join("---:" for _ in head[1:]) + " |")
        for r in self.rows:
            cells = [_md_escape(r.label), *(r.cell(m) for m in self.metrics), r.objects_cell()]
            lines.append("| " + " | ".join(cells) + " |")
        notes = self.all_notes()
        if notes:
            lines.append("")
            lines.extend(f"- {_md_escape(n)}" for n in notes)
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        """A booktabs ``table`` environment; best value per column in bold; arrows in headers;
        a midrule between reference rows and ours; ``$^\\dagger$`` marks rows with failures."""
        best = self.best()
        arrows = {True: r"$\uparrow$", False: r"$\downarrow$"}
        head = ["Method"]
        head += [
            _tex_escape(METRICS[m].header) + arrows[METRICS[m].higher_is_better]
            for m in self.metrics
        ]
        head.append("Objects")
        lines = [
            r"\begin{table}[t]",
            r"\centering",
            r"\caption{" + _tex_escape(self.title) + "}",
            r"\label{tab:" + _tex_label(self.key) + "}",
            r"\begin{tabular}{l" + "c" * len(self.metrics) + "r}",
            r"\toprule",
            " & ".join(head) + r" \\",
            r"\midrule",
        ]
        previous_ref: bool | None = None
        for i, r in enumerate(self.rows):
            if previous_ref is True and not r.is_reference:
                lines.append(r"\midrule")
            previous_ref = r.is_reference
            label = _tex_escape(r.label) + (r"$^\dagger$" if r.has_failures else "")
            cells = [label]
            for m in self.metrics:
                text = r.cell(m)
                if text == MISSING:
                    cells.append("--")
                    continue
                text = _tex_escape(text)
                cells.append(r"\textbf{" + text + "}" if i in best[m] else text)
            objects = r.objects_cell(mark="")
            cells.append("--" if objects == MISSING else objects)
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        notes = self.all_notes()
        if notes:
            lines.append(r"\par\smallskip{\footnotesize")
            lines.extend(_tex_escape(n).replace(FAILURE_MARK, r"$^\dagger$") + r"\\" for n in notes)
            lines.append("}")
        lines.append(r"\end{table}")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "dataset": self.dataset,
            "view_set": self.view_set,
            "metrics": list(self.metrics),
            "source": self.source,
            "notes": list(self.notes),
            "rows": [
                {
                    "label": r.label,
                    "is_reference": r.is_reference,
                    "run_id": r.run_id,
                    "predictor": r.predictor,
                    "values": dict(r.values),
                    "unavailable": sorted(r.unavailable),
                    "n_ok": r.n_ok,
                    "n_total": r.n_total,
                    "n_failed": r.n_failed,
                    "n_incomplete": r.n_incomplete,
                    "notes": list(r.notes),
                }
                for r in self.rows
            ],
        }


_MD_SPECIAL = str.maketrans({"|": r"\|", "\n": " ", "\r": " "})


def _md_escape(text: str) -> str:
    return text.translate(_MD_SPECIAL)


_TEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "\n": " ",
    "–": "--",
}


def _tex_escape(text: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in text)


def _tex_label(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-:." else "-" for ch in text)


def tables_to_markdown(tables: Sequence[Table]) -> str:
    return "\n".join(t.to_markdown() for t in tables)


def tables_to_latex(tables: Sequence[Table]) -> str:
    header = "% Generated by imesh report. Needs \\usepackage{booktabs}.\n"
    return header + "\n".join(t.to_latex() for t in tables)


# --------------------------------------------------------------------------- aggregation


def _row_label(records: RunRecords, predictor: str) -> str:
    """``<run label> (ours, <run id>)``, the run id left out when the label already says it
    (a run directory named after its predictor or variant): each thing once."""
    info = records.info
    name = info.label if predictor == info.predictor else predictor
    said = {predictor, name}
    if predictor == info.predictor and info.variant:
        said |= {info.variant, f"{info.predictor}/{info.variant}"}
    return f"{name} (ours)" if info.run_id in said else f"{name} (ours, {info.run_id})"


ImageMeans = Mapping[tuple[str, str, str], Mapping[str, Mapping[str, float | None]]]
GeometryValues = Mapping[tuple[str, str], Mapping[str, Mapping[str, float | None]]]


def _requested_lpips_net(info: RunInfo) -> str | None:
    """The ``lpips_net`` the run's evaluate config asked for (None when not recorded)."""
    evaluate = info.config.get("evaluate")
    if isinstance(evaluate, Mapping):
        for cfg in evaluate.values():
            if isinstance(cfg, Mapping) and isinstance(cfg.get("lpips_net"), str):
                return str(cfg["lpips_net"])
    return None


def _lpips_missing_net(info: RunInfo) -> str | None:
    """The real backbone whose weights a run lacked (None when LPIPS is usable, was switched
    off, or came from a random trunk)."""
    if info.lpips_usable or info.lpips_available:
        return None
    from evaluation.metrics import DEFAULT_LPIPS_NET, LPIPS_NETS

    net = _requested_lpips_net(info) or DEFAULT_LPIPS_NET
    return net if net in LPIPS_NETS else None


def _lpips_row_note(info: RunInfo) -> str:
    if info.lpips_available:
        return "LPIPS from a random trunk (wiring test): meaningless, not shown"
    if _lpips_missing_net(info) is None and (_requested_lpips_net(info) or "").lower() == "none":
        return "LPIPS not computed in this run (--lpips-net none)"
    return "LPIPS unavailable in this run (backbone weights absent; see the LPIPS note)"


def _forced_render_note(info: RunInfo, dataset: str) -> str | None:
    """The note ``imesh evaluate --force-render-settings`` left in ``run.json``
    (``config.render_settings.<dataset>.note``) when it rendered the predictions unlike the
    evaluation set's GT views; None for a run rendered like them."""
    settings = info.config.get("render_settings")
    entry = settings.get(dataset) if isinstance(settings, Mapping) else None
    note = entry.get("note") if isinstance(entry, Mapping) else None
    return note if isinstance(note, str) and note else None


def _our_rows(
    records: RunRecords,
    dataset: str,
    view_set: str,
    metrics: Sequence[str],
    images: ImageMeans,
    geometry: GeometryValues,
    status: Mapping[tuple[str, str], Mapping[str, str]],
) -> list[TableRow]:
    rows = []
    image_metrics = [m for m in metrics if METRICS[m].scope == "view"]
    geometry_metrics = [m for m in metrics if METRICS[m].scope == "object"]
    for predictor, ds in sorted(status):
        if ds != dataset:
            continue
        objs = status[(predictor, ds)]
        img = images.get((predictor, ds, view_set), {})
        any_images = any(k[0] == predictor and k[1] == ds for k in images)
        if not img and any_images:
            continue  # this run has no rows for this view set (e.g. no benchmark views)
        geo = geometry.get((predictor, ds), {})
        need_geometry = bool(geometry_metrics) and bool(geo)
        ok = [u for u, s in objs.items() if s == "ok"]
        counted = [
            u for u in ok if (not image_metrics or u in img) and (not need_geometry or u in geo)
        ]
        n_failed = sum(1 for s in objs.values() if s != "ok")
        n_incomplete = len(ok) - len(counted)
        label = _row_label(records, predictor)
        values: dict[str, float | None] = {}
        unavailable: set[str] = set()
        notes: list[str] = []
        for m in metrics:
            spec = METRICS[m]
            if not _usable(records.info, m) or (spec.scope == "object" and not need_geometry):
                unavailable.add(m)
                values[m] = None
                continue
            per_obj = [(img if spec.scope == "view" else geo)[u][m] for u in counted]
            if spec.optional and per_obj and all(v is None for v in per_obj):
                unavailable.add(m)
                values[m] = None
                notes.append(f"{label}: {spec.label} not computed in this run.")
                continue
            if any(v is None for v in per_obj):
                unavailable.add(m)
                values[m] = None
                k = sum(v is None for v in per_obj)
                notes.append(f"{label}: {spec.label} missing for {k} object(s); not shown.")
                continue
            values[m] = float(np.mean(np.asarray(per_obj, dtype=np.float64))) if per_obj else None
        if "lpips" in metrics and not records.info.lpips_usable:
            notes.append(f"{label}: {_lpips_row_note(records.info)}.")
        forced = _forced_render_note(records.info, dataset)
        if forced and image_metrics:
            notes.append(
                f"{label}: {forced}; its image metrics are not comparable with runs rendered "
                "like the evaluation set."
            )
        if geometry_metrics and not need_geometry:
            notes.append(f"{label}: no geometry metrics in this run.")
        if need_geometry and counted:
            thresholds = sorted({float(geo[u]["fscore_threshold"] or 0.0) for u in counted})
            if thresholds != [0.2]:
                shown = ", ".join(format(t, "g") for t in thresholds)
                notes.append(f"{label}: F-Score threshold(s) {shown} (paper protocol: 0.2).")
        if counted and image_metrics:
            n_views = {int(img[u]["n_views"] or 0) for u in counted}
            if len(n_views) > 1:
                notes.append(
                    f"{label}: views per object vary ({min(n_views)}-{max(n_views)}); "
                    "each object weighs the same."
                )
        row = TableRow(
            label=label,
            values=values,
            is_reference=False,
            run_id=records.info.run_id,
            predictor=predictor,
            n_ok=len(counted),
            n_total=len(objs),
            n_failed=n_failed,
            n_incomplete=n_incomplete,
            unavailable=frozenset(unavailable),
            notes=notes,
        )
        if row.has_failures:
            parts = []
            if n_failed:
                parts.append(f"{n_failed} failed")
            if n_incomplete:
                parts.append(f"{n_incomplete} incomplete (ok but missing metrics)")
            notes.insert(
                0,
                f"{FAILURE_MARK} {label}: {' and '.join(parts)} of {len(objs)} objects; "
                f"means are over the {len(counted)} counted object(s) only.",
            )
        rows.append(row)
    return rows


def _with_optional(
    metrics: Sequence[str],
    dataset: str,
    view_set: str,
    prepared: Sequence[tuple[RunRecords, ImageMeans, GeometryValues, Any]],
) -> tuple[str, ...]:
    """``metrics`` plus the registry's optional metrics of the same scopes for which a run has
    a value in this dataset (and view set), in registry order."""
    scopes = {METRICS[m].scope for m in metrics}

    def has_values(m: str) -> bool:
        for _r, img, geo, _st in prepared:
            if METRICS[m].scope == "view":
                groups = [o for (_p, ds, vs), o in img.items() if ds == dataset and vs == view_set]
            else:
                groups = [o for (_p, ds), o in geo.items() if ds == dataset]
            if any(v.get(m) is not None for objs in groups for v in objs.values()):
                return True
        return False

    extra = {
        m
        for m in metric_names(optional=True)
        if METRICS[m].scope in scopes and m not in metrics and has_values(m)
    }
    return (*metrics, *(m for m in METRICS if m in extra))


def paper_tables(
    records_list: Iterable[RunRecords],
    reference: Reference | str | Path | Mapping[str, Any] | None = None,
) -> list[Table]:
    """The paper's tables with our runs' rows beside the published ones.

    Args:
        records_list: runs to show (each contributes one row per predictor to every table
            whose dataset and view set it has).
        reference: a loaded :class:`Reference`, a YAML path/URL, a parsed mapping, or None
            for the packaged :data:`DEFAULT_REFERENCE`.

    Returns: one :class:`Table` per reference table that has our rows or at least one
    non-null reference cell, in reference order, then one table per further (dataset,
    view_set) of our runs (sorted), without reference rows. Reference rows without a number
    in any of the table's cells are left out (a note says so when none is left).
    """
    ref = reference if isinstance(reference, Reference) else load_reference(reference)
    runs = list(records_list)
    prepared = [
        (r, per_object_image_means(r), per_object_geometry(r), object_status(r)) for r in runs
    ]
    tables: list[Table] = []
    covered: set[tuple[str, str]] = set()
    for rt in ref.tables:
        covered.add((rt.dataset, rt.view_set))
        metrics = _with_optional(rt.metrics, rt.dataset, rt.view_set, prepared)
        ours = []
        for r, img, geo, st in prepared:
            ours += _our_rows(r, rt.dataset, rt.view_set, metrics, img, geo, st)
        ref_rows = [
            TableRow(label=row.method, values=dict(row.values), is_reference=True)
            for row in rt.rows
            if any(v is not None for v in row.values.values())
        ]
        if not ours and not ref_rows:
            continue
        tables.append(
            Table(
                key=rt.key,
                title=rt.title,
                dataset=rt.dataset,
                view_set=rt.view_set,
                metrics=metrics,
                rows=ref_rows + ours,
                notes=_table_notes(ref, rt, bool(ref_rows), runs, metrics),
                source=ref.source_text(rt),
            )
        )
    extra: set[tuple[str, str]] = set()
    covered_datasets = {ds for ds, _vs in covered}
    for _r, img, _geo, st in prepared:
        extra |= {(ds, vs) for (_p, ds, vs) in img} - covered
        # a dataset whose objects all failed (no image rows) still gets a row: in orbit
        with_images = {ds for (_p, ds, _vs) in img}
        extra |= {(ds, "orbit") for (_p, ds) in st if ds not in with_images | covered_datasets}
    for ds, vs in sorted(extra):
        base = metric_names("view", optional=False)
        if vs == "orbit":
            base += metric_names("object", optional=False)
        metrics = _with_optional(base, ds, vs, prepared)
        ours = []
        for r, img, geo, st in prepared:
            ours += _our_rows(r, ds, vs, metrics, img, geo, st)
        tables.append(
            Table(
                key=f"{ds}_{vs}",
                title=f"{ds}, {vs} views (no published reference)",
                dataset=ds,
                view_set=vs,
                metrics=metrics,
                rows=ours,
                notes=_table_notes(None, None, False, runs, metrics),
            )
        )
    return tables


def _table_notes(
    ref: Reference | None,
    rt: ReferenceTable | None,
    shows_reference: bool,
    runs: Sequence[RunRecords],
    metrics: Sequence[str],
) -> list[str]:
    notes = []
    if ref is not None and rt is not None:
        if shows_reference:
            notes.append(f"Reference rows: {ref.source_text(rt)}; {MISSING} = no number on file.")
        else:
            where = ref.path or "the reference YAML"
            notes.append(
                f"The paper's numbers ({ref.citation(rt)}) are not on file: copy them from the "
                f"paper into {where} (or a copy of it passed with imesh report --reference FILE)."
            )
    notes.append(
        "Ours: image metrics are the mean over objects of each object's mean over its views; "
        "geometry metrics the mean over objects; only ok objects with every metric are averaged."
    )
    if "lpips" in metrics and runs:
        backbones = ", ".join(f"{r.info.run_id}: {r.info.lpips_backbone or 'none'}" for r in runs)
        ref_bb = (ref.source.get("lpips_backbone") if ref else None) or "not stated"
        notes.append(
            f"LPIPS backbone: {backbones}"
            + (f"; paper: {ref_bb}" if ref is not None else "")
            + " (different backbones are not comparable)."
        )
        notes.extend(lpips_hints(runs))
    if "fscore" in metrics:
        notes.append("CD = Chamfer Distance, FS = F-Score at 0.2 unless a row note says otherwise.")
    if any(METRICS[m].optional for m in metrics if METRICS[m].scope == "object"):
        notes.append(
            "CD aligned / FS aligned: after the best-alignment search (imesh evaluate --align "
            "search), beside the protocol numbers."
        )
    return notes


def lpips_hints(runs: Iterable[RunRecords]) -> list[str]:
    """One line per LPIPS backbone whose weights the runs lacked: the file needed, where it goes
    and the command that installs it from a local copy
    (:func:`evaluation.metrics.lpips_install_hint`), then one line saying how the column gets
    filled. Empty when no run lacked weights."""
    from evaluation.metrics import lpips_install_hint

    nets = sorted({n for r in runs if (n := _lpips_missing_net(r.info)) is not None})
    if not nets:
        return []
    return [lpips_install_hint(net) for net in nets] + [
        "After installing, run imesh evaluate on the run again: its objects are evaluated "
        "anew, with LPIPS."
    ]
