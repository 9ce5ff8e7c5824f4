"""Pipeline overhead of the generic runner vs a plain loop over the same library function.

Both sides run ``inspect_item`` (trimesh load + validation + statistics) on the same procedural
objects. The runner side goes through Ray Data with status rows, part files, compilation and
resume bookkeeping; the baseline is a Python ``for`` loop in one process. Ray start-up is
measured separately and excluded from the runner time (it is paid once per job).

    python benchmarks/bench_runner_overhead.py [--objects 120] [--shard-size 8]

Prints times and the ratio runner/loop at 1 worker (same resources as the loop) and with one
worker per CPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=120)
    ap.add_argument("--shard-size", type=int, default=8)
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    from pipelines.fixtures import FixturesConfig, fixture_paths, make_fixtures
    from pipelines.ingest import IngestConfig, run_ingest
    from pipelines.inspect_meshes import INSPECT_STAGE, InspectConfig, inspect_item
    from pipelines.ray_session import ray_session
    from pipelines.runner import RunOptions, run_stage
    from pipelines.stage import ItemContext

    tmp = Path(tempfile.mkdtemp(prefix="bench-runner-"))
    make_fixtures(
        FixturesConfig(
            out=str(tmp / "fx"), n_positives=args.objects, gso_objects=0, omni3d_categories={}
        )
    )
    paths = fixture_paths(tmp / "fx")
    manifest = run_ingest(
        IngestConfig(out=str(tmp / "m.parquet"), cache=str(paths["objaverse_cache"]))
    )
    rows = manifest.to_pylist()
    cfg = InspectConfig(manifest=str(tmp / "m.parquet"), out=str(tmp / "unused"))

    t = time.perf_counter()
    failures = 0
    for row in rows:
        try:
            inspect_item(row, ItemContext(row["uid"], 1, cfg))
        except Exception:  # the truncated fixture fails here exactly as it does in the runner
            failures += 1
    loop_s = time.perf_counter() - t

    t = time.perf_counter()
    with ray_session():
        startup_s = time.perf_counter() - t
        timings = {}
        for workers in (1, 0):
            out = tmp / f"run-{workers}"
            opts = RunOptions(workers=workers, shard_size=args.shard_size, progress=False)
            t = time.perf_counter()
            report = run_stage(INSPECT_STAGE, cfg, manifest, str(out), opts)
            timings[workers] = time.perf_counter() - t
            assert report.total == len(rows)

    print(
        f"machine: {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(
        f"objects: {len(rows)} ({failures} failing), shard size {args.shard_size}; "
        f"Ray start-up {startup_s:.2f} s (excluded)"
    )
    print(f"plain loop (1 process):        {loop_s:7.2f} s")
    print(
        f"runner, 1 worker:              {timings[1]:7.2f} s   ratio {timings[1] / loop_s:5.2f}x "
        f"(overhead {100 * (timings[1] / loop_s - 1):+.0f}%)"
    )
    print(f"runner, 1 worker per CPU:      {timings[0]:7.2f} s   ratio {timings[0] / loop_s:5.2f}x")


if __name__ == "__main__":
    main()
