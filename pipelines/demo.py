"""``imesh demo``: the whole chain on procedural objects, local embedded Ray, CPU only.

Steps (each resumable; re-running the demo on the same ``--out`` skips finished work):

1. ``fixtures``: procedural Objaverse-shaped cache + Cap3D CSV + GSO/Omni3D-shaped folders;
2. ``ingest``: the Objaverse cache -> ``manifests/objaverse.parquet``;
3. ``inspect``: every object loaded, validated and measured on Ray -> status + results Parquet.

It ends with a summary of what happened and where the outputs are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table

from pipelines import storage
from pipelines.configs import NO_HASH, write_resolved_config
from pipelines.fixtures import FixturesConfig, fixture_paths, make_fixtures
from pipelines.ingest import IngestConfig, run_ingest
from pipelines.inspect_meshes import InspectConfig, run_inspect
from pipelines.ray_session import ray_session
from pipelines.runner import RunOptions, StageReport
from pipelines.schema import read_parquet
from pipelines.summary import errors_table, stage_table


@dataclass
class DemoConfig:
    """Run the demo chain on procedural objects (no downloads, no GPU)."""

    out: str = "demo_out"
    """Output directory (local) for fixtures, manifests, stage outputs and status tables."""
    seed: int = 0
    """Seed of the procedural fixtures."""
    run: RunOptions = field(default_factory=RunOptions, metadata=NO_HASH)
    """Execution settings (workers, shard size, progress)."""
    address: str | None = field(default=None, metadata=NO_HASH)
    """Ray cluster address; default: RAY_ADDRESS if set, else a local embedded Ray."""


def run_demo(cfg: DemoConfig, console: Console | None = None) -> list[StageReport]:
    console = console or Console(stderr=False)
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    write_resolved_config(cfg, str(out / "demo.config.yaml"))

    console.print(f"[bold]1/3 fixtures[/] -> {out / 'fixtures'}")
    record = make_fixtures(FixturesConfig(out=str(out / "fixtures"), seed=cfg.seed))
    paths = fixture_paths(out / "fixtures")

    manifest_uri = str(out / "manifests" / "objaverse.parquet")
    console.print(f"[bold]2/3 ingest[/] -> {manifest_uri}")
    manifest = run_ingest(
        IngestConfig(
            out=manifest_uri, cache=str(paths["objaverse_cache"]), captions=str(paths["captions"])
        )
    )
    console.print(
        f"    {manifest.num_rows} objects, "
        f"{manifest.num_rows - manifest['caption'].null_count} with captions"
    )

    console.print(f"[bold]3/3 inspect[/] on Ray -> {out / 'inspect'}")
    with ray_session(cfg.address):
        report = run_inspect(
            InspectConfig(manifest=manifest_uri, out=str(out), run=cfg.run, address=cfg.address)
        )
    reports = [report]

    console.print(stage_table(reports))
    if report.errors:
        console.print(errors_table(report.errors))
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
    console.print(f"outputs: {storage.join(str(out), 'inspect')}/{{status,results}}.parquet")
    return reports
