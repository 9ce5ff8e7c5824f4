"""Persistent Blender worker vs a fresh Blender process per object (objaverse-xl's design).

Both sides render the same procedural objects (textured / vertex-coloured / flat GLBs) with the
same cameras, pixels and samples through ``rendering.backends.blender``:

* persistent: one :class:`BlenderBackend` renders every object in one worker process (scene
  reset + import per object);
* fresh: per object a new worker process is started, renders the object and exits
  (``BlenderBackend(max_objects_per_worker=1)`` opened and closed per object: ``import bpy``,
  start-up, render, shutdown), which is what spawning ``blender -b -P script.py`` per object
  costs.

Both paths must produce identical pixels (checked). One untimed worker start warms the page
cache first. Reported: objects/hour, per-object overhead (wall time per object minus Cycles'
own render time), the overhead ratio and the end-to-end ratio.

Run: ``python benchmarks/bench_blender_worker.py [--objects 10] [--views 4] [--size 128]
[--samples 8] [--threads 0]``
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from rendering.backends import RenderObject, RenderSettings, prepare_object
from rendering.backends.blender import BlenderBackend
from rendering.cameras import Camera, camera_from_spherical
from rendering.procedural import (
    SHAPES,
    TEXTURE_PATTERNS,
    flat_colored,
    glb_bytes,
    make_shape,
    make_texture,
    textured,
    vertex_colored,
)


def make_objects(root: Path, n: int) -> list[RenderObject]:
    objects = []
    for i in range(n):
        shape = make_shape(SHAPES[i % len(SHAPES)], seed=i)
        if i % 3 == 0:
            mesh = textured(shape, make_texture(TEXTURE_PATTERNS[i % 4], seed=i, size=128))
        elif i % 3 == 1:
            mesh = vertex_colored(shape, seed=i)
        else:
            mesh = flat_colored(shape, seed=i)
        path = root / f"object_{i:03d}.glb"
        path.write_bytes(glb_bytes(mesh))
        objects.append(prepare_object(path)[0])
    return objects


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=10)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="Cycles threads (0 = all cores)")
    args = ap.parse_args()

    settings = RenderSettings(
        samples=args.samples, shading="lit", device="cpu", threads=args.threads, timeout_s=600
    )
    cameras: list[Camera] = [
        camera_from_spherical(360.0 * k / args.views, 20.0, 3.0, 50.0, args.size)
        for k in range(args.views)
    ]
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"{args.objects} objects x {args.views} views, {args.size}^2, {args.samples} spp, "
        f"Cycles CPU, threads={args.threads or 'auto'}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-blender-") as tmp:
        objects = make_objects(Path(tmp), args.objects)

        with BlenderBackend(settings) as warm:  # untimed: page cache, Cycles kernels on disk
            warm.render(objects[0], cameras[:1])

        # persistent worker
        t0 = time.perf_counter()
        persistent_render = persistent_start = 0.0
        persistent_rgba = []
        with BlenderBackend(settings) as backend:
            for obj in objects:
                views = backend.render(obj, cameras)
                persistent_render += backend.last_timings["render_s"]
                persistent_start += backend.last_timings["start_s"]
                persistent_rgba.append(np.stack([v.rgba for v in views]))
            first = backend.last_timings
        persistent_wall = time.perf_counter() - t0

        # fresh process per object
        t0 = time.perf_counter()
        fresh_render = 0.0
        fresh_rgba = []
        for obj in objects:
            with BlenderBackend(settings, max_objects_per_worker=1) as backend:
                views = backend.render(obj, cameras)
                fresh_render += backend.last_timings["render_s"]
                fresh_rgba.append(np.stack([v.rgba for v in views]))
        fresh_wall = time.perf_counter() - t0

    for a, b in zip(persistent_rgba, fresh_rgba, strict=True):
        if not np.array_equal(a, b):
            raise SystemExit("persistent and fresh renders differ: the comparison is invalid")

    n = len(objects)
    rows = [
        ("persistent worker", persistent_wall, persistent_render),
        ("fresh process/object", fresh_wall, fresh_render),
    ]
    print(f"{'':22s} {'wall s':>8s} {'render s':>9s} {'objects/h':>10s} {'overhead/obj s':>15s}")
    overheads = []
    for label, wall, render in rows:
        overhead = (wall - render) / n
        overheads.append(overhead)
        print(f"{label:22s} {wall:8.2f} {render:9.2f} {3600 * n / wall:10.0f} {overhead:15.3f}")
    print(
        f"last persistent object: reset {first['reset_s'] * 1e3:.1f} ms, import "
        f"{first['import_s'] * 1e3:.1f} ms, render {first['render_s'] * 1e3:.0f} ms, "
        f"EXR->npy {first['io_s'] * 1e3:.1f} ms, client load {first['load_s'] * 1e3:.1f} ms"
    )
    steady = (persistent_wall - persistent_render - persistent_start) / n
    print(f"persistent overhead/object without its one worker start: {steady:.3f} s")
    print(f"per-object overhead ratio (fresh / persistent): {overheads[1] / overheads[0]:.1f}x")
    print(f"end-to-end speed-up of the persistent worker: {fresh_wall / persistent_wall:.2f}x")
    print("pixels identical in both modes: yes")


if __name__ == "__main__":
    main()
