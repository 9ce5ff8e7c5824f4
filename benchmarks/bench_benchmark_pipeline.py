"""Pipeline overhead of `imesh benchmark` (predict + evaluate on Ray) vs a plain Python loop,
split into a fixed part per job and a part per object.

Both sides do the same work on the same objects of a GSO-shaped evaluation set built from
procedural fixtures, with the same resources (one process or actor, one torch thread):

- **loop**: one process calls the two stages' own setup and per-item functions
  (``predict_stage(...).setup`` / ``.process``: the visual-hull predictor, the prediction
  written as ``mesh.glb`` + ``prediction.json``; ``evaluate_stage(...).setup`` / ``.process``:
  the mesh read back, 21 views rendered on the CPU backend and written as PNGs, PSNR/SSIM,
  Chamfer/F-Score), object after object. It runs in a fresh process each time, as the
  pipeline's actors do: a process's first objects run slower (lazy imports, allocator and
  cache warm-up; about 0.1 s per object over the first several here), which a loop in the
  warmed-up benchmark process would not pay (``--warm-loop`` measures that way);
- **pipeline**: ``run_benchmark`` inside ``ray_session(num_cpus=2)`` with one worker: predict
  and evaluate run as one job (``pipelines.runner.run_stages``), so one Ray Data actor pool
  (actor start with its imports and both stages' setup) takes each object through predict then
  evaluate; per object the resume checks (input fingerprints, markers), validation and atomic
  publishing of both stages, status parts, then the compiled tables and the run records.
  ``--separate`` also times the two stages one after the other (``run_predict`` then
  ``run_evaluate``: two actor pools, the way ``imesh benchmark`` ran before), alternating with
  the other runs, so both ways are measured under the same machine load.

Each side runs on N and on 2N objects (the 2N-object set's first N objects make the N-object
set); runs alternate (loop, pipeline, loop, ...) so that both meet the same machine load. The
per-object overhead (goal: <= 5 % of the loop's per-object time) is measured three ways:

1. **steady state** (the headline): within one 2N-object run, the seconds per object between
   the first object's completion and the last one's (loop: a clock in its process; pipeline:
   the status tables' ``finished_at``), so no actor start, setup or tables are in it and the
   noise averages over 2N - 1 objects of one run; each pipeline run is paired with the loop run
   just before it, and the median of the pairs is reported;
2. **wall fit** over the fastest run of each: ``per object = (wall(2N) - wall(N)) / N``,
   ``fixed = wall(N) - N * per object``; it also gives the fixed overhead per job, but carries
   the noise of two whole runs (on the shared 2-core VM larger than the goal);
3. **CPU seconds** (Linux, from ``/proc``) per object over the same steady window: the loop's
   process vs the pipeline's worker, driver (Ray Data's executor wakes ten times a second) and
   Ray's daemons (GCS, raylet, agents), sampled every 0.2 s and interpolated at the first and
   last completion; insensitive to other load on the machine, and what the driver and daemons
   take from the work when every core is busy.

Both sides run torch and BLAS on one thread per process (Ray's ``OMP_NUM_THREADS=1`` for 1-CPU
actors; the loop's process gets the same). Ray's start-up is measured separately and excluded
(paid once per job / cluster). ``--shard-size`` defaults to 1, every object its own shard: the
worst case for per-shard costs (``imesh benchmark`` uses 8). With ``--repeats R`` the runs
repeat R times. ``--separate`` also times predict then evaluate as two stages (two actor pools,
as ``imesh benchmark`` ran before). ``--scaling`` times 2 workers.

Measured on the idle 2-core VM (4/8 objects, shard size 8, 3 repeats), same code an hour
apart: steady state median +2.2 % (pairs +13.2 / +2.2 / -10.6 %) and +23.3 % (+23.3 / +16.2 /
+34.0 %); CPU per object worker 0.662 vs loop 0.635 s and 0.766 vs 0.592 s, driver ~0.02 and
Ray's daemons ~0.02 s in both; fixed overhead per job +1.9 s. The variable part is the worker's
own CPU per object (a thread per item costs nothing: 0.605 vs 0.611 s in one process). Earlier
(``--separate``): one job instead of two stages cut the fixed overhead from +2.4..+6.4 s to
+0.9..+2.9 s.

    python benchmarks/bench_benchmark_pipeline.py [--objects 4] [--size 160] [--resolution 48]
        [--repeats 1] [--shard-size 1] [--scaling] [--separate] [--profile FILE]

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
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Ray starts every 1-CPU actor with OMP_NUM_THREADS=1 (torch and BLAS on one thread); the loop's
# processes inherit the same (without it they would use every core for the same work).
os.environ["OMP_NUM_THREADS"] = "1"


def make_evalsets(tmp: Path, n: int, size: int, run: Any) -> dict[int, Path]:
    """GSO-shaped evaluation sets of ``2n`` objects and of its first ``n`` objects."""
    from pipelines.evalset import EvalsetConfig, run_evalset
    from pipelines.fixtures import FixturesConfig, fixture_paths, make_fixtures
    from pipelines.schema import read_parquet, write_parquet

    make_fixtures(FixturesConfig(out=str(tmp / "fx"), gso_objects=2 * n))
    paths = fixture_paths(tmp / "fx")
    cfg = EvalsetConfig(
        dataset="gso", root=str(paths["gso"]), out=str(tmp / "es-2n"), n=2 * n, size=size, run=run
    )
    report = run_evalset(cfg)
    if report.ok != 2 * n:
        raise RuntimeError(f"evaluation set: {report.ok}/{2 * n} objects built: {report.errors}")
    full = tmp / "es-2n" / "gso"
    half = tmp / "es-n" / "gso"
    shutil.copytree(full, half)
    manifest = read_parquet(str(full / "manifest.parquet"))
    write_parquet(manifest.slice(0, n), str(half / "manifest.parquet"))
    return {n: half, 2 * n: full}


def benchmark_config(args: argparse.Namespace, evalset: Path, out: Path, workers: int) -> Any:
    from pipelines.benchmark import BenchmarkConfig
    from pipelines.runner import RunOptions

    return BenchmarkConfig(
        evalsets=[str(evalset)],
        out=str(out),
        predictor="visual-hull",
        resolution=args.resolution,
        lpips_net=args.lpips,
        report=False,
        device="cpu",
        run=RunOptions(workers=workers, shard_size=args.shard_size, progress=False),
    )


@dataclass
class Run:
    """One timed run: wall seconds (stage setup included), each object's seconds around its
    item (loop: measured; pipeline: the status tables, both stages summed), when each object
    was done (seconds, in order; loop: a clock in the loop's process, pipeline: the last
    stage's ``finished_at``) and CPU seconds per object by process group
    (:func:`ray_cpu_seconds`) between the first and the last completion."""

    wall: float
    item_seconds: list[float]
    done_at: list[float]
    steady_cpu: dict[str, float] = field(default_factory=dict)

    def steady_per_object(self) -> float:
        """Seconds per object between the first object's completion and the last one's: the
        marginal cost of one more object (no actor start, setup or tables in it) measured
        within one run, so its noise averages over the objects instead of over two runs."""
        done = sorted(self.done_at)
        return (done[-1] - done[0]) / (len(done) - 1)


def run_loop_fresh(cfg: Any, evalset: Path) -> Run:
    """:func:`run_loop` in a fresh process (spawned: no Ray, nothing imported or warmed up)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run_loop, cfg, evalset).result()


def run_loop(cfg: Any, evalset: Path, warm_up: bool = False) -> Run:
    """The plain loop over ``evalset``. The evaluate side reads the prediction where the
    pipeline publishes it (``<out>/predictions/<dataset>/<uid>/``), so a marker is written there
    for it. Its CPU
    seconds are this process's (all threads), in group ``worker``."""
    from pipelines import storage
    from pipelines.benchmark import (
        EvaluateConfig,
        PredictConfig,
        evalset_manifest,
        evaluate_stage,
        predict_stage,
        resolve_render_settings,
        subset_config,
    )
    from pipelines.stage import ItemContext

    dataset = "gso"
    out = Path(cfg.out)
    t0 = time.perf_counter()
    predict_cfg = subset_config(PredictConfig, cfg, evalset=str(evalset))
    evaluate_cfg, _ = resolve_render_settings(
        subset_config(EvaluateConfig, cfg, evalset=str(evalset)), str(evalset)
    )
    evaluate_cfg = replace(evaluate_cfg, device="cpu")
    predict, evaluate = predict_stage(predict_cfg, dataset), evaluate_stage(dataset)
    assert predict.setup is not None and evaluate.setup is not None
    predictor, backend = predict.setup(predict_cfg), evaluate.setup(evaluate_cfg)
    rows = evalset_manifest(str(evalset)).to_pylist()
    item_seconds, done_at, cpu_at = [], [], []
    try:
        for row in rows[:1] if warm_up else rows:
            t = time.perf_counter()
            uid = str(row["uid"])
            predicted = out / "predictions" / dataset / uid
            predicted.mkdir(parents=True)
            predict.process(row, ItemContext(uid, 1, predict_cfg, predictor, predicted))
            storage.atomic_write_text(storage.marker_url(str(predicted)), "{}")
            rendered = out / "eval_renders" / dataset / uid
            rendered.mkdir(parents=True)
            evaluate.process(row, ItemContext(uid, 1, evaluate_cfg, backend, rendered))
            done_at.append(time.perf_counter())
            cpu_at.append(time.process_time())
            item_seconds.append(done_at[-1] - t)
    finally:
        for state in (predictor, backend):
            close = getattr(state, "close", None)
            if callable(close):
                close()
    steady = {"worker": (cpu_at[-1] - cpu_at[0]) / max(len(cpu_at) - 1, 1)}
    return Run(time.perf_counter() - t0, item_seconds, done_at, steady)


CPU_GROUPS = ("worker", "driver", "ray daemons")


def ray_cpu_seconds() -> dict[str, float] | None:
    """CPU seconds (user + system) used so far by this process and the processes it started
    (the local Ray it runs: GCS, raylet, agents, workers), by group: ``driver`` (this process's
    own threads, Ray's core threads among them), ``worker`` (Ray's task and actor processes,
    including those already exited: a raylet collects its exited workers' times) and ``ray
    daemons`` (everything else). Read from ``/proc``; None where there is none (not Linux).
    Children this process itself waited for (the loop's spawned process) are left out."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return None
    tick = float(os.sysconf("SC_CLK_TCK"))
    table: dict[int, tuple[str, int, list[int]]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        # after the name: state ppid ... utime(14) stime(15) cutime(16) cstime(17), 1-based
        table[int(entry.name)] = (name, int(fields[1]), [int(x) for x in fields[11:15]])
    me = os.getpid()
    cpu = dict.fromkeys(CPU_GROUPS, 0.0)
    cpu["driver"] = sum(table[me][2][:2]) / tick
    family = {me}
    grew = True  # pids are not ordered parent before child: grow the family to a fixpoint
    while grew:
        grew = False
        for pid, (_, ppid, _) in table.items():
            if ppid in family and pid not in family:
                family.add(pid)
                grew = True
    agents = ("ray::DashboardA", "ray::RuntimeEnv")
    for pid in family - {me}:
        name, _, (utime, stime, cutime, cstime) = table[pid]
        is_worker = name.startswith("ray::") and not name.startswith(agents)
        cpu["worker" if is_worker else "ray daemons"] += (utime + stime) / tick
        # exited children: a raylet's are its workers
        cpu["worker" if name == "raylet" else "ray daemons"] += (cutime + cstime) / tick
    return cpu


def object_seconds(reports: Any) -> tuple[list[float], list[float]]:
    """Per-object seconds summed over the stages' status tables, and when each object's last
    stage finished (epoch seconds, in ``uid`` order); every object must be ok."""
    import collections

    from pipelines.schema import read_parquet

    per_uid: dict[str, float] = collections.defaultdict(float)
    done_at: dict[str, float] = {}
    for report in reports:
        if report.ok != report.total:
            raise RuntimeError(f"{report.stage}: {report.ok}/{report.total} ok: {report.errors}")
        for row in read_parquet(report.status_uri).to_pylist():
            per_uid[row["uid"]] += float(row["seconds"])
            finished = row["finished_at"].timestamp()
            done_at[row["uid"]] = max(done_at.get(row["uid"], finished), finished)
    uids = sorted(per_uid)
    return [per_uid[u] for u in uids], [done_at[u] for u in uids]


class CpuSampler:
    """Samples :func:`ray_cpu_seconds` every ``interval`` seconds on a driver thread, so that the
    CPU seconds between two instants of a run (the first and the last object's completion) can
    be read off. The sampler's own CPU is taken out of the driver's."""

    def __init__(self, interval: float = 0.2) -> None:
        import threading

        self.interval = interval
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._own = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            cpu = ray_cpu_seconds()
            if cpu is None:
                return
            cpu["driver"] -= self._own
            self.samples.append((time.time(), cpu))
            self._own = time.thread_time()
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def at(self, when: float) -> dict[str, float]:
        """CPU seconds by group at ``when`` (epoch seconds), interpolated between samples."""
        import numpy as np

        times = np.array([t for t, _ in self.samples])
        return {
            g: float(np.interp(when, times, [cpu[g] for _, cpu in self.samples]))
            for g in CPU_GROUPS
        }

    def per_object(self, done_at: list[float]) -> dict[str, float]:
        """CPU seconds per object by group between the first and the last completion."""
        if len(self.samples) < 2:
            return {}
        done = sorted(done_at)
        first, last = self.at(done[0]), self.at(done[-1])
        return {g: (last[g] - first[g]) / (len(done) - 1) for g in CPU_GROUPS}


def timed(fn: Any, cfg: Any) -> Run:
    """Run ``fn(cfg)`` (returning the stage reports): wall, status seconds and CPU seconds."""
    t0 = time.perf_counter()
    with CpuSampler() as sampler:
        reports = fn(cfg)
    wall = time.perf_counter() - t0
    item_seconds, done_at = object_seconds(reports)
    return Run(wall, item_seconds, done_at, sampler.per_object(done_at))


def benchmark_reports(cfg: Any) -> list[Any]:
    """``run_benchmark``: predict and evaluate as one job."""
    from pipelines.benchmark import run_benchmark

    return list(run_benchmark(cfg)[0])


def separate_reports(cfg: Any) -> list[Any]:
    """``run_predict`` then ``run_evaluate`` (two stages, two actor pools) per evaluation set."""
    from pipelines.benchmark import EvaluateConfig, PredictConfig, run_evaluate, run_predict
    from pipelines.benchmark import subset_config as subset

    reports = []
    for evalset in cfg.evalsets:
        reports.append(run_predict(subset(PredictConfig, cfg, evalset=evalset)))
        reports.append(run_evaluate(subset(EvaluateConfig, cfg, evalset=evalset))[0])
    return reports


def fit(values: dict[int, float], n: int) -> tuple[float, float]:
    """(per object, fixed) from a quantity measured at n and 2n objects."""
    per_object = (values[2 * n] - values[n]) / n
    return per_object, values[n] - n * per_object


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=4, help="N: runs on N and 2N objects")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--resolution", type=int, default=48)
    ap.add_argument(
        "--lpips",
        default="none",
        help="LPIPS backbone for both sides: none, or vgg-random / alex-random (the real "
        "network's cost with random weights: realistic per-object work without the weights)",
    )
    ap.add_argument("--shard-size", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--scaling", action="store_true", help="also time 2 workers on 2N objects")
    ap.add_argument(
        "--separate",
        action="store_true",
        help="also time predict then evaluate as two stages (two actor pools), as before",
    )
    ap.add_argument(
        "--warm-loop",
        action="store_true",
        help="run the loop in this (warmed-up) process instead of a fresh process per run",
    )
    ap.add_argument(
        "--profile",
        default=None,
        help="write a cProfile of the driver during one extra 2N-object pipeline run to FILE",
    )
    ap.add_argument(
        "--ray-niceness",
        type=int,
        default=0,
        help="niceness of Ray's worker processes (Ray's default is 15; 0 = the loop's)",
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
    # Ray starts its workers at niceness 15: on a shared machine that starves the pipeline's
    # actors relative to the loop.
    os.environ["RAY_worker_niceness"] = str(args.ray_niceness)  # noqa: SIM112 (Ray's spelling)

    from pipelines.ray_session import ray_session
    from pipelines.runner import RunOptions

    n = args.objects
    tmp = Path(tempfile.mkdtemp(prefix="bench-bm-"))
    cluster = None
    address = None
    if args.cluster:
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        cluster.add_node(num_cpus=1)
        address = cluster.address
    loops: dict[int, list[Run]] = {n: [], 2 * n: []}
    pipes: dict[int, list[Run]] = {n: [], 2 * n: []}
    seps: dict[int, list[Run]] = {n: [], 2 * n: []}
    scaling: list[float] = []
    try:
        t = time.perf_counter()
        with ray_session(address=address, num_cpus=None if address else 2):
            startup_s = time.perf_counter() - t
            evalsets = make_evalsets(tmp, n, args.size, RunOptions(workers=1, progress=False))
            if args.warm_loop:  # imports, allocator, caches: outside the timing
                run_loop(benchmark_config(args, evalsets[n], tmp / "warm", 1), evalsets[n], True)
            loop_fn = run_loop if args.warm_loop else run_loop_fresh
            for r in range(args.repeats):
                for k in (n, 2 * n):
                    cfg = benchmark_config(args, evalsets[k], tmp / f"loop-{k}-{r}", 1)
                    loops[k].append(loop_fn(cfg, evalsets[k]))
                    cfg = benchmark_config(args, evalsets[k], tmp / f"pipe-{k}-{r}", 1)
                    pipes[k].append(timed(benchmark_reports, cfg))
                    if args.separate:
                        cfg = benchmark_config(args, evalsets[k], tmp / f"sep-{k}-{r}", 1)
                        seps[k].append(timed(separate_reports, cfg))
            if args.scaling:
                cfg = benchmark_config(args, evalsets[2 * n], tmp / "pipe-2-workers", 2)
                scaling.append(timed(benchmark_reports, cfg).wall)
            if args.profile:
                import cProfile

                cfg = benchmark_config(args, evalsets[2 * n], tmp / "pipe-profile", 1)
                cProfile.runctx("benchmark_reports(cfg)", globals(), {"cfg": cfg}, args.profile)
        if args.generated_views:
            from evaluation.evaluate_object import EvalOptions

            objects = sorted(
                p for p in (evalsets[n] / "objects").iterdir() if not p.name.startswith(".")
            )
            options = EvalOptions(
                lpips_net=None if args.lpips == "none" else args.lpips, n_points=16000
            )
            generated_views_split(args, objects, options, tmp)
    finally:
        if cluster is not None:
            cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"ray: {'local 2-node cluster (1 CPU each)' if args.cluster else 'one node, 2 CPUs'}")
    print(
        f"machine: {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(
        f"objects: {n} and {2 * n}, views {args.size}px (21 orbit), visual-hull "
        f"{args.resolution}^3, 16K points, LPIPS {args.lpips}; 1 worker, shard size "
        f"{args.shard_size}, 1 torch thread; loop in "
        f"{'this warmed-up process' if args.warm_loop else 'a fresh process per run'}; "
        f"{args.repeats} repeat(s), alternating; Ray start-up {startup_s:.2f} s (excluded), "
        f"worker niceness {args.ray_niceness}"
    )
    report(n, loops, pipes, "imesh benchmark")
    if args.separate:
        report(n, loops, seps, "two stages (predict, then evaluate)")
    if scaling:
        best = min(r.wall for r in pipes[2 * n])
        print(
            f"scaling: 2 workers {scaling[0]:.2f} s vs 1 worker {best:.2f} s on "
            f"{2 * n} objects: {best / scaling[0]:.2f}x"
        )
    if args.profile:
        print(f"driver profile of one {2 * n}-object run: {args.profile} (python -m pstats)")


def steady_shares(loops: list[Run], pipes: list[Run]) -> str:
    """Steady-state seconds per object of each (loop, pipeline) pair of runs and the median
    overhead."""
    import statistics

    pairs = [
        (pipe.steady_per_object(), loop.steady_per_object())
        for loop, pipe in zip(loops, pipes, strict=True)
    ]
    shares = [100 * (p / q - 1) for p, q in pairs]
    listed = ", ".join(
        f"{p:.3f} vs {q:.3f} s/object ({s:+.1f} %)" for (p, q), s in zip(pairs, shares, strict=True)
    )
    return f"{listed}; median {statistics.median(shares):+.1f} % (goal <= 5 %)"


def report(n: int, loops: dict[int, list[Run]], pipes: dict[int, list[Run]], name: str) -> None:
    """Print the three measurements of the per-object overhead of ``pipes`` against ``loops``
    (same objects, runs alternating) and the fixed overhead per job."""
    import statistics

    print(f"--- {name} vs the plain loop")
    # 1. steady state within each 2N-object run, paired with the loop run just before it
    print(
        f"steady state (objects 2..{2 * n} of one run): {steady_shares(loops[2 * n], pipes[2 * n])}"
    )
    # 2. wall N/2N fit over the fastest run of each
    loop = {k: min(v, key=lambda r: r.wall) for k, v in loops.items()}
    pipe = {k: min(v, key=lambda r: r.wall) for k, v in pipes.items()}
    loop_per, loop_fixed = fit({k: r.wall for k, r in loop.items()}, n)
    pipe_per, pipe_fixed = fit({k: r.wall for k, r in pipe.items()}, n)
    loop_items = statistics.fmean(loop[2 * n].item_seconds)
    pipe_items = statistics.fmean(pipe[2 * n].item_seconds)
    for label, walls in (("plain loop     ", loop), (f"{name[:15]:15s}", pipe)):
        print(
            f"{label}: {walls[n].wall:7.2f} s ({n} objects), {walls[2 * n].wall:7.2f} s "
            f"({2 * n} objects), fastest of {len(loops[n])}"
        )
    per_object = pipe_per - loop_per
    print(
        f"wall fit (N/2N): {pipe_per:.3f} vs {loop_per:.3f} s/object = "
        f"{100 * per_object / loop_per:+.1f} % (two runs' noise included); around each item in "
        f"the worker {pipe_items - loop_items:+.3f} s/object (status seconds {pipe_items:.3f} "
        f"vs loop {loop_items:.3f})"
    )
    print(
        f"fixed overhead per job: {pipe_fixed - loop_fixed:+.2f} s (actor pool with imports and "
        "setup, scheduling, compiled tables, run records)"
    )
    # 3. CPU seconds: robust to other load on the machine; includes the driver and Ray's daemons
    print(steady_cpu_line(loops[2 * n], pipes[2 * n]))


def steady_cpu_line(loops: list[Run], pipes: list[Run]) -> str:
    """CPU seconds per object between the first and the last completion (median over the
    runs), the pipeline's split by process group, against the loop's."""
    import statistics

    if not all(r.steady_cpu for r in pipes):
        return "CPU accounting: needs Linux /proc"
    parts = {g: statistics.median(r.steady_cpu[g] for r in pipes) for g in CPU_GROUPS}
    loop = statistics.median(r.steady_cpu["worker"] for r in loops)
    total = sum(parts.values())
    return (
        f"CPU seconds per object, steady state (median of {len(pipes)}): pipeline {total:.3f} "
        f"(worker {parts['worker']:.3f}, driver {parts['driver']:.3f}, Ray daemons "
        f"{parts['ray daemons']:.3f}) vs loop {loop:.3f}: {100 * (total / loop - 1):+.1f} % "
        f"(worker alone {100 * (parts['worker'] / loop - 1):+.1f} %)"
    )


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
