"""``imesh filter``: the five-criteria high-quality Objaverse filter as a cascade on Ray.

The cascade is read from the criteria registry (``filtering.criteria.FILTER_CRITERIA``: each
criterion's name, stage, description and check); the stages below run whatever criteria it
lists for them, in its order:

1. **metadata** (driver, vectorised over the whole annotation table): ``no_caption``,
   ``lowpoly``. Objects whose metadata shard is missing, or whose GLB is not in the cache, are
   ``error`` (never kept, listed in the report).
2. **files** (Ray stage ``filter-files``; survivors only): each GLB is loaded once for
   ``unreadable``, ``no_texture`` (a base-colour image must be declared and decode) and
   ``multiple_parts`` (welded components grouped by proximity; ``filtering.criteria``).
3. **coverage** (Ray stage ``filter-coverage``; survivors of 1-2): ``tiny_in_view``, the object's
   alpha coverage in each of the 32 *training* cameras of ``(uid, seed)`` (the same cameras
   ``imesh render --layout instantmesh32`` uses), from a silhouette pass of the CPU rasterizer
   at ``--silhouette-size`` px. Why a silhouette pass rather than reading the renders: the
   filter runs *before* rendering so the ~2/3 of Objaverse it drops is never rendered with
   Cycles; a 96 px silhouette costs milliseconds per view and coverage is a ratio, so it
   matches the 512 px render's up to boundary pixels. ``--coverage renders --renders <root>``
   reads ``render.json`` of existing training renders instead.

With ``--no-cascade`` every criterion runs on every object (the all-failing counts of the
funnel then cover the full set). Outputs under ``--out``::

    filtered_obj_name.json     {"good_objs": [...], "all_objs": [...]}  (upstream loader's key)
    filter_decisions.parquet   uid, one nullable bool per criterion, error, kept, reasons, details
    funnel.md, funnel.svg      the funnel report
    filter-files/, filter-coverage/   status/results tables of the Ray stages (resumable)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import pyarrow as pa
import tyro

from filtering.criteria import (
    COVERAGE_THRESHOLD,
    CriterionParams,
    MeshFile,
    criteria_help,
    criterion_names,
    gate_names,
    object_reasons,
    stage_flags,
)
from filtering.funnel import (
    Judgement,
    build_decisions,
    funnel_markdown,
    funnel_svg,
    good_objs_json,
)
from filtering.metadata_pass import metadata_pass
from filtering.objaverse_cache import default_cache_root
from pipelines import storage
from pipelines.configs import NO_HASH, ConfigError, write_resolved_config
from pipelines.fingerprint import fingerprint, row_mesh_inputs
from pipelines.ingest import IngestConfig, build_manifest
from pipelines.runner import RunOptions, StageReport, run_stage
from pipelines.schema import manifest_from_rows, read_manifest, read_parquet, write_parquet
from pipelines.stage import ItemContext, Stage
from rendering.cameras import training_cameras
from rendering.output_layouts import LAYOUT_DIRS, read_record


@dataclass
class FilterConfig:
    """Filter Objaverse objects by the paper's five criteria (cascade; per-object reasons)."""

    out: str
    """Output root (URL): filtered_obj_name.json, filter_decisions.parquet, funnel.md/.svg."""
    cache: str = str(default_cache_root())
    """Objaverse cache root (the folder holding hf-objaverse-v1/); ignored with --manifest."""
    captions: str | None = None
    """Cap3D captions CSV (Cap3D_automated_Objaverse_full.csv); required unless the manifest
    already has a caption column."""
    manifest: str | None = None
    """An existing manifest from `imesh ingest` (with name, tags, caption) instead of the cache."""
    cascade: Annotated[
        bool,
        tyro.conf.arg(
            help="Run expensive criteria only on survivors of the cheap ones (--no-cascade: all "
            f"on all). {criteria_help()}"
        ),
    ] = True
    """Run expensive criteria only on survivors of the cheap ones (--no-cascade: all on all);
    the criteria and their stages come from ``filtering.criteria.FILTER_CRITERIA``."""
    coverage: Literal["silhouette", "renders"] = "silhouette"
    """Where per-view coverage comes from: a CPU silhouette pass, or existing training renders."""
    renders: str | None = None
    """Render output root holding rendering_random_32views/<uid>/render.json (--coverage renders)."""
    coverage_threshold: float = COVERAGE_THRESHOLD
    """Drop an object whose alpha coverage is below this fraction in any view."""
    views: int = 32
    """Training views per object (must match the renders)."""
    seed: int = 0
    """Camera seed (must match the renders: cameras are a function of (uid, seed))."""
    silhouette_size: int = 96
    """Silhouette resolution in pixels for the coverage pass."""
    gap_ratio: float = 0.05
    """multiple_parts: parts whose boxes are farther apart than this x the diagonal are separate."""
    min_part_ratio: float = 0.01
    """multiple_parts: ignore parts smaller than this x the diagonal."""
    run: RunOptions = field(default_factory=RunOptions, metadata=NO_HASH)
    """Execution settings (workers, shard size, progress)."""
    address: str | None = field(default=None, metadata=NO_HASH)
    """Ray cluster address; default: RAY_ADDRESS if set, else a local embedded Ray."""


@dataclass
class FilterResult:
    decisions: pa.Table
    reports: list[StageReport]
    stage_stats: list[dict[str, Any]]
    out: str

    @property
    def kept(self) -> int:
        return sum(1 for k in self.decisions["kept"].to_pylist() if k)


FILES_SCHEMA = pa.schema([("reasons", pa.list_(pa.string()))])
COVERAGE_SCHEMA = pa.schema([("coverage", pa.list_(pa.float64())), ("min_coverage", pa.float64())])


def criterion_params(cfg: FilterConfig) -> CriterionParams:
    """The thresholds the criteria's checks read, from the filter's options."""
    return CriterionParams(
        gap_ratio=cfg.gap_ratio,
        min_part_ratio=cfg.min_part_ratio,
        coverage_threshold=cfg.coverage_threshold,
    )


def files_item(row: dict[str, Any], ctx: ItemContext) -> dict[str, Any]:
    cfg: FilterConfig = ctx.config
    path, temporary = storage.local_path(row["mesh_uri"])
    try:
        reasons = object_reasons("files", MeshFile(path), criterion_params(cfg))
    finally:
        if temporary:
            path.unlink(missing_ok=True)
    return {"reasons": reasons}


def _coverage_setup(cfg: FilterConfig) -> Any:
    from rendering.backends import RenderSettings, make_backend

    return make_backend("cpu", RenderSettings(shading="unlit", threads=1))


def coverage_item(row: dict[str, Any], ctx: ItemContext) -> dict[str, Any]:
    from rendering.backends import prepare_object

    cfg: FilterConfig = ctx.config
    path, temporary = storage.local_path(row["mesh_uri"])
    try:
        obj, _ = prepare_object(path)
        cams = training_cameras(ctx.uid, cfg.seed, n=cfg.views, size=cfg.silhouette_size)
        views = ctx.state.render(obj, cams)
    finally:
        if temporary:
            path.unlink(missing_ok=True)
    coverage = [v.coverage for v in views]
    return {"coverage": coverage, "min_coverage": min(coverage)}


def files_inputs(row: dict[str, Any], cfg: Any) -> str:
    """The GLB's content (a replaced GLB is judged again on resume) and the file criteria the
    registry lists (a criterion added later is applied to objects judged before it)."""
    return fingerprint(mesh=row_mesh_inputs(row, cfg), criteria=criterion_names("files"))


FILES_STAGE = Stage(
    name="filter-files",
    process=files_item,
    result_schema=FILES_SCHEMA,
    input_fingerprint=files_inputs,
)
COVERAGE_STAGE = Stage(
    name="filter-coverage",
    process=coverage_item,
    result_schema=COVERAGE_SCHEMA,
    setup=_coverage_setup,
    input_fingerprint=row_mesh_inputs,
)


def check_filter_config(cfg: FilterConfig) -> pa.Table:
    """Everything about a filter job that can be checked without Ray and without writing under
    ``--out``: option values, the input paths, and the annotation table (returned)."""
    if not 0.0 <= cfg.coverage_threshold <= 1.0:
        raise ConfigError(f"--coverage-threshold must be in [0, 1], got {cfg.coverage_threshold}")
    if cfg.coverage == "renders":
        if not cfg.renders:
            raise ConfigError("--coverage renders needs --renders <render output root>")
        if not storage.exists(cfg.renders):
            raise ConfigError(f"--renders {cfg.renders}: no such render output root")
    if cfg.manifest is not None:
        if not storage.exists(cfg.manifest):
            raise ConfigError(f"--manifest {cfg.manifest}: no such file")
    elif not storage.exists(cfg.cache):
        raise ConfigError(f"--cache {cfg.cache}: no such Objaverse cache root")
    if cfg.captions is not None and not storage.exists(cfg.captions):
        raise ConfigError(f"--captions {cfg.captions}: no such file")
    return _load_table(cfg)


def _load_table(cfg: FilterConfig) -> pa.Table:
    if cfg.manifest is not None:
        table = read_manifest(cfg.manifest)
    else:
        table = build_manifest(
            IngestConfig(out="", cache=cfg.cache, captions=cfg.captions, compute_sha256=False)
        )
    if (cfg.manifest is None and cfg.captions is None) or "caption" not in table.column_names:
        raise ConfigError(
            "no captions: give --captions Cap3D_automated_Objaverse_full.csv (criterion 4 needs "
            "them), or a --manifest built by `imesh ingest --captions ...`"
        )
    for col in ("name", "tags"):
        if col not in table.column_names:
            raise ConfigError(f"manifest lacks column {col!r} (build it with `imesh ingest`)")
    return table


def _apply_stage(
    report: StageReport, judgements: dict[str, Judgement], stage: str, parse: Any
) -> None:
    status = read_parquet(report.status_uri)
    results = {r["uid"]: r for r in read_parquet(report.results_uri).to_pylist()}
    for row in status.to_pylist():
        j = judgements[row["uid"]]
        if row["status"] == "ok":
            parse(j, results[row["uid"]])
        else:
            j.error = f"{stage}: {row['error_type']}: {row['error']}"


def _parse_files(j: Judgement, result: dict[str, Any]) -> None:
    # criteria after a failing gate (an unreadable file) stay unset: not judged
    j.flags.update(stage_flags("files", result["reasons"]))
    j.details += list(result["reasons"])


def _coverage_parser(params: CriterionParams) -> Any:
    def parse(j: Judgement, result: dict[str, Any]) -> None:
        reasons = object_reasons("coverage", result["coverage"], params)
        j.flags.update(stage_flags("coverage", reasons))
        j.min_coverage = float(result["min_coverage"])
        j.details += reasons

    return parse


def _coverage_from_renders(
    cfg: FilterConfig, uids: list[str], judgements: dict[str, Judgement]
) -> None:
    if not cfg.renders:
        raise ConfigError("--coverage renders needs --renders <render output root>")
    parse = _coverage_parser(criterion_params(cfg))
    for uid in uids:
        folder = Path(cfg.renders) / LAYOUT_DIRS["instantmesh32"] / uid
        try:
            record = read_record(folder)
            cov = [c for vs in record["view_sets"].values() for c in vs["coverage"]]
            parse(judgements[uid], {"coverage": cov, "min_coverage": min(cov)})
        except (OSError, ValueError, KeyError) as e:
            judgements[uid].error = f"coverage: no usable render record in {folder} ({e})"


def run_filter(cfg: FilterConfig, table: pa.Table | None = None) -> FilterResult:
    """Run the cascade (Ray must be initialised; see ``pipelines.ray_session``). ``table``: the
    annotation table :func:`check_filter_config` returned (checked again otherwise); nothing is
    written under ``--out`` before the inputs are checked."""
    t0 = time.perf_counter()
    if table is None:
        table = check_filter_config(cfg)
    storage.makedirs(cfg.out)
    write_resolved_config(cfg, storage.join(cfg.out, "filter.config.yaml"))
    stats: list[dict[str, Any]] = []
    params = criterion_params(cfg)
    uids: list[str] = table["uid"].to_pylist()
    meta = metadata_pass(table, params)
    metadata_criteria = criterion_names("metadata")
    gates = gate_names()
    judgements: dict[str, Judgement] = {}
    rows = table.to_pylist()
    for row, m in zip(rows, meta.to_pylist(), strict=True):
        j = Judgement({c: m[c] for c in metadata_criteria}, [])
        j.details += [f"{r}: from metadata" for r in m["reasons"]]
        if row.get("metadata_error"):
            j.error = f"metadata: {row['metadata_error']}"
        elif row.get("glb_present") is False:
            j.error = f"files: GLB not in the cache ({row['mesh_uri']})"
        judgements[row["uid"]] = j
    stats.append({"stage": "metadata", "objects": len(uids), "seconds": time.perf_counter() - t0})

    def survivors() -> list[dict[str, Any]]:
        return [
            r
            for r in rows
            if judgements[r["uid"]].error is None
            and not any(judgements[r["uid"]].flags.get(g) for g in gates)
            and (not cfg.cascade or not any(judgements[r["uid"]].flags.values()))
        ]

    reports: list[StageReport] = []
    todo = survivors()
    report = run_stage(FILES_STAGE, cfg, _stage_manifest(todo), cfg.out, cfg.run)
    reports.append(report)
    _apply_stage(report, judgements, "files", _parse_files)
    stats.append({"stage": "files", "objects": len(todo), "seconds": report.seconds})

    todo = survivors()
    if cfg.coverage == "silhouette":
        report = run_stage(COVERAGE_STAGE, cfg, _stage_manifest(todo), cfg.out, cfg.run)
        reports.append(report)
        _apply_stage(report, judgements, "coverage", _coverage_parser(params))
        seconds = report.seconds
    else:
        t1 = time.perf_counter()
        _coverage_from_renders(cfg, [r["uid"] for r in todo], judgements)
        seconds = time.perf_counter() - t1
    stats.append({"stage": "coverage", "objects": len(todo), "seconds": seconds})

    decisions = build_decisions(uids, judgements)
    write_parquet(decisions, storage.join(cfg.out, "filter_decisions.parquet"))
    storage.atomic_write_text(
        storage.join(cfg.out, "filtered_obj_name.json"), good_objs_json(decisions)
    )
    storage.atomic_write_text(storage.join(cfg.out, "funnel.md"), funnel_markdown(decisions, stats))
    storage.atomic_write_text(storage.join(cfg.out, "funnel.svg"), funnel_svg(decisions))
    return FilterResult(decisions, reports, stats, cfg.out)


def _stage_manifest(rows: list[dict[str, Any]]) -> pa.Table:
    keep = ("uid", "source", "mesh_uri", "sha256")
    return manifest_from_rows([{k: r.get(k) for k in keep} for r in rows])
