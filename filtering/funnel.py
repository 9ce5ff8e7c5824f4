"""The filter's decision table and its funnel report (markdown + SVG bar chart).

Decision table (one row per input object; ``build_decisions``): ``uid``, one nullable boolean
column per criterion in :data:`CASCADE` order (``True`` = the object fails it, ``None`` = not
evaluated because an earlier stage of the cascade already dropped it), ``error`` (the object
could not be judged: missing metadata, missing file, a crashed check; never kept), ``kept``,
``reasons`` (reason names, cascade order) and ``details`` (the full reason strings).

Funnel (``funnel_rows``): per criterion, the number of objects whose *first* failing criterion
(in cascade order) it is, the number failing it among the objects it was evaluated on, and how
many that was; then the objects kept. First-failing counts add up exactly: in = sum + kept.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from filtering.criteria import CASCADE_STAGES, FILTER_CRITERIA, criterion_names

ERROR = "error"
"""Reason of an object that could not be judged (it is dropped and listed, never kept)."""

CASCADE: tuple[tuple[str, tuple[str, ...]], ...] = tuple(
    (stage, criterion_names(stage)) for stage in CASCADE_STAGES
)
"""Stages in the order they run and the criteria each decides, from the criteria registry
(``filtering.criteria.FILTER_CRITERIA``). Metadata criteria are vectorised over the whole
annotation table (~1 M rows/s); file criteria load each surviving GLB once (texture + connected
parts); the coverage criterion rasterizes silhouettes of the survivors of both, the most
expensive step, last."""

CRITERIA: tuple[str, ...] = criterion_names()

DESCRIPTIONS: dict[str, str] = {
    **{c.name: c.description for c in FILTER_CRITERIA.values()},
    ERROR: "could not be judged (error)",
}

DECISION_SCHEMA = pa.schema(
    [("uid", pa.string())]
    + [(c, pa.bool_()) for c in CRITERIA]
    + [
        (ERROR, pa.bool_()),
        ("kept", pa.bool_()),
        ("reasons", pa.list_(pa.string())),
        ("details", pa.list_(pa.string())),
        ("min_coverage", pa.float64()),
    ]
)


@dataclass
class Judgement:
    """What the cascade found out about one object (filled stage by stage)."""

    flags: dict[str, bool]
    details: list[str]
    error: str | None = None
    min_coverage: float | None = None


def build_decisions(uids: Sequence[str], judgements: Mapping[str, Judgement]) -> pa.Table:
    """The decision table for ``uids`` (input order). A uid without a judgement is an error
    (it must never be silently kept or silently dropped)."""
    rows: dict[str, list[Any]] = {name: [] for name in DECISION_SCHEMA.names}
    for uid in uids:
        j = judgements.get(uid) or Judgement({}, [], error="no decision recorded")
        rows["uid"].append(uid)
        failed = []
        for c in CRITERIA:
            value = j.flags.get(c)
            rows[c].append(value)
            if value:
                failed.append(c)
        if j.error is not None:
            failed.append(ERROR)
        rows[ERROR].append(j.error is not None)
        rows["kept"].append(not failed)
        rows["reasons"].append(failed)
        rows["details"].append(list(j.details) + ([f"{ERROR}: {j.error}"] if j.error else []))
        rows["min_coverage"].append(j.min_coverage)
    return pa.table(rows, schema=DECISION_SCHEMA)


def good_objs_json(decisions: pa.Table) -> str:
    """``filtered_obj_name.json``: ``good_objs`` (kept uids, input order; the upstream loader's
    key) and ``all_objs`` (every judged uid)."""
    uids = decisions["uid"].to_pylist()
    kept = decisions["kept"].to_pylist()
    good = [u for u, k in zip(uids, kept, strict=True) if k]
    return json.dumps({"good_objs": good, "all_objs": uids}, indent=1)


@dataclass(frozen=True)
class FunnelRow:
    criterion: str
    first_failing: int
    failing: int
    evaluated: int


def funnel_rows(decisions: pa.Table) -> list[FunnelRow]:
    """Per criterion (cascade order, then ``error``): first-failing, failing and evaluated."""
    reasons = decisions["reasons"].to_pylist()
    first = [r[0] if r else None for r in reasons]
    out = []
    for c in (*CRITERIA, ERROR):
        col = decisions[c].to_pylist()
        out.append(
            FunnelRow(
                criterion=c,
                first_failing=sum(1 for f in first if f == c),
                failing=sum(1 for v in col if v),
                evaluated=sum(1 for v in col if v is not None),
            )
        )
    return out


def funnel_markdown(
    decisions: pa.Table,
    stage_stats: Sequence[Mapping[str, Any]] = (),
    title: str = "Objaverse filter funnel",
) -> str:
    """The funnel as markdown: counts per criterion, kept, and the cascade's stage savings
    (``stage_stats``: dicts with ``stage``, ``objects`` (entering), ``seconds``)."""
    n = decisions.num_rows
    kept = sum(1 for k in decisions["kept"].to_pylist() if k)
    lines = [
        f"# {title}",
        "",
        f"Objects in: **{n}** -> kept: **{kept}** ({_pct(kept, n)}).",
        "",
        "| criterion | meaning | dropped here (first failing) | failing / evaluated |",
        "| --- | --- | ---: | ---: |",
    ]
    for r in funnel_rows(decisions):
        lines.append(
            f"| `{r.criterion}` | {DESCRIPTIONS[r.criterion]} | {r.first_failing} | "
            f"{r.failing} / {r.evaluated} |"
        )
    lines += [f"| **kept** | passes every criterion | {kept} | |", ""]
    lines.append(
        f"First-failing counts follow the cascade order ({' -> '.join(CASCADE_STAGES)}) and add up "
        "to the input count with the kept objects. A criterion is evaluated only on objects that "
        "reached its stage, unless the filter ran with `--no-cascade`."
    )
    if stage_stats:
        lines += [
            "",
            "## Cascade",
            "",
            "| stage | objects evaluated | share of input | seconds |",
            "| --- | ---: | ---: | ---: |",
        ]
        for s in stage_stats:
            lines.append(
                f"| {s['stage']} | {s['objects']} | {_pct(int(s['objects']), n)} | "
                f"{float(s['seconds']):.1f} |"
            )
    return "\n".join(lines) + "\n"


def funnel_svg(decisions: pa.Table, width: int = 640) -> str:
    """A horizontal bar chart of the funnel (remaining objects after each criterion)."""
    n = decisions.num_rows
    remaining = n
    bars = [("objects in", n)]
    for r in funnel_rows(decisions):
        remaining -= r.first_failing
        bars.append((f"after {r.criterion}", remaining))
    row_h, left, top = 26, 150, 30
    height = top + row_h * len(bars) + 10
    scale = (width - left - 70) / max(n, 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<text x="10" y="18" font-weight="bold">Filter funnel ({n} objects)</text>',
    ]
    for i, (label, value) in enumerate(bars):
        y = top + i * row_h
        w = max(value * scale, 0.0)
        parts.append(
            f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{html.escape(label)}</text>'
        )
        parts.append(
            f'<rect x="{left}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" fill="#4c78a8"/>'
        )
        parts.append(f'<text x="{left + w + 6:.1f}" y="{y + 15}">{value}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _pct(k: int, n: int) -> str:
    return f"{100.0 * k / n:.1f} %" if n else "n/a"
