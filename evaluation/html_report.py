"""A self-contained HTML report of one or more evaluation runs (one ``report.html`` file).

Contents, in order:

1. **Runs**: metadata from each ``run.json`` (predictor, variant, datasets, versions, commit,
   LPIPS backbone and availability).
2. **Summary tables**: the same :class:`evaluation.tables.Table` objects and the same cell
   strings as ``tables.md`` (reference rows, our rows, ``ok/total``, failure markers, notes).
3. **Distributions**: per run, predictor, dataset and view set, a histogram of the per-object
   values of each metric, drawn as inline SVG (no scripts, no external files). Non-finite
   values (e.g. PSNR ``inf``) are counted in the caption, not drawn.
4. **Objects**: per run, predictor, dataset and view set, image grids (ground truth above the
   prediction) for the ``worst_k`` objects by PSNR (lowest per-object mean) and, per dataset,
   by Chamfer Distance (highest), plus ``sample_k`` other ok objects picked with a seeded RNG.
   Each object shows up to ``views_per_object`` views (its lowest-PSNR views). Images come from
   the ``pred_uri`` / ``gt_uri`` columns, are composited on white, downscaled to at most
   ``thumb_px`` pixels and embedded as base64 JPEG data URIs; a missing or unreadable image is
   shown as a placeholder naming the problem (the report never fails on an image).
5. **Failures**: every failed object with its error type and message.

Every string that comes from the records (uids, errors, labels, URIs) is HTML-escaped. The
page uses inline CSS only and needs no JavaScript.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.metric_registry import METRICS, metric_names
from evaluation.run_records import RunRecords, join_url, read_bytes, write_bytes_atomic
from evaluation.tables import (
    MISSING,
    UNAVAILABLE,
    Reference,
    Table,
    format_value,
    lpips_hints,
    object_status,
    paper_tables,
    per_object_geometry,
    per_object_image_means,
)

__all__ = ["REPORT_NAME", "write_html_report"]

REPORT_NAME = "report.html"

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d2330;
background:#fafbfc;line-height:1.4}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:28px 0 8px;border-bottom:2px solid #d8dee8;
padding-bottom:4px}h3{font-size:16px;margin:18px 0 6px}h4{font-size:14px;margin:12px 0 4px}
table{border-collapse:collapse;margin:6px 0 10px;background:#fff}
th,td{border:1px solid #d8dee8;padding:3px 8px;font-size:13px}th{background:#eef2f7;text-align:center}
td.num{text-align:right;font-variant-numeric:tabular-nums}td.ref{color:#555}
tr.ours td{background:#f3f8ff}tr.fail td{background:#fff3e6}
.best{font-weight:700}.muted{color:#6b7280;font-size:12px}.warn{color:#b45309;font-weight:600}
ul.notes{margin:2px 0 10px;padding-left:20px;font-size:12px;color:#4b5563}
.hists{display:flex;flex-wrap:wrap;gap:10px}.hist{background:#fff;border:1px solid #d8dee8;padding:4px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #d8dee8;border-radius:6px;padding:8px;max-width:760px}
.card .uid{font-family:ui-monospace,monospace;font-size:13px;font-weight:600;word-break:break-all}
.grid{display:grid;gap:4px;align-items:start}
.grid figure{margin:0;text-align:center}.grid figcaption{font-size:11px;color:#4b5563}
.grid img{display:block;max-width:160px;max-height:160px;border:1px solid #e5e7eb;background:#fff}
.rowlabel{font-size:11px;color:#4b5563;writing-mode:vertical-rl;transform:rotate(180deg);
align-self:center}
.placeholder{width:120px;height:90px;border:1px dashed #c0c7d2;font-size:10px;color:#6b7280;
display:flex;align-items:center;justify-content:center;text-align:center;padding:4px;
overflow:hidden;word-break:break-all}
pre.err{white-space:pre-wrap;word-break:break-word;margin:0;font-size:12px;max-width:720px}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:2px 12px;font-size:13px}
dl.meta dt{color:#4b5563}dl.meta dd{margin:0;font-family:ui-monospace,monospace;word-break:break-all}
"""

_ERROR_CHARS = 4000


def _e(value: Any) -> str:
    """HTML-escape any value (quotes included, so it is safe in attributes too)."""
    return html.escape("" if value is None else str(value), quote=True)


# --------------------------------------------------------------------------- images


class _Thumbs:
    """Thumbnail cache: uri -> (data URI, None) or (None, reason)."""

    def __init__(self, max_px: int) -> None:
        self.max_px = max_px
        self.cache: dict[str, tuple[str | None, str | None]] = {}

    def get(self, uri: str | None) -> tuple[str | None, str | None]:
        if not uri:
            return None, "no image recorded"
        if uri not in self.cache:
            self.cache[uri] = self._load(uri)
        return self.cache[uri]

    def _load(self, uri: str) -> tuple[str | None, str | None]:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(read_bytes(uri))) as src:
                src.load()
                if src.mode in ("RGBA", "LA", "P", "PA"):
                    rgba = src.convert("RGBA")
                    rgb = Image.new("RGB", rgba.size, (255, 255, 255))
                    rgb.paste(rgba, mask=rgba.getchannel("A"))
                else:
                    rgb = src.convert("RGB")
                rgb.thumbnail((self.max_px, self.max_px), Image.Resampling.LANCZOS)
                buf = io.BytesIO()
                rgb.save(buf, format="JPEG", quality=90)
        except FileNotFoundError:
            return None, "image file not found"
        except Exception as e:  # unreadable / not an image: a placeholder, never a failure
            return None, f"unreadable image ({type(e).__name__})"
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), None

    def figure(self, uri: str | None, caption: str) -> str:
        data, reason = self.get(uri)
        if data is None:
            body = f'<div class="placeholder" title="{_e(uri)}">{_e(reason)}</div>'
        else:
            body = f'<img src="{data}" alt="{_e(caption)}" title="{_e(uri)}">'
        return f"<figure>{body}<figcaption>{_e(caption)}</figcaption></figure>"


# --------------------------------------------------------------------------- SVG histogram


def _svg_histogram(values: Sequence[float], metric: str, title: str) -> str:
    """A small histogram of ``values`` as an inline SVG element (our own drawing)."""
    w, h, left, right, top, bottom = 280, 140, 34, 10, 22, 30
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    n_nonfinite = int(arr.size - finite.size)
    spec = METRICS[metric]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" role="img" aria-label="{_e(title)}">',
        f'<text x="{w / 2:.0f}" y="14" text-anchor="middle" font-size="12" '
        f'font-weight="600">{_e(title)}</text>',
    ]
    plot_w, plot_h = w - left - right, h - top - bottom
    if finite.size == 0:
        parts.append(
            f'<text x="{w / 2:.0f}" y="{h / 2:.0f}" text-anchor="middle" font-size="11" '
            'fill="#6b7280">no finite values</text>'
        )
    else:
        bins = int(min(20, max(5, math.ceil(math.sqrt(finite.size)))))
        counts, edges = np.histogram(finite, bins=bins)
        peak = max(int(counts.max()), 1)
        bw = plot_w / bins
        color = "#3b82f6" if spec.higher_is_better else "#f97316"
        for i, c in enumerate(counts):
            bh = plot_h * int(c) / peak
            x = left + i * bw
            y = top + plot_h - bh
            parts.append(
                f'<rect x="{x + 0.5:.1f}" y="{y:.1f}" width="{max(bw - 1, 0.5):.1f}" '
                f'height="{bh:.1f}" fill="{color}"><title>{_e(format_value(metric, float(edges[i])))}'
                f" to {_e(format_value(metric, float(edges[i + 1])))}: {int(c)}</title></rect>"
            )
        base_y = top + plot_h
        parts += [
            f'<line x1="{left}" y1="{base_y}" x2="{left + plot_w}" y2="{base_y}" stroke="#374151"/>',
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{base_y}" stroke="#374151"/>',
            f'<text x="{left - 3}" y="{top + 8}" text-anchor="end" font-size="10">{peak}</text>',
            f'<text x="{left - 3}" y="{base_y}" text-anchor="end" font-size="10">0</text>',
            f'<text x="{left}" y="{base_y + 12}" font-size="10">'
            f"{_e(format_value(metric, float(edges[0])))}</text>",
            f'<text x="{left + plot_w}" y="{base_y + 12}" text-anchor="end" font-size="10">'
            f"{_e(format_value(metric, float(edges[-1])))}</text>",
        ]
        mean = float(finite.mean())
        mx = left + plot_w * (mean - edges[0]) / max(edges[-1] - edges[0], 1e-12)
        parts.append(
            f'<line x1="{mx:.1f}" y1="{top}" x2="{mx:.1f}" y2="{base_y}" stroke="#111827" '
            'stroke-dasharray="3,2"><title>mean of finite values</title></line>'
        )
    caption = f"n={arr.size} objects, {spec.header}{spec.arrow}"
    if n_nonfinite:
        caption += f", {n_nonfinite} non-finite not drawn"
    parts.append(
        f'<text x="{w / 2:.0f}" y="{h - 4}" text-anchor="middle" font-size="10" '
        f'fill="#4b5563">{_e(caption)}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------- sections


def _runs_section(records_list: Sequence[RunRecords]) -> str:
    out = ['<section id="runs"><h2>Runs</h2>']
    for r in records_list:
        info = r.info
        items: list[tuple[str, Any]] = [
            ("run_id", info.run_id),
            ("predictor", info.label),
            ("datasets", ", ".join(info.datasets) or MISSING),
            ("created_at", info.created_at or MISSING),
            ("git_commit", info.git_commit or MISSING),
            ("versions", ", ".join(f"{k} {v}" for k, v in sorted(info.versions.items()))),
            (
                "LPIPS",
                f"{info.lpips_backbone or 'none'}"
                + ("" if info.lpips_usable else " (not usable: values not shown)")
                + "".join(f" · {hint}" for hint in lpips_hints([r])),
            ),
            ("location", r.uri or "(in memory)"),
        ]
        out.append(f"<h3>{_e(info.run_id)}</h3><dl class='meta'>")
        out += [f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items]
        out.append("</dl>")
    out.append("</section>")
    return "".join(out)


def _table_html(table: Table) -> str:
    best = table.best()
    head = "".join(f"<th>{_e(c)}</th>" for c in table.header_cells())
    rows = []
    for i, r in enumerate(table.rows):
        cls = "ref" if r.is_reference else ("ours fail" if r.has_failures else "ours")
        cells = [f'<td class="{"ref" if r.is_reference else ""}">{_e(r.label)}</td>']
        for m in table.metrics:
            text = r.cell(m)
            klass = "num best" if i in best[m] else "num"
            cells.append(f'<td class="{klass}">{_e(text)}</td>')
        obj = r.objects_cell()
        cells.append(f'<td class="num{" warn" if r.has_failures else ""}">{_e(obj)}</td>')
        rows.append(f'<tr class="{cls}">{"".join(cells)}</tr>')
    notes = "".join(f"<li>{_e(n)}</li>" for n in table.all_notes())
    return (
        f"<h3>{_e(table.title)}</h3><table><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        + (f'<ul class="notes">{notes}</ul>' if notes else "")
    )


def _ok_uids(status: Mapping[str, str]) -> set[str]:
    return {u for u, s in status.items() if s == "ok"}


def _distributions_section(records_list: Sequence[RunRecords]) -> str:
    out = ['<section id="distributions"><h2>Metric distributions (per object)</h2>']
    for r in records_list:
        images = per_object_image_means(r)
        geometry = per_object_geometry(r)
        for (pred, ds, vs), objs in sorted(images.items()):
            charts = []
            for m in metric_names("view"):
                vals: list[float] = [x for v in objs.values() if (x := v[m]) is not None]
                if vals or METRICS[m].required:
                    charts.append(_svg_histogram(vals, m, f"{METRICS[m].header} ({vs})"))
            geo = geometry.get((pred, ds), {}) if vs == "orbit" else {}
            for m in metric_names("object") if geo else ():
                gvals: list[float] = [x for g in geo.values() if (x := g[m]) is not None]
                if gvals or METRICS[m].required:
                    charts.append(_svg_histogram(gvals, m, f"{METRICS[m].header} (3D)"))
            out.append(f"<h3>{_e(r.info.run_id)} · {_e(pred)} · {_e(ds)} · {_e(vs)} views</h3>")
            out.append(
                '<div class="hists">'
                + "".join(f'<div class="hist">{c}</div>' for c in charts)
                + "</div>"
            )
    out.append("</section>")
    return "".join(out)


def _object_card(
    uid: str,
    reason: str,
    metrics: Mapping[str, float | None],
    views: Sequence[Mapping[str, Any]],
    thumbs: _Thumbs,
    views_per_object: int,
    dataset: str = "",
) -> str:
    chosen = sorted(views, key=lambda v: (_psnr_key(v["psnr"]), v["view"]))[:views_per_object]
    inputs = _inputs_row(uid, dataset, views, thumbs)
    chosen = sorted(chosen, key=lambda v: v["view"])
    summary = ", ".join(
        f"{METRICS[m].header} {format_value(m, v)}" for m, v in metrics.items() if m in METRICS
    )
    cols = len(chosen) + 1
    cells = ['<div class="rowlabel">GT</div>']
    cells += [thumbs.figure(v["gt_uri"], f"view {v['view']}") for v in chosen]
    cells.append('<div class="rowlabel">prediction</div>')
    cells += [
        thumbs.figure(v["pred_uri"], f"view {v['view']} · PSNR {format_value('psnr', v['psnr'])}")
        for v in chosen
    ]
    grid = (
        f'<div class="grid" style="grid-template-columns:16px repeat({cols - 1},auto)">'
        + "".join(cells)
        + "</div>"
        if chosen
        else '<div class="muted">no views recorded</div>'
    )
    return (
        f'<div class="card"><div class="uid">{_e(uid)}</div>'
        f'<div class="muted">{_e(reason)} · {_e(summary)}</div>{inputs}{grid}</div>'
    )


def _inputs_row(uid: str, dataset: str, views: Sequence[Mapping[str, Any]], thumbs: _Thumbs) -> str:
    """input | the predictor's six views (``views.png`` beside the prediction, when the
    predictor wrote one: generated by Zero123++ or, for a GT-views ablation, the GT's) | the
    six views rendered from the GT. Paths follow the run and evaluation-set layouts:
    ``<run>/eval_renders/<ds>/<uid>/<view set>/NNN.png`` and
    ``<evalset>/objects/<uid>/<view set>/NNN.png``."""
    first = next((v for v in views if v.get("pred_uri") and v.get("gt_uri")), None)
    if first is None or not dataset:
        return ""
    run = str(first["pred_uri"]).rsplit("/", 5)[0]
    views_uri = f"{run}/predictions/{dataset}/{uid}/views.png"
    if thumbs.get(views_uri)[0] is None:
        return ""
    gt_obj = str(first["gt_uri"]).rsplit("/", 2)[0]
    cells = [
        thumbs.figure(f"{gt_obj}/input.png", "input"),
        thumbs.figure(views_uri, "predictor's six views"),
        *(thumbs.figure(f"{gt_obj}/zero123pp/{k:03d}.png", f"GT view {k}") for k in range(1, 7)),
    ]
    return (
        '<div class="grid" style="grid-template-columns:repeat(8,auto)">'
        + "".join(cells)
        + "</div>"
    )


def _psnr_key(v: float) -> float:
    return v if not math.isnan(v) else -math.inf


def _objects_section(
    records_list: Sequence[RunRecords],
    worst_k: int,
    sample_k: int,
    views_per_object: int,
    thumbs: _Thumbs,
    seed: int,
) -> str:
    out = ['<section id="objects"><h2>Objects: ground truth vs prediction</h2>']
    rng = np.random.default_rng(seed)
    for r in records_list:
        images = per_object_image_means(r)
        geometry = per_object_geometry(r)
        status = object_status(r)
        t = r.image_metrics
        cols = {
            c: t.column(c).to_pylist()
            for c in (
                "predictor",
                "dataset",
                "view_set",
                "uid",
                "view",
                "psnr",
                "pred_uri",
                "gt_uri",
            )
        }
        views: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
        for i in range(t.num_rows):
            key = (cols["predictor"][i], cols["dataset"][i], cols["view_set"][i], cols["uid"][i])
            views.setdefault(key, []).append(
                {c: cols[c][i] for c in ("view", "psnr", "pred_uri", "gt_uri")}
            )
        for (pred, ds, vs), objs in sorted(images.items()):
            ok = _ok_uids(status.get((pred, ds), {}))
            objs = {u: v for u, v in objs.items() if u in ok}
            if not objs:
                continue
            geo = geometry.get((pred, ds), {})
            lists: list[tuple[str, list[str]]] = []
            by_psnr = sorted(objs, key=lambda u: (_psnr_key(objs[u]["psnr"] or 0.0), u))
            if worst_k > 0:
                lists.append((f"Lowest PSNR (worst {worst_k})", by_psnr[:worst_k]))
                if vs == "orbit" and geo:
                    by_cd = sorted(
                        (u for u in objs if u in geo),
                        key=lambda u: (-(geo[u]["chamfer"] or 0.0), u),
                    )
                    lists.append((f"Highest Chamfer Distance (worst {worst_k})", by_cd[:worst_k]))
            shown = {u for _, us in lists for u in us}
            rest = sorted(set(objs) - shown)
            if sample_k > 0 and rest:
                pick = rng.choice(len(rest), size=min(sample_k, len(rest)), replace=False)
                lists.append(("Random sample of other objects", [rest[i] for i in sorted(pick)]))
            out.append(f"<h3>{_e(r.info.run_id)} · {_e(pred)} · {_e(ds)} · {_e(vs)} views</h3>")
            for title, uids in lists:
                out.append(f"<h4>{_e(title)}</h4><div class='cards'>")
                for u in uids:
                    metrics: dict[str, float | None] = {
                        m: v for m in metric_names("view") if (v := objs[u][m]) is not None
                    }
                    if u in geo and vs == "orbit":
                        metrics.update(
                            {m: v for m in metric_names("object") if (v := geo[u][m]) is not None}
                        )
                    out.append(
                        _object_card(
                            u,
                            title.split(" (")[0],
                            metrics,
                            views.get((pred, ds, vs, u), []),
                            thumbs,
                            views_per_object,
                            ds,
                        )
                    )
                out.append("</div>")
    out.append("</section>")
    return "".join(out)


def _failures_section(records_list: Sequence[RunRecords]) -> str:
    out = ['<section id="failures"><h2>Failures</h2>']
    total = 0
    for r in records_list:
        t = r.objects
        cols = {
            c: t.column(c).to_pylist()
            for c in ("predictor", "dataset", "uid", "status", "error_type", "error")
        }
        failed = [i for i, s in enumerate(cols["status"]) if s != "ok"]
        total += len(failed)
        out.append(f"<h3>{_e(r.info.run_id)}: {len(failed)} failed of {t.num_rows} objects</h3>")
        if not failed:
            continue
        out.append(
            "<table><thead><tr><th>predictor</th><th>dataset</th><th>uid</th>"
            "<th>error type</th><th>error</th></tr></thead><tbody>"
        )
        for i in sorted(failed, key=lambda i: (cols["dataset"][i], cols["uid"][i])):
            err = cols["error"][i] or ""
            if len(err) > _ERROR_CHARS:
                err = err[:_ERROR_CHARS] + f" … ({len(err) - _ERROR_CHARS} more characters)"
            out.append(
                f"<tr class='fail'><td>{_e(cols['predictor'][i])}</td><td>{_e(cols['dataset'][i])}</td>"
                f"<td class='uid'>{_e(cols['uid'][i])}</td><td>{_e(cols['error_type'][i] or MISSING)}</td>"
                f"<td><pre class='err'>{_e(err or MISSING)}</pre></td></tr>"
            )
        out.append("</tbody></table>")
    if total == 0:
        out.append("<p>No failed objects.</p>")
    out.append("</section>")
    return "".join(out)


# --------------------------------------------------------------------------- entry point


def render_html_report(
    records_list: Iterable[RunRecords],
    *,
    worst_k: int = 5,
    reference: Reference | str | Path | Mapping[str, Any] | None = None,
    tables: Sequence[Table] | None = None,
    sample_k: int = 3,
    views_per_object: int = 4,
    thumb_px: int = 160,
    seed: int = 0,
) -> str:
    """The report as an HTML string (see :func:`write_html_report` for the arguments)."""
    runs = list(records_list)
    if worst_k < 0 or sample_k < 0 or views_per_object < 1 or thumb_px < 8:
        raise ValueError(
            "worst_k and sample_k must be >= 0, views_per_object >= 1 and thumb_px >= 8"
        )
    if tables is None:
        tables = paper_tables(runs, reference)
    thumbs = _Thumbs(thumb_px)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    n_fail = sum(sum(1 for s in r.objects.column("status").to_pylist() if s != "ok") for r in runs)
    summary = "".join(_table_html(t) for t in tables) or "<p>No tables.</p>"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>InstantMesh evaluation report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>InstantMesh evaluation report</h1>",
        f'<p class="muted">{len(runs)} run(s): '
        + ", ".join(_e(r.info.run_id) for r in runs)
        + f" · generated {_e(now)} · "
        + (
            f'<a href="#failures" class="warn">{n_fail} failed object(s)</a>'
            if n_fail
            else "no failures"
        )
        + f" · {UNAVAILABLE} = not computable in that run, {MISSING} = no number</p>",
        _runs_section(runs),
        f'<section id="summary"><h2>Summary tables</h2>{summary}</section>',
        _distributions_section(runs),
        _objects_section(runs, worst_k, sample_k, views_per_object, thumbs, seed),
        _failures_section(runs),
        "</body></html>",
    ]
    return "\n".join(parts)


def write_html_report(
    records_list: Iterable[RunRecords],
    out_uri: str,
    worst_k: int = 5,
    *,
    reference: Reference | str | Path | Mapping[str, Any] | None = None,
    tables: Sequence[Table] | None = None,
    sample_k: int = 3,
    views_per_object: int = 4,
    thumb_px: int = 160,
    seed: int = 0,
) -> str:
    """Write ``report.html`` and return its URL.

    Args:
        records_list: the runs to report.
        out_uri: output directory URL (``report.html`` is written inside), or a URL ending in
            ``.html`` to name the file itself.
        worst_k: objects shown per "worst" list (lowest PSNR; highest Chamfer Distance).
        reference: reference tables for the summary (see :func:`evaluation.tables.paper_tables`).
        tables: already computed tables (then ``reference`` is ignored), so the report shows
            exactly the tables written elsewhere.
        sample_k: further ok objects shown per (run, predictor, dataset, view set), seeded.
        views_per_object: views shown per object (its lowest-PSNR views, in view order).
        thumb_px: thumbnail size bound in pixels.
        seed: seed of the random sample.
    """
    text = render_html_report(
        records_list,
        worst_k=worst_k,
        reference=reference,
        tables=tables,
        sample_k=sample_k,
        views_per_object=views_per_object,
        thumb_px=thumb_px,
        seed=seed,
    )
    url = out_uri if out_uri.endswith(".html") else join_url(out_uri, REPORT_NAME)
    write_bytes_atomic(url, text.encode("utf-8"))
    return url
