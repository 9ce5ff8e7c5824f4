"""``imesh demo``: the whole chain on procedural objects, local embedded Ray, CPU only.

Steps (each resumable; re-running the demo on the same ``--out`` skips finished work):

1. ``fixtures``: procedural Objaverse-shaped cache + Cap3D CSV + GSO/Omni3D-shaped folders;
2. ``ingest``: the Objaverse cache -> ``manifests/objaverse.parquet``;
3. ``inspect``: every object loaded, validated and measured on Ray;
4. ``filter``: the five criteria (cascade) -> ``filter/filtered_obj_name.json`` + funnel;
5. ``render``: the kept objects' 32 training views (Blender Cycles when bpy is installed, else
   the CPU rasterizer; small size and few samples so it stays fast on 2 cores);
   then ``shards``: those renders as WebDataset tar shards (``imesh shards``) in ``shards/``;
6. ``evalset``: GSO- and Omni3D-shaped evaluation sets (GT meshes + GT views);
7. ``benchmark``: ``visual-hull`` and ``oracle`` predictions -> metrics -> run records ->
   paper-style tables + HTML report.

It ends with a summary of what happened and where the outputs are; for each stage with
failures, the failures by cause and the failed objects with their full cause.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table

from pipelines.benchmark import BenchmarkConfig, run_benchmark
from pipelines.configs import NO_HASH, registry_choices, write_resolved_config
from pipelines.evalset import EvalsetConfig, run_evalset
from pipelines.filter import FilterConfig, FilterResult, run_filter
from pipelines.fixtures import FixturesConfig, fixture_paths, make_fixtures
from pipelines.ingest import IngestConfig, run_ingest
from pipelines.inspect_meshes import InspectConfig, run_inspect
from pipelines.ray_session import ray_session
from pipelines.render import RenderConfig, run_render
from pipelines.report import ReportConfig, run_report
from pipelines.runner import RunOptions, StageReport
from pipelines.schema import read_parquet
from pipelines.shards import ShardsConfig, run_shards
from pipelines.summary import make_console, print_report_failures, stage_table
from rendering.backends import BACKENDS

if TYPE_CHECKING:
    DemoBackend = str
else:  # the demo runs without a GPU: "auto" or a backend that needs none
    DemoBackend = registry_choices(["auto", *(n for n, e in BACKENDS.items() if not e.needs_gpu)])


@dataclass
class DemoConfig:
    """Run the demo chain on procedural objects (no downloads, no GPU)."""

    out: str = "demo_out"
    """Output directory (local) for fixtures, manifests, stage outputs and status tables."""
    seed: int = 0
    """Seed of the procedural fixtures."""
    render_backend: DemoBackend = "auto"
    """Training renders: blender (Cycles CPU) when bpy is installed (auto), else cpu."""
    render_size: int = 96
    """Training render size in pixels (the real layout uses 512)."""
    render_samples: int = 4
    """Cycles samples per pixel for the demo's training renders."""
    eval_size: int = 96
    """Evaluation view size in pixels (the paper uses 320)."""
    run: RunOptions = field(default_factory=RunOptions, metadata=NO_HASH)
    """Execution settings (workers, shard size, progress)."""
    address: str | None = field(default=None, metadata=NO_HASH)
    """Ray cluster address; default: RAY_ADDRESS if set, else a local embedded Ray."""


def _backend(cfg: DemoConfig) -> str:
    if cfg.render_backend != "auto":
        return cfg.render_backend
    from rendering.backends import unavailable_reason

    return "blender" if unavailable_reason("blender") is None else "cpu"


def run_demo(cfg: DemoConfig, console: Console | None = None) -> list[StageReport]:
    console = console or make_console()
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    write_resolved_config(cfg, str(out / "demo.config.yaml"))

    console.print(f"[bold]1/7 fixtures[/] -> {out / 'fixtures'}")
    record = make_fixtures(FixturesConfig(out=str(out / "fixtures"), seed=cfg.seed))
    paths = fixture_paths(out / "fixtures")

    manifest_uri = str(out / "manifests" / "objaverse.parquet")
    console.print(f"[bold]2/7 ingest[/] -> {manifest_uri}")
    manifest = run_ingest(
        IngestConfig(
            out=manifest_uri, cache=str(paths["objaverse_cache"]), captions=str(paths["captions"])
        )
    )
    console.print(
        f"    {manifest.num_rows} objects, "
        f"{manifest.num_rows - manifest['caption'].null_count} with captions"
    )
    reports: list[StageReport] = []
    with ray_session(cfg.address):
        console.print(f"[bold]3/7 inspect[/] on Ray -> {out / 'inspect'}")
        report = run_inspect(
            InspectConfig(manifest=manifest_uri, out=str(out), run=cfg.run, address=cfg.address)
        )
        reports.append(report)
        _inspect_summary(console, report, record)

        console.print(f"[bold]4/7 filter[/] -> {out / 'filter'}")
        filtered = run_filter(
            FilterConfig(out=str(out / "filter"), manifest=manifest_uri, run=cfg.run)
        )
        reports += filtered.reports
        _filter_summary(console, filtered, record)

        backend = _backend(cfg)
        console.print(f"[bold]5/7 render[/] 32 training views ({backend}) -> {out / 'renders'}")
        kept = filtered.decisions.filter(filtered.decisions["kept"])["uid"].to_pylist()
        table = manifest.filter(pa.array([u in set(kept) for u in manifest["uid"].to_pylist()]))
        reports.append(
            run_render(
                RenderConfig(
                    out=str(out / "renders"),
                    backend=backend,
                    size=cfg.render_size,
                    samples=cfg.render_samples,
                    run=cfg.run,
                ),
                manifest=table,
            )
        )
        shards = run_shards(
            ShardsConfig(
                renders=str(out / "renders"),
                out=str(out / "shards"),
                run=dataclasses.replace(cfg.run, shard_size=1),
            )
        )
        reports.append(shards.report)
        console.print(
            f"    shards: {shards.report.ok} WebDataset tar shard(s), {shards.objects} objects, "
            f"{shards.bytes / 1e6:.1f} MB -> {out / 'shards'}"
        )
        if shards.complete and shards.objects:
            console.print(f"    dataset: {_read_back(out / 'shards', cfg.seed)}")

        console.print(f"[bold]6/7 evalset[/] GSO- and Omni3D-shaped -> {out / 'evalsets'}")
        for dataset, root in (("gso", paths["gso"]), ("omni3d", paths["omni3d"])):
            reports.append(
                run_evalset(
                    EvalsetConfig(
                        dataset=dataset,  # type: ignore[arg-type]
                        root=str(root),
                        out=str(out / "evalsets"),
                        size=cfg.eval_size,
                        run=cfg.run,
                    )
                )
            )

        console.print(f"[bold]7/7 benchmark[/] visual-hull and oracle -> {out / 'runs'}")
        evalsets = [str(out / "evalsets" / "gso"), str(out / "evalsets" / "omni3d")]
        for predictor in ("visual-hull", "oracle"):
            run_reports, _ = run_benchmark(
                BenchmarkConfig(
                    evalsets=evalsets,
                    out=str(out / "runs" / predictor),
                    predictor=predictor,  # type: ignore[arg-type]
                    n_points=4000,
                    report=False,
                    run=cfg.run,
                )
            )
            reports += run_reports
    run_report(
        ReportConfig(
            runs=[str(out / "runs" / "visual-hull"), str(out / "runs" / "oracle")],
            out=str(out / "report"),
        )
    )
    console.print(stage_table(reports))
    print_report_failures(reports, console)
    console.print(
        "outputs:\n"
        f"  filter:     {out / 'filter'}/filtered_obj_name.json, funnel.md, filter_decisions.parquet\n"
        f"  renders:    {out / 'renders' / 'rendering_random_32views'}/<uid>/\n"
        f"  shards:     {out / 'shards'}/shard-*.tar, index.parquet, _SUCCESS.json\n"
        f"  evalsets:   {out / 'evalsets'}/{{gso,omni3d}}/objects/<uid>/\n"
        f"  runs:       {out / 'runs'}/{{visual-hull,oracle}}/metrics/*.parquet\n"
        f"  report:     {out / 'report'}/tables.md, tables.tex, report.html"
    )
    return reports


def _read_back(shards: Path, seed: int) -> str:
    """One batch of LRM training items read back from the shards (the trainer's view)."""
    import torch

    from instantmesh.lrm_data import Instantmesh32Dataset

    dataset = Instantmesh32Dataset(shards, seed=seed)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=2)))
    keys = ("input_images", "input_depths", "input_c2ws", "target_images", "render_cameras")
    shapes = ", ".join(f"{k} {tuple(batch[k].shape)}" for k in keys)
    return f"Instantmesh32Dataset batch of {len(batch['uid'])}: {shapes}"


def _inspect_summary(console: Console, report: StageReport, record: dict[str, Any]) -> None:
    results = read_parquet(report.results_uri)
    if results.num_rows:
        summary = Table(title="inspected objects")
        for col in ("objects ok", "textured", "multi-part", "faces (median)"):
            summary.add_column(col, justify="right")
        summary.add_row(
            str(results.num_rows),
            str(pc.sum(results["has_texture"]).as_py()),
            str(pc.sum(pc.greater(results["n_components"], 1)).as_py()),
            str(int(pc.approximate_median(results["n_faces"]).as_py())),
        )
        console.print(summary)
    expected_unreadable = sum(
        1 for o in record["objaverse"] if "unreadable" in o["expected_reasons"]
    )
    console.print(
        f"failed objects: {report.failed} (the fixtures include {expected_unreadable} "
        "deliberately truncated GLB)"
    )


def _filter_summary(console: Console, filtered: FilterResult, record: dict[str, Any]) -> None:
    rows = {r["uid"]: r for r in filtered.decisions.to_pylist()}
    wrong = [
        o["kind"]
        for o in record["objaverse"]
        if rows[o["uid"]]["kept"] != (not o["expected_reasons"])
        or rows[o["uid"]]["reasons"][:1] != o["expected_reasons"][:1]
    ]
    console.print(
        f"    kept {filtered.kept} of {len(rows)}; fixtures landing where built to land: "
        f"{len(rows) - len(wrong)}/{len(rows)}" + (f" (wrong: {wrong})" if wrong else "")
    )
