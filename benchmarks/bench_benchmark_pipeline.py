"""Pipeline overhead of `imesh benchmark` (predict + evaluate on Ray) vs a plain Python loop.

Both sides do the same work on the same objects: the visual-hull predictor on each object of a
GSO-shaped evaluation set built from procedural fixtures, then rendering + PSNR/SSIM + Chamfer/
F-Score. The plain loop calls the library functions directly (one predictor, one CPU render
backend, in-process); the pipeline runs the Ray stages (actor pools, status rows, atomic
publishing, run records). Prints wall times, objects/s, the overhead ratio, and the pipeline's
throughput with 1 and 2 workers (scaling).

    python benchmarks/bench_benchmark_pipeline.py [--objects 6] [--size 160] [--resolution 48]

``--generated-views`` also times the paper's single-image path per object, split into
diffusion (input.png -> Zero123++ -> six views), LRM (six views -> mesh) and metrics (render +
PSNR/SSIM(/LPIPS) + Chamfer/F-Score), as a plain loop of the library calls the pipeline's actors
make. Without weights it uses the tests' tiny random Zero123++ folder and the ``tiny-mesh`` LRM
(CPU: the split of the code path, not of the real models); with ``--zero123pp DIR --unet FILE
--checkpoint CKPT --variant instant-mesh-large --device cuda`` it measures the real models.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=6)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--resolution", type=int, default=48)
    ap.add_argument(
        "--lpips",
        default="none",
        help="LPIPS backbone for both sides: none, or vgg-random / alex-random (the real "
        "network's cost with random weights: realistic per-object work without the weights)",
    )
    ap.add_argument(
        "--cluster",
        action="store_true",
        help="run the pipeline on a local 2-node Ray cluster (1 CPU per node) instead of one node",
    )
    ap.add_argument("--generated-views", action="store_true", help="time the single-image path")
    ap.add_argument("--zero123pp", default=None, help="Zero123++ folder (default: tiny random)")
    ap.add_argument("--unet", default=None, help="white-background UNet weights file")
    ap.add_argument("--checkpoint", default=None, help="LRM checkpoint (default: tiny-mesh)")
    ap.add_argument("--variant", default=None, help="LRM variant of --checkpoint")
    ap.add_argument("--steps", type=int, default=None, help="diffusion steps (75; tiny: 4)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = ap.parse_args()

    from evaluation.evaluate_object import EvalOptions, evaluate_object
    from evaluation.predictors import PredictorInput, make_predictor
    from pipelines.benchmark import BenchmarkConfig, run_benchmark
    from pipelines.evalset import EvalsetConfig, run_evalset
    from pipelines.fixtures import FixturesConfig, fixture_paths, make_fixtures
    from pipelines.ray_session import ray_session
    from pipelines.runner import RunOptions
    from rendering.backends import RenderSettings, make_backend

    tmp = Path(tempfile.mkdtemp(prefix="bench-bm-"))
    make_fixtures(FixturesConfig(out=str(tmp / "fx"), gso_objects=args.objects))
    paths = fixture_paths(tmp / "fx")
    quiet = RunOptions(workers=1, progress=False)
    cluster = None
    address = None
    if args.cluster:
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        cluster.add_node(num_cpus=1)
        address = cluster.address
    with ray_session(address=address, num_cpus=None if address else 2):
        run_evalset(
            EvalsetConfig(
                dataset="gso",
                root=str(paths["gso"]),
                out=str(tmp / "es"),
                size=args.size,
                run=quiet,
            )
        )
        evalset = tmp / "es" / "gso"
        objects = sorted(p for p in (evalset / "objects").iterdir() if not p.name.startswith("."))

        predictor = make_predictor("visual-hull", resolution=args.resolution)
        backend = make_backend("cpu", RenderSettings(shading="unlit"))
        options = EvalOptions(
            lpips_net=None if args.lpips == "none" else args.lpips, n_points=16000
        )
        warm = objects[0]  # warm-up (imports, allocator, torch threads) outside the timing
        evaluate_object(
            predictor.predict(PredictorInput(warm.name, "gso", warm)).mesh, warm, backend, options
        )
        t0 = time.perf_counter()
        for folder in objects:
            pred = predictor.predict(PredictorInput(folder.name, "gso", folder))
            evaluate_object(pred.mesh, folder, backend, options)
        loop_s = time.perf_counter() - t0

        times = {}
        for workers in (1, 2):
            t0 = time.perf_counter()
            run_benchmark(
                BenchmarkConfig(
                    evalsets=[str(evalset)],
                    out=str(tmp / f"run-{workers}"),
                    predictor="visual-hull",
                    resolution=args.resolution,
                    lpips_net=args.lpips,
                    report=False,
                    run=RunOptions(workers=workers, shard_size=1, progress=False),
                )
            )
            times[workers] = time.perf_counter() - t0

    if cluster is not None:
        cluster.shutdown()
    n = len(objects)
    print(f"ray: {'local 2-node cluster (1 CPU each)' if args.cluster else 'one node, 2 CPUs'}")
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, {platform.python_version()}")
    print(
        f"objects: {n}, views {args.size}px (21 orbit), visual-hull {args.resolution}^3, 16K points"
    )
    print(f"plain loop                 : {loop_s:7.2f} s  ({n / loop_s:.2f} obj/s)")
    for w, t in times.items():
        print(f"imesh benchmark, {w} worker(s): {t:7.2f} s  ({n / t:.2f} obj/s)")
    import torch

    print(f"loop torch threads: {torch.get_num_threads()}; pipeline: 1 torch thread per worker")
    equal = times[2] / loop_s - 1.0
    print(
        f"pipeline overhead at equal CPU use (2 workers x 1 thread vs loop): {100 * equal:+.1f} %"
    )
    overhead = times[1] / loop_s - 1.0
    print(
        f"pipeline overhead (1 worker vs loop): {100 * overhead:+.1f} %  "
        f"({(times[1] - loop_s) / n:+.2f} s/object; includes two Ray stages' fixed start-up)"
    )
    print(f"scaling 2 vs 1 workers: {times[1] / times[2]:.2f}x")
    if args.generated_views:
        generated_views_split(args, objects, options, tmp)


def generated_views_split(
    args: argparse.Namespace, objects: list[Path], options, tmp: Path
) -> None:  # type: ignore[no-untyped-def]
    """Per-object diffusion / LRM / metrics seconds of the single-image path (plain loop)."""
    import sys

    import numpy as np
    import torch

    from evaluation.alignment import to_evaluation_frame
    from evaluation.evaluate_object import evaluate_object
    from evaluation.instantmesh_predictor import InstantMeshPredictor
    from evaluation.predictors import InstantMeshOptions, PredictorInput
    from rendering.backends import RenderSettings, make_backend

    zero123pp, checkpoint, variant, steps = (
        args.zero123pp,
        args.checkpoint,
        args.variant,
        args.steps,
    )
    if zero123pp is None or checkpoint is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from test_zero123pp import build_tiny_zero123pp

        from instantmesh import build_model
        from instantmesh.checkpoint import save_model

        torch.manual_seed(0)
        zero123pp = zero123pp or str(build_tiny_zero123pp(tmp / "tiny-zero123pp"))
        if checkpoint is None:
            checkpoint = str(save_model(build_model("tiny-mesh"), tmp / "tiny-mesh"))
            variant = "tiny-mesh"
        steps = steps or 4
    predictor = InstantMeshPredictor(
        InstantMeshOptions(
            checkpoint=checkpoint,
            variant=variant,
            device=args.device,
            zero123pp=zero123pp,
            unet=args.unet,
            steps=steps or 75,
        )
    )
    backend_name = "nvdiffrast" if predictor.device.type == "cuda" else "cpu"
    backend = make_backend(backend_name, RenderSettings(shading="unlit"))
    rows = []
    for i, folder in enumerate(objects):
        item = PredictorInput(folder.name, "gso", folder)
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()
        pred = predictor.predict(item)
        world, _ = to_evaluation_frame(pred.mesh, pred.convention, item.cameras("")[0])
        t0 = time.perf_counter()
        evaluate_object(world, folder, backend, options)
        metrics_s = time.perf_counter() - t0
        if i == 0:
            continue  # warm-up object (first calls allocate, compile and cache)
        t = pred.info["timings"]
        rows.append((t["diffusion_s"], t["lrm_s"], metrics_s))
    if not rows:
        print("generated views: need >= 2 objects (the first one warms up)")
        return
    mean = np.asarray(rows).mean(axis=0)
    total = float(mean.sum())
    print(
        f"generated-views path ({predictor.device}, {len(rows)} objects after 1 warm-up, "
        f"{steps or 75} steps, Zero123++ {predictor.dtype}, LRM {predictor.model.cfg.name}, "
        f"metrics backend {backend_name}):"
    )
    for name, value in zip(("diffusion", "LRM", "metrics"), mean, strict=True):
        print(f"  {name:9s}: {value:7.3f} s/object  ({100 * value / total:5.1f} %)")
    print(f"  total    : {total:7.3f} s/object")
    if predictor.device.type == "cuda":
        print(f"  peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
