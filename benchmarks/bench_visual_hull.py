"""Visual-hull accuracy and CPU cost vs resolution on textured spheres and boxes.

Each object is rendered through the evaluation layout (CPU rasterizer, input view + six
Zero123++ views at a seeded input pose), predicted with ``visual-hull`` at each resolution and
scored with the evaluator's geometry metrics (16K points, F-Score@0.2)::

    python benchmarks/bench_visual_hull.py --size 320 --poses 6 --resolutions 32 48 64 96 128
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import trimesh

from evaluation.geometry import geometry_metrics
from evaluation.predictors import PredictorInput, make_predictor
from rendering import procedural
from rendering.backends import RenderSettings, make_backend, prepare_object
from rendering.mesh_io import load_world_mesh, world_mesh_glb_bytes
from rendering.normalize import normalize_mesh
from rendering.output_layouts import layout_spec, render_layout

SHAPES = {
    "sphere": lambda: trimesh.creation.icosphere(subdivisions=4, radius=0.8),
    "box": lambda: trimesh.creation.box(extents=(1.0, 0.8, 0.6)),
    "flat-box": lambda: trimesh.creation.box(extents=(1.6, 1.0, 0.4)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--poses", type=int, default=6)
    ap.add_argument("--resolutions", type=int, nargs="+", default=[32, 48, 64, 96])
    ap.add_argument("--no-layout-prior", action="store_true")
    args = ap.parse_args()
    backend = make_backend("cpu", RenderSettings(threads=1))
    with tempfile.TemporaryDirectory(prefix="bench-vh-") as tmp:
        print(
            f"{'shape':9s} {'res':>4s} {'CD mean':>8s} {'CD max':>7s} {'F mean':>7s} "
            f"{'F min':>6s} {'s/obj':>6s}"
        )
        for shape, make in SHAPES.items():
            folders = []
            for seed in range(args.poses):
                folder = Path(tmp) / f"{shape}{seed}"
                folder.mkdir()
                mesh = procedural.textured(make(), procedural.make_texture("checker", seed))
                normalized, _ = normalize_mesh(mesh, source_up="z")
                (folder / "gt_mesh.glb").write_bytes(world_mesh_glb_bytes(normalized))
                obj, _ = prepare_object(folder / "gt_mesh.glb")
                spec = layout_spec("eval", args.size, seed, orbit_views=1)
                render_layout(backend, obj, folder.name, spec, folder)
                folders.append(folder)
            for res in args.resolutions:
                predictor = make_predictor(
                    "visual-hull", resolution=res, layout_prior=not args.no_layout_prior
                )
                cd, fs, secs = [], [], []
                for folder in folders:
                    t0 = time.perf_counter()
                    pred = predictor.predict(PredictorInput(folder.name, "bench", folder))
                    secs.append(time.perf_counter() - t0)
                    gt = load_world_mesh(folder / "gt_mesh.glb")
                    geo = geometry_metrics(pred.mesh, gt, n_points=16000, thresholds=(0.2,))
                    cd.append(geo["chamfer"])
                    fs.append(geo["fscore@0.2"])
                print(
                    f"{shape:9s} {res:4d} {np.mean(cd):8.4f} {np.max(cd):7.4f} "
                    f"{np.mean(fs):7.3f} {np.min(fs):6.3f} {np.mean(secs):6.2f}"
                )


if __name__ == "__main__":
    main()
