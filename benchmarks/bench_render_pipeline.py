"""Pipeline overhead of ``imesh render`` vs a plain loop calling the same backend.

Both sides render the same procedural textured GLB objects into the same layout
(``instantmesh32``: RGBA / normal / depth PNGs, ``cameras.npz``, ``render.json``) with the same
backend, settings, image size and view count, and the same resources (one backend instance
using ``--threads`` threads):

- **pipeline**: ``pipelines.render.run_render(RenderConfig(...))`` inside
  ``pipelines.ray_session.ray_session(num_cpus=2)`` with one render actor: manifest, Ray Data
  shards, actor start (imports, backend setup), per object ``prepare_object`` +
  ``render_layout`` + validation + atomic publish + status rows, then the compiled tables.
  Ray's own start-up is measured separately and excluded (paid once per job / cluster).
- **loop**: one process, ``make_backend`` once, then per object ``prepare_object`` +
  ``rendering.output_layouts.render_layout`` into a temporary folder, then ``close()``.

    python benchmarks/bench_render_pipeline.py [--backend cpu|blender] [--objects 12]
        [--size 256] [--views 32] [--samples 4] [--threads 2] [--repeats 1]

Prints both wall times, objects/s, the overhead ratio and the overhead in seconds per object
(absolute: with cheap objects a fixed cost of a few seconds is a large ratio but says nothing
about realistic per-object costs), split into the part paid per object inside the worker (validation, publishing: the
pipeline's per-item seconds from its status table minus the loop's) and the fixed part per job
(actor start with its imports and backend setup, scheduling, status parts and table
compilation: wall time outside the per-item seconds, minus the loop's backend creation and
close).
With ``--repeats R`` both sides run R times alternately and the fastest run of each counts
(the machine may be shared). Ray runs its workers at niceness 15 by default; the benchmark
starts them at the loop's niceness 0 (``--ray-niceness``) so that other load on a shared
machine does not penalize one side only.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

SHAPES = ("sphere", "box", "cylinder", "cone", "capsule", "torus", "blob")
PATTERNS = ("checker", "stripes", "noise", "gradient")


def make_objects(folder: Path, n: int) -> list[Path]:
    """``n`` textured procedural GLB files (shapes and textures cycle with the index)."""
    from rendering import procedural

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        shape, pattern = SHAPES[i % len(SHAPES)], PATTERNS[i % len(PATTERNS)]
        mesh = procedural.textured(
            procedural.make_shape(shape, seed=i), procedural.make_texture(pattern, seed=i)
        )
        path = folder / f"obj{i:03d}_{shape}.glb"
        path.write_bytes(procedural.glb_bytes(mesh))
        paths.append(path)
    return paths


def run_loop(cfg: Any, paths: list[Path], out: Path) -> tuple[float, list[float]]:
    """The plain loop: wall seconds (backend creation and close included), per-object seconds."""
    from rendering.backends import make_backend, prepare_object
    from rendering.output_layouts import render_layout

    t0 = time.perf_counter()
    kwargs = (
        {"max_objects_per_worker": cfg.max_objects_per_worker} if cfg.backend == "blender" else {}
    )
    backend = make_backend(cfg.backend, cfg.settings(), **kwargs)
    per_object = []
    try:
        for path in paths:
            t = time.perf_counter()
            obj, _ = prepare_object(path)
            folder = out / path.stem
            folder.mkdir(parents=True)
            render_layout(backend, obj, path.stem, cfg.spec(), folder)
            per_object.append(time.perf_counter() - t)
    finally:
        backend.close()
    return time.perf_counter() - t0, per_object


def run_pipeline(cfg: Any) -> tuple[float, list[float]]:
    """``run_render``: wall seconds and the per-item seconds of its status table."""
    import pyarrow.parquet as pq

    from pipelines.render import run_render

    t0 = time.perf_counter()
    report = run_render(cfg)
    wall = time.perf_counter() - t0
    if report.ok != report.total:
        raise RuntimeError(f"pipeline rendered {report.ok}/{report.total}: {report.errors}")
    seconds = pq.read_table(report.status_uri).column("seconds").to_pylist()
    return wall, [float(s) for s in seconds]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["cpu", "blender"], default="cpu")
    ap.add_argument("--objects", type=int, default=12)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--views", type=int, default=32)
    ap.add_argument("--samples", type=int, default=4, help="Cycles samples (blender)")
    ap.add_argument("--shading", choices=["lit", "unlit"], default="lit")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="backend threads on both sides (default 1: on a shared machine torch's 2-thread "
        "CPU rasterizer slows down several-fold under oversubscription, swamping the overhead)",
    )
    ap.add_argument("--shard-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument(
        "--ray-niceness",
        type=int,
        default=0,
        help="niceness of Ray's worker processes (Ray's default is 15; 0 = the loop's)",
    )
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray starts its workers at niceness 15: harmless on an idle machine, but on a shared one
    # it starves the pipeline's actor (and its Blender child) relative to the loop.
    os.environ["RAY_worker_niceness"] = str(args.ray_niceness)  # noqa: SIM112 (Ray reads this exact case)

    from pipelines.ray_session import ray_session
    from pipelines.render import RenderConfig
    from pipelines.runner import RunOptions
    from rendering.backends import unavailable_reason

    reason = unavailable_reason(args.backend)
    if reason is not None:
        raise SystemExit(reason)
    tmp = Path(tempfile.mkdtemp(prefix="bench-render-"))
    try:
        paths = make_objects(tmp / "input", args.objects)

        def config(out: Path) -> RenderConfig:
            return RenderConfig(
                out=str(out),
                input=str(tmp / "input"),
                layout="instantmesh32",
                backend=args.backend,
                size=args.size,
                views=args.views,
                samples=args.samples,
                shading=args.shading,
                threads=args.threads,
                cpus_per_worker=1.0,
                run=RunOptions(workers=1, shard_size=args.shard_size, progress=False),
            )

        loops: list[tuple[float, list[float]]] = []
        pipes: list[tuple[float, list[float]]] = []
        t = time.perf_counter()
        with ray_session(num_cpus=2):
            startup_s = time.perf_counter() - t
            for r in range(args.repeats):
                loops.append(run_loop(config(tmp / "unused"), paths, tmp / f"loop-{r}"))
                pipes.append(run_pipeline(config(tmp / f"pipeline-{r}")))
        loop_wall, loop_items = min(loops, key=lambda x: x[0])
        pipe_wall, pipe_items = min(pipes, key=lambda x: x[0])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    n = args.objects
    overhead = pipe_wall - loop_wall
    in_worker = (sum(pipe_items) - sum(loop_items)) / n
    # job-level costs outside the per-object times: actor start + backend setup + scheduling +
    # table compilation (pipeline) vs backend creation + close (loop)
    fixed = (pipe_wall - sum(pipe_items)) - (loop_wall - sum(loop_items))
    print(
        f"machine: {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(
        f"backend {args.backend}: {n} objects, instantmesh32 layout, {args.views} views at "
        f"{args.size}^2, threads {args.threads}"
        + (f", {args.samples} spp, {args.shading}" if args.backend == "blender" else "")
        + f"; best of {args.repeats}; Ray start-up {startup_s:.2f} s (excluded), "
        f"worker niceness {args.ray_niceness}"
    )
    print(
        f"plain loop:   {loop_wall:8.2f} s  {n / loop_wall:6.3f} obj/s  "
        f"({loop_wall / n:.3f} s/object)"
    )
    print(
        f"imesh render: {pipe_wall:8.2f} s  {n / pipe_wall:6.3f} obj/s  "
        f"({pipe_wall / n:.3f} s/object)"
    )
    print(
        f"overhead: ratio {pipe_wall / loop_wall:.3f}x ({100 * overhead / loop_wall:+.1f} %), "
        f"{overhead / n:+.3f} s/object = fixed {fixed:+.2f} s per job ({fixed / n:+.3f} s/object) "
        f"+ per object in the worker {in_worker:+.3f} s/object"
    )


if __name__ == "__main__":
    main()
