"""Run every benchmark with one command and print one table of ratios (ours vs the baseline
each script measures in the same run), plus the machine it ran on.

    python benchmarks/run_all.py                 # quick settings (minutes on 2 CPU cores)
    python benchmarks/run_all.py --only metrics render_pipeline
    python benchmarks/run_all.py --gpu           # GPU machine: FlexiCubes on CUDA, nvdiffrast renders

Each benchmark still prints its full report (saved under --logs); the table shows its headline
line(s). On a GPU machine: install ``.[dev,render,gpu]``, set ``TORCH_CUDA_ARCH_LIST`` if the
nvdiffrast plugin cannot detect the GPU, and pass ``--gpu``.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Bench:
    key: str
    script: str
    compares: str
    goal: str
    args: tuple[str, ...]
    headline: str
    """Regex of the report line(s) to show in the table."""
    gpu_args: tuple[str, ...] = ()


BENCHES = (
    Bench(
        "runner_overhead",
        "bench_runner_overhead.py",
        "manifest/status runner vs plain loop",
        "fixed ~2 s + ms/item",
        (),
        r"ratio",
    ),
    Bench(
        "filter_metadata",
        "bench_filter_metadata.py",
        "vectorised metadata pass vs per-row loop",
        "800k rows << 1 min",
        (),
        r"speed-up|rows/s",
    ),
    Bench(
        "metrics",
        "bench_metrics.py",
        "batched metrics vs per-image loop",
        ">= 2x",
        (),
        r"\d\.\d\dx$",
        ("--device", "cuda"),
    ),
    Bench(
        "cpu_raster",
        "bench_cpu_raster.py",
        "CPU rasterizer vs trimesh ray casting",
        "512^2 / 20k faces < 1 s",
        (),
        r"^\s*\d+\s+512 \|",
    ),
    Bench(
        "blender_worker",
        "bench_blender_worker.py",
        "persistent Blender worker vs fresh process per object",
        ">= 3x lower overhead",
        ("--objects", "6"),
        r"ratio|speed-up",
    ),
    Bench(
        "render_pipeline",
        "bench_render_pipeline.py",
        "imesh render vs plain loop",
        "<= 5 % overhead",
        ("--objects", "8"),
        r"overhead",
    ),
    Bench(
        "benchmark_pipeline",
        "bench_benchmark_pipeline.py",
        "imesh benchmark (predict + evaluate) vs plain loop",
        "<= 5 % overhead",
        ("--objects", "4"),
        r"steady state|overhead|CPU seconds|scaling",
    ),
    Bench(
        "shard_reader",
        "bench_shard_reader.py",
        "tar-shard reader vs object folders (same objects)",
        "shards >= folders",
        ("--objects", "8", "--repeats", "2"),
        r"ratio shards",
    ),
    Bench(
        "train",
        "bench_train.py",
        "imesh train (Ray Train, DataLoader) vs the same steps on preloaded batches",
        "ratio ~1x; fixed start-up s",
        ("--steps", "12"),
        r"ratio loader-fed",
        ("--device", "cuda"),
    ),
    Bench(
        "flexicubes_memory",
        "bench_flexicubes_memory.py",
        "surface-cubes-only vs all-vertices FlexiCubes",
        "grid 128 fits",
        (),
        r"memory .*x",
        ("--device", "cuda"),
    ),
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help=f"subset of: {' '.join(b.key for b in BENCHES)}")
    ap.add_argument("--gpu", action="store_true", help="pass each benchmark's GPU options")
    ap.add_argument("--logs", default="benchmark_logs", help="folder for the full reports")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per benchmark")
    args = ap.parse_args()
    chosen = [b for b in BENCHES if not args.only or b.key in args.only]
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    rows = []
    for b in chosen:
        cmd = [sys.executable, str(HERE / b.script), *b.args, *(b.gpu_args if args.gpu else ())]
        print(f"== {b.key}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, env=env, timeout=args.timeout, check=False
            )
            out, code = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:
            out, code = f"{e.stdout or ''}\nTIMEOUT after {args.timeout} s", -1
        seconds = time.perf_counter() - t0
        (logs / f"{b.key}.log").write_text(out if isinstance(out, str) else out.decode())
        pattern = re.compile(b.headline)
        lines = [ln.strip() for ln in str(out).splitlines() if pattern.search(ln)]
        headline = " | ".join(lines[-3:]) if code == 0 else f"FAILED (exit {code}), see log"
        rows.append((b, headline, seconds))
    print()
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {platform.platform()}"
    )
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except ImportError:
        gpu = "unknown"
    print(f"GPU: {gpu}")
    print()
    print("| benchmark | ours vs baseline | goal | result (headline) | seconds |")
    print("| --- | --- | --- | --- | ---: |")
    for b, headline, seconds in rows:
        print(f"| {b.key} | {b.compares} | {b.goal} | {headline} | {seconds:.0f} |")
    return 0 if all("FAILED" not in h for _, h, _ in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
