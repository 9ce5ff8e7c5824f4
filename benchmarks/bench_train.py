"""Training throughput: ``imesh train`` (Ray Train, DataLoader-fed) vs the same steps over
batches preloaded in memory, and the fixed cost of the Ray Train start.

Workload: ``--objects`` procedural textured objects rendered by the cpu backend in the
instantmesh32 layout (``--views`` views of ``--size`` px) into a temporary folder. Then, per
variant (``tiny-nerf``, then ``tiny-mesh`` initialised from the tiny-nerf run's checkpoint as
upstream's stage 2, or from random weights with ``--mesh-init random``; ``--variants`` picks), ``--steps`` optimiser steps of ``--batch-size``
objects (``--input-views`` + ``--target-views`` views each, supervised at ``--render-size`` px):

* **imesh train**: what the command runs, in this process: a local Ray session started for the
  run, ``check_train_config`` and ``run_train`` (one Ray Train worker with ``--threads`` CPUs,
  ``--loader-workers`` DataLoader processes, a checkpoint after the last step, the report).
  Per step the trainer's metrics give ``data_time_s`` (waiting for the loader) and
  ``step_time_s`` (the whole step).
* **preloaded** (the baseline, measured in the same run, in a fresh process as the Ray worker
  is one, once before Ray starts and once after it stopped, the faster kept): the stage's ``prepare`` + ``step`` + backward + clip + AdamW
  step, same seeds and threads, over batches read from the same dataset into memory before the
  clock starts (no loader).

The first ``--warmup`` steps of each side are left out of the rates. Printed per variant:
samples/s and images/s of both sides (over the summed step times; also from the median step,
which resists other load on a shared machine but leaves out the loader's occasional waits,
e.g. at each epoch start), the loader's share of step time
(``data_time_s / step_time_s``), the ratio loader-fed / preloaded samples/s, and the fixed
overhead of the Ray Train run: its wall time (Ray start to report written) minus the sum of its
steps' times, split into the start (Ray, workers, model, dataset, first batch) and the rest
(checkpoint, report, shutdown).

    python benchmarks/bench_train.py [--steps 20] [--size 64] [--loader-workers 0]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VARIANT_STAGES = {"tiny-nerf": "nerf", "tiny-mesh": "mesh"}


@dataclass(frozen=True)
class Rates:
    """Timed steps: samples and images per step, seconds per step (and waiting for data)."""

    samples: list[int]
    images: list[int]
    seconds: list[float]
    data_seconds: list[float] | None = None

    @property
    def steps(self) -> int:
        return len(self.seconds)

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def samples_per_s(self) -> float:
        """Samples over the summed time of the timed steps (loader waits included)."""
        return sum(self.samples) / sum(self.seconds)

    @property
    def images_per_s(self) -> float:
        return sum(self.images) / sum(self.seconds)

    @property
    def median_samples_per_s(self) -> float:
        """Mean samples per step / median step time: the typical step, which resists other
        load on a shared machine but also leaves out the loader's occasional long waits."""
        return statistics.mean(self.samples) / self.median_s

    @property
    def loader_share(self) -> float:
        """Waiting for data / step time, summed over the timed steps."""
        return sum(self.data_seconds or [0.0]) / sum(self.seconds)


def make_renders(root: Path, objects: int, views: int, size: int) -> Path:
    """``objects`` textured procedural shapes in the instantmesh32 layout under ``root``."""
    from rendering import procedural as pg
    from rendering.backends import RenderSettings, make_backend, prepare_object
    from rendering.output_layouts import layout_spec, render_layout

    root.mkdir(parents=True, exist_ok=True)
    backend = make_backend("cpu", RenderSettings(shading="unlit"))
    try:
        for i in range(objects):
            shape = pg.SHAPES[i % len(pg.SHAPES)]
            pattern = pg.TEXTURE_PATTERNS[i % len(pg.TEXTURE_PATTERNS)]
            mesh = pg.textured(pg.make_shape(shape, i), pg.make_texture(pattern, i, size=32))
            glb = root / f"obj{i}.glb"
            glb.write_bytes(pg.glb_bytes(mesh))
            obj, _ = prepare_object(glb)
            spec = layout_spec("instantmesh32", size=size, seed=i, views=views)
            uid = f"obj-{i:03d}"
            render_layout(backend, obj, uid, spec, root / "rendering_random_32views" / uid)
            glb.unlink()
    finally:
        backend.close()
    return root


def train_config(args: argparse.Namespace, data: Path, out: Path, variant: str, init: str | None):
    from pipelines.train import TrainConfig

    return TrainConfig(
        data=str(data),
        out=str(out),
        stage=VARIANT_STAGES[variant],
        variant=variant,
        init_from=init,
        steps=args.steps,
        seed=0,
        batch_size=args.batch_size,
        checkpoint_every=args.steps,
        render_size=args.render_size,
        num_workers=1,
        use_gpu=args.device == "cuda",
        cpus_per_worker=args.threads,
        loader_workers=args.loader_workers,
        lpips_net=args.lpips_net,
        input_views=args.input_views,
        target_views=args.target_views,
        total_views=args.views,
        log_every=10**9,
    )


def preloaded(cfg: Any, plan: Any, steps: int, warmup: int, device: str) -> Rates:
    """The trainer's per-step work over batches read into memory first (no loader)."""
    import torch
    from torch.utils.data import DataLoader

    from instantmesh.lrm_data import Instantmesh32Dataset
    from instantmesh.model import build_model
    from pipelines.train import init_model_state, optimizer_step, read_init_state, step_seed
    from training.losses import load_lpips_loss
    from training.stages import STAGES, build_optimizer

    torch.set_num_threads(cfg.cpus_per_worker)
    stage = STAGES[cfg.stage]
    dev = torch.device(device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.variant).to(dev)
    if cfg.init_from not in (None, "random"):
        init_model_state(stage, read_init_state(cfg.init_from), model, cfg.init_from)
    model.train()
    optimizer = build_optimizer(stage, model, plan.lr)
    params = [p for p in model.parameters() if p.requires_grad]
    lpips = load_lpips_loss(cfg.lpips_net, dev)
    prepare, step_fn = stage.prepare_fn(), stage.step_fn()
    dataset = Instantmesh32Dataset(
        cfg.data,
        input_view_num=cfg.input_views,
        target_view_num=cfg.target_views,
        total_view_n=cfg.total_views,
        seed=cfg.seed,
        shuffle=True,
    )
    batches: list[Any] = []
    epoch = 0
    while len(batches) < steps:
        dataset.set_epoch(epoch)
        batches += list(DataLoader(dataset, batch_size=plan.batch_size, num_workers=0))
        epoch += 1
    rates = Rates([], [], [])
    for step, batch in enumerate(batches[:steps]):
        t0 = time.perf_counter()
        out = optimizer_step(
            lambda prepared, lpips, generator: step_fn(model, prepared, lpips, generator),
            prepare,
            batch,
            seed=step_seed(cfg.seed, step, 0),
            plan=plan,
            cfg=cfg,
            device=dev,
            optimizer=optimizer,
            params=params,
            lpips=lpips,
        )
        if step >= warmup:
            rates.seconds.append(time.perf_counter() - t0)
            rates.samples.append(len(batch["uid"]))
            rates.images.append(int(out.images))
    return rates


def fresh_process(fn: Callable[..., Rates], *args: Any) -> Rates:
    """``fn(*args)`` in a new Python process, as the Ray Train worker is one: measured in this
    process, after the cpu renderer ran here, the same steps took 1.3-1.8x longer."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


@dataclass(frozen=True)
class RayRun:
    rates: Rates
    """The steps after the warm-up."""
    wall_s: float
    """Checks, Ray start, Ray Train run (checkpoint and report included), Ray shutdown."""
    steps_s: float
    """Sum of every step's time (warm-up included)."""
    check_s: float
    ray_start_s: float
    to_first_step_s: float
    """Ray Train fit() start to the first step (workers, model, dataset, first batch)."""
    checkpoint: str | None

    @property
    def overhead_s(self) -> float:
        return self.wall_s - self.steps_s


def ray_train(cfg: Any, warmup: int) -> RayRun:
    """``imesh train`` in this process, with its own local Ray session."""
    import pyarrow.parquet as pq

    from pipelines.ray_session import ray_session
    from pipelines.train import check_train_config, run_train

    t0 = time.perf_counter()
    cfg, plan = check_train_config(cfg)
    t_check = time.perf_counter()
    with ray_session(None):
        t_ray = time.perf_counter()
        result = run_train(cfg, plan, echo=lambda line: None)
    wall = time.perf_counter() - t0
    rows = sorted(
        pq.read_table(Path(cfg.out) / "metrics.parquet").to_pylist(), key=lambda r: r["step"]
    )
    timed = rows[warmup:]
    rates = Rates(
        samples=[round(r["samples_per_s"] * r["step_time_s"]) for r in timed],
        images=[round(r["images_per_s"] * r["step_time_s"]) for r in timed],
        seconds=[r["step_time_s"] for r in timed],
        data_seconds=[r["data_time_s"] for r in timed],
    )
    return RayRun(
        rates=rates,
        wall_s=wall,
        steps_s=sum(r["step_time_s"] for r in rows),
        check_s=t_check - t0,
        ray_start_s=t_ray - t_check,
        to_first_step_s=result.startup_s,
        checkpoint=result.checkpoint,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="optimiser steps per side")
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the rates")
    ap.add_argument("--size", type=int, default=64, help="rendered image side (px)")
    ap.add_argument("--views", type=int, default=16, help="views rendered per object")
    ap.add_argument("--objects", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--input-views", type=int, default=6)
    ap.add_argument("--target-views", type=int, default=4)
    ap.add_argument("--render-size", type=int, default=32, help="supervised render side (px)")
    ap.add_argument("--loader-workers", type=int, default=0, help="DataLoader processes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (= worker CPUs)")
    ap.add_argument("--lpips-net", default="random", help="LPIPS backbone (random: no download)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument(
        "--variants", nargs="+", choices=tuple(VARIANT_STAGES), default=["tiny-nerf", "tiny-mesh"]
    )
    ap.add_argument(
        "--mesh-init",
        choices=("nerf", "random"),
        default="nerf",
        help="tiny-mesh starts from the tiny-nerf run's checkpoint (upstream stage 2; random "
        "when tiny-nerf is not run) or from random weights",
    )
    args = ap.parse_args()
    if args.steps <= args.warmup:
        ap.error("--steps must exceed --warmup")

    from pipelines.train import check_train_config

    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    results = []
    try:
        t = time.perf_counter()
        data = make_renders(tmp / "renders", args.objects, args.views, args.size)
        print(
            f"{args.objects} objects x {args.views} views of {args.size} px rendered (cpu "
            f"backend) in {time.perf_counter() - t:.1f} s"
        )
        nerf_ckpt: str | None = None
        for variant in args.variants:
            init = None
            if variant == "tiny-mesh":
                init = nerf_ckpt if args.mesh_init == "nerf" and nerf_ckpt else "random"
            out = tmp / f"run-{variant}"
            cfg, plan = check_train_config(train_config(args, data, out, variant, init))
            # the baseline before and after the Ray run, the faster kept: other load on a
            # shared machine then biases neither side
            before = fresh_process(preloaded, cfg, plan, args.steps, args.warmup, args.device)
            run = ray_train(train_config(args, data, out, variant, init), args.warmup)
            after = fresh_process(preloaded, cfg, plan, args.steps, args.warmup, args.device)
            base = min(before, after, key=lambda r: r.median_s)
            if variant == "tiny-nerf":
                nerf_ckpt = run.checkpoint
            results.append((variant, init, base, run))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        f"; device {args.device}, {args.threads} torch thread(s), {args.loader_workers} loader "
        f"worker(s); batch {args.batch_size} objects x ({args.input_views} input + "
        f"{args.target_views} target) views, render {args.render_size} px, LPIPS "
        f"{args.lpips_net}; {args.steps} steps, first {args.warmup} not timed"
    )
    print(
        f"{'variant':10s} {'side':12s} {'steps':>5s} {'mean s':>7s} {'median s':>8s} "
        f"{'samples/s':>9s} {'images/s':>8s} {'median samples/s':>16s} {'loader share':>12s}"
    )
    for variant, _, base, run in results:
        for side, r in (("imesh train", run.rates), ("preloaded", base)):
            share = f"{r.loader_share:.1%}" if r.data_seconds is not None else "-"
            print(
                f"{variant:10s} {side:12s} {r.steps:5d} {statistics.mean(r.seconds):7.3f} "
                f"{r.median_s:8.3f} {r.samples_per_s:9.2f} {r.images_per_s:8.1f} "
                f"{r.median_samples_per_s:16.2f} {share:>12s}"
            )
    for variant, init, base, run in results:
        ratio = run.rates.samples_per_s / base.samples_per_s
        median_ratio = run.rates.median_samples_per_s / base.median_samples_per_s
        start = (
            ""
            if init is None
            else f"; initialised from {'tiny-nerf' if init != 'random' else 'random weights'}"
        )
        print(
            f"{variant}: ratio loader-fed/preloaded samples/s {ratio:.2f}x "
            f"(median step {median_ratio:.2f}x); Ray Train fixed overhead {run.overhead_s:.1f} s"
            f"{start}"
        )
        rest = run.overhead_s - run.check_s - run.ray_start_s - run.to_first_step_s
        print(
            f"{variant}: fixed overhead = wall {run.wall_s:.1f} s - steps {run.steps_s:.1f} s: "
            f"checks {run.check_s:.1f} s, Ray start {run.ray_start_s:.1f} s, Ray Train start to "
            f"first step {run.to_first_step_s:.1f} s, checkpoint + report + shutdown {rest:.1f} s"
        )


if __name__ == "__main__":
    main()
