"""The ``cpu`` backend's rasterizer vs trimesh ray casting, per view, on the same machine.

Workload: icospheres of radius 1 with ~20k and ~80k faces (subdivisions 5 and 6), seen from
``--views`` cameras around them (elevation 20, distance 2.5, FOV 50: the sphere fills about
half of the frame), rendered at 512^2 and 320^2 by :func:`rendering.backends.cpu.rasterize`
(the mesh is flattened once per object into a ``RasterMesh``, as ``CpuBackend.render`` does;
that one-off cost is printed separately). After a warm-up, ``--repeats`` rounds each time the
baseline and every configuration in turn (so both see the same machine load); the minimum
per view is reported (the machine may be shared).

Baseline, measured in the same run: trimesh's pure-Python/numpy ray-triangle backend
(``trimesh.ray.ray_triangle``, what ``mesh.ray.intersects_first`` uses without embree) with one
ray through every pixel centre, on a small image (``--baseline-size``, default 32^2) because it
is slow, then scaled linearly to the same number of pixels. trimesh's broad phase needs
``rtree``; when it is not installed (not a project dependency) the same ``ray_triangle_id``
runs with a numpy axis-aligned-box query standing in for the r-tree (the same candidate
triangles, so the same narrow-phase work; only the query differs), and the output says so.
Before timing, the two agree on which pixels are covered and on their depth (checked).

Run: ``python benchmarks/bench_cpu_raster.py [--views 4] [--repeats 2] [--baseline-size 32]
[--threads N]`` (about a minute on 2 cores).

Measured on the 2-core development VM while other jobs shared it (load average 5-8), so
absolute numbers are pessimistic: with ``--threads 1``, 20k faces took 169 ms/view at 512^2
(100 ms of CPU) and 71 ms at 320^2; 80k faces 327 / 254 ms; the ray-casting baseline scaled
to the same pixels 480 s / 188 s (20k) and 2740 s / 1070 s (80k): ~2600-8400x. In quieter
moments (load ~2) the rasterizer took 60-75 ms/view (20k, 512^2) and 90-115 ms (80k). With
the default 2 torch threads on the overloaded machine it became 10x slower and erratic
(OpenMP threads waiting for each other when cores are oversubscribed): use 1 thread per
process when several renderers share a machine.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import trimesh
from trimesh.ray import ray_triangle

from rendering.backends.cpu import RasterMesh, rasterize
from rendering.cameras import Camera, camera_from_spherical

FOV, DISTANCE, ELEVATION = 50.0, 2.5, 20.0


def cameras(n: int, size: int) -> list[Camera]:
    return [
        camera_from_spherical(360.0 * i / n + 7.0, ELEVATION, DISTANCE, FOV, size) for i in range(n)
    ]


class NumpyBoxTree:
    """The two members of ``rtree.index.Index`` that ``ray_triangle_candidates`` uses:
    ``bounds`` and ``intersection(box)`` (triangles whose AABB overlaps ``box``)."""

    def __init__(self, triangles: np.ndarray) -> None:
        self.lo = triangles.min(axis=1)
        self.hi = triangles.max(axis=1)
        self.bounds = np.concatenate([self.lo.min(axis=0), self.hi.max(axis=0)])

    def intersection(self, box: np.ndarray) -> np.ndarray:
        box = np.asarray(box, dtype=np.float64)
        hit = ((self.hi >= box[:3]) & (self.lo <= box[3:])).all(axis=1)
        return np.flatnonzero(hit)


def pixel_rays(camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """World-space rays through every pixel centre (row-major), origin at the camera."""
    k = camera.intrinsics()
    jj, ii = np.mgrid[0 : camera.height, 0 : camera.width]
    d_cam = np.stack(
        [
            (ii.ravel() + 0.5 - k[0, 2]) / k[0, 0],
            (jj.ravel() + 0.5 - k[1, 2]) / k[1, 1],
            np.ones(ii.size),
        ],
        axis=1,
    )
    c2w_cv = np.linalg.inv(camera.w2c_opencv())
    directions = d_cam @ c2w_cv[:3, :3].T
    origins = np.broadcast_to(camera.position, directions.shape).copy()
    return origins, directions


def make_ray_caster(mesh: trimesh.Trimesh) -> tuple[Callable[[Camera], np.ndarray], str]:
    """(camera -> planar depth image with +inf misses, description of the backend used)."""
    try:
        import rtree  # noqa: F401

        intersector = ray_triangle.RayMeshIntersector(mesh)
        label = "trimesh RayMeshIntersector.intersects_first (rtree broad phase)"

        def first_hits(origins: np.ndarray, directions: np.ndarray) -> tuple[Any, ...]:
            tri = intersector.intersects_first(origins, directions)
            hit = np.flatnonzero(tri >= 0)
            locations, index_ray, _ = intersector.intersects_location(
                origins[hit], directions[hit], multiple_hits=False
            )
            return hit[index_ray], locations

    except ImportError:
        triangles = np.asarray(mesh.triangles)
        tree = NumpyBoxTree(triangles)
        label = "trimesh ray_triangle_id(multiple_hits=False), numpy AABB query (no rtree)"

        def first_hits(origins: np.ndarray, directions: np.ndarray) -> tuple[Any, ...]:
            _, index_ray, locations = ray_triangle.ray_triangle_id(
                triangles, origins, directions, tree=tree, multiple_hits=False
            )
            return index_ray, locations

    def cast(camera: Camera) -> np.ndarray:
        origins, directions = pixel_rays(camera)
        index_ray, locations = first_hits(origins, directions)
        depth = np.full(camera.width * camera.height, np.inf)
        forward = -camera.c2w[:3, 2]
        depth[index_ray] = (np.asarray(locations) - camera.position) @ forward
        return depth.reshape(camera.height, camera.width)

    return cast, label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--baseline-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
        f"{os.cpu_count()} CPUs; trimesh {trimesh.__version__}"
    )
    sizes = (512, 320)
    setups = []
    label = ""
    for subdivisions in (5, 6):
        mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=1.0)
        t0 = time.perf_counter()
        raster_mesh = RasterMesh.from_geometry(mesh)
        prep_ms = (time.perf_counter() - t0) * 1e3
        cast, label = make_ray_caster(mesh)
        small = cameras(1, args.baseline_size)[0]
        # Agreement (doubles as the warm-up of both paths).
        ray_depth = cast(small)
        ours = rasterize(raster_mesh, small)
        both = np.isfinite(ray_depth) & ours.mask
        mismatch = int((np.isfinite(ray_depth) != ours.mask).sum())
        assert mismatch <= 0.02 * small.width * small.height, mismatch
        depth_err = float(np.abs(ray_depth[both] - ours.depth[both]).max())
        assert depth_err < 1e-4, depth_err
        print(
            f"{len(mesh.faces)} faces: RasterMesh prep {prep_ms:.0f} ms (once per object); "
            f"agreement at {small.width}x{small.height}: {mismatch} pixels differ in coverage, "
            f"max depth difference {depth_err:.1e}"
        )
        setups.append((len(mesh.faces), raster_mesh, cast, small))

    # Repeats are interleaved (baseline, then every size) so that both paths see the same
    # machine load; the minimum of each is kept, as wall time and as this process's CPU time
    # (all threads; less sensitive to other processes on a shared machine).
    base: dict[int, tuple[float, float]] = {}
    raster: dict[tuple[int, int], tuple[float, float]] = {}

    def keep_min(old: tuple[float, float] | None, new: tuple[float, float]) -> tuple[float, float]:
        return new if old is None else (min(old[0], new[0]), min(old[1], new[1]))

    for _ in range(args.repeats):
        for n_faces, raster_mesh, cast, small in setups:
            w0, c0 = time.perf_counter(), time.process_time()
            cast(small)
            base[n_faces] = keep_min(
                base.get(n_faces), (time.perf_counter() - w0, time.process_time() - c0)
            )
            for size in sizes:
                cams = cameras(args.views, size)
                w0, c0 = time.perf_counter(), time.process_time()
                for cam in cams:
                    rasterize(raster_mesh, cam)
                n = len(cams)
                timing = ((time.perf_counter() - w0) / n, (time.process_time() - c0) / n)
                raster[(n_faces, size)] = keep_min(raster.get((n_faces, size)), timing)

    print(f"baseline: {label}, {args.baseline_size}^2 rays, scaled to the image's pixel count")
    print(
        f"{'faces':>7} {'size':>5} | {'wall ms/view: cpu':>17} {'rays':>9} {'speed-up':>8} | "
        f"{'CPU-time ms/view: cpu':>21} {'rays':>9} {'speed-up':>8}"
    )
    for n_faces, *_rest in setups:
        for size in sizes:
            wall, cpu_time = raster[(n_faces, size)]
            scale = (size * size) / args.baseline_size**2
            b_wall, b_cpu = base[n_faces][0] * scale, base[n_faces][1] * scale
            print(
                f"{n_faces:>7} {size:>5} | {wall * 1e3:>17.1f} {b_wall * 1e3:>9.0f} "
                f"{b_wall / wall:>7.0f}x | {cpu_time * 1e3:>21.1f} {b_cpu * 1e3:>9.0f} "
                f"{b_cpu / cpu_time:>7.0f}x"
            )


if __name__ == "__main__":
    main()
