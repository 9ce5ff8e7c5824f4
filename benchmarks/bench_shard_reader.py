"""Reading training objects from tar shards vs from the object-folder layout, same objects.

Workload: ``--objects`` objects in the ``instantmesh32`` layout (``--views`` views of
``--size`` px: RGBA, normal, 8- and 16-bit depth PNGs, ``cameras.npz``, ``render.json``; one
synthetic object's files copied under every uid, so both sides hold identical bytes), written
once as folders and once as shards (``rendering.shard_format.write_shard``, ``--shard-size``
objects per tar). Two measurements, each side after one warm-up pass (page cache warm for both:
this compares the readers, not the disk), minimum of ``--repeats``:

* **raw**: every file of every object into memory: ``instantmesh.shard_reader.iter_tar`` over
  the shards vs opening and reading each file of each folder;
* **dataset**: ``Instantmesh32Dataset`` items (6 input + 4 target views decoded, upstream
  sampling) from the shards vs from the folders, one process. The shard side reads every member
  of a sample (a tar is streamed) while the folder side opens only the 31 files it decodes.

Prints samples/s for each side and the ratio shards/folders (> 1: shards faster). On object
stores, where each folder file is one request, the raw ratio is what the tar saves; on a warm
local disk both are bound by PNG decoding.

    python benchmarks/bench_shard_reader.py [--objects 16] [--size 512] [--views 32]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image


def object_files(size: int, views: int, seed: int = 0) -> dict[str, bytes]:
    """One object's files in the instantmesh32 layout: a shaded disc with mild noise (PNG
    sizes in the range of real renders), normals, depth, cameras."""
    rng = np.random.default_rng(seed)
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size * 2.0 - 1.0
    r = np.hypot(xx, yy)
    mask = r < 0.6
    files: dict[str, bytes] = {}

    def png(arr: np.ndarray, mode: str | None = None) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(arr, mode).save(buf, format="PNG", compress_level=3)
        return buf.getvalue()

    for v in range(views):
        shade = np.clip(0.6 + 0.3 * np.sin(6 * xx + v) * np.cos(4 * yy), 0, 1)
        rgb = np.stack([shade, shade * 0.8, 0.5 * shade + 0.2], -1) * 255
        rgb = np.clip(rgb + rng.normal(0, 0.4, rgb.shape), 0, 255)
        rgba = np.dstack([rgb, mask * 255.0]).astype(np.uint8)
        nz = np.sqrt(np.clip(1 - (r / 0.6) ** 2, 0, 1))
        normal = np.stack([xx / 0.6, yy / 0.6, nz], -1) * mask[..., None]
        nrm = np.dstack([(normal + 1) / 2 * 255, mask * 255.0]).astype(np.uint8)
        depth = np.where(mask, 2.5 - nz, 0.0)
        files[f"{v:03d}.png"] = png(rgba, "RGBA")
        files[f"{v:03d}_normal.png"] = png(nrm, "RGBA")
        files[f"{v:03d}_depth.png"] = png(np.round(depth / 6 * 255).astype(np.uint8), "L")
        files[f"{v:03d}_depth16.png"] = png(np.round(depth / 6 * 65535).astype(np.uint16))
    from rendering import cameras as cams
    from rendering.output_layouts import cameras_npz

    files["cameras.npz"] = cameras_npz(cams.training_cameras("bench", 0, n=views, size=size))
    files["render.json"] = json.dumps({"uid": "bench", "layout": "instantmesh32"}).encode()
    return files


def write_both(root: Path, files: dict[str, bytes], n: int, shard_size: int) -> tuple[Path, Path]:
    from rendering.shard_format import SUCCESS_NAME, shard_name, write_shard

    uids = [f"obj-{i:05d}" for i in range(n)]
    layout = root / "renders" / "rendering_random_32views"
    for uid in uids:
        (layout / uid).mkdir(parents=True)
        for name, data in files.items():
            (layout / uid / name).write_bytes(data)
    shards = root / "shards"
    shards.mkdir()
    listed = []
    for k, start in enumerate(range(0, n, shard_size)):
        chunk = uids[start : start + shard_size]
        with open(shards / shard_name(k), "wb") as f:
            write_shard(f, [(u, files) for u in chunk])
        listed.append({"name": shard_name(k), "objects": len(chunk)})
    marker = {"layout": "instantmesh32", "members": sorted(files), "shards": listed}
    (shards / SUCCESS_NAME).write_text(json.dumps(marker))
    return root / "renders", shards


def best_of(fn: Callable[[], int], repeats: int) -> tuple[float, int]:
    fn()  # warm-up: page cache, imports
    times, count = [], 0
    for _ in range(repeats):
        t = time.perf_counter()
        count = fn()
        times.append(time.perf_counter() - t)
    return min(times), count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=16)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--views", type=int, default=32)
    ap.add_argument("--shard-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from instantmesh.lrm_data import Instantmesh32Dataset
    from instantmesh.shard_reader import iter_tar, list_shards

    tmp = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    try:
        t = time.perf_counter()
        files = object_files(args.size, args.views)
        renders, shards = write_both(tmp, files, args.objects, args.shard_size)
        per_object = sum(len(b) for b in files.values())
        print(
            f"{args.objects} objects x {len(files)} files ({per_object / 1e6:.1f} MB each), "
            f"{args.views} views of {args.size} px, {len(list_shards(shards))} shards; "
            f"prepared in {time.perf_counter() - t:.1f} s"
        )
        layout = renders / "rendering_random_32views"

        def raw_folders() -> int:
            n = 0
            for folder in sorted(layout.iterdir()):
                got = {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
                n += len(got) > 0
            return n

        def raw_shards() -> int:
            return sum(1 for url in list_shards(shards) for _ in iter_tar(url))

        def dataset(source: Path) -> Callable[[], int]:
            ds = Instantmesh32Dataset(source, total_view_n=args.views)
            return lambda: sum(1 for _ in ds)

        rows = []
        for name, folder_fn, shard_fn in (
            ("raw", raw_folders, raw_shards),
            ("dataset", dataset(renders), dataset(shards)),
        ):
            folder_s, n_f = best_of(folder_fn, args.repeats)
            shard_s, n_s = best_of(shard_fn, args.repeats)
            assert n_f == n_s == args.objects, (n_f, n_s)
            rows.append((name, n_f / folder_s, n_s / shard_s))
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}"
        )
        print(f"{'read':8s} {'folders samples/s':>18s} {'shards samples/s':>17s}  ratio")
        for name, folder_rate, shard_rate in rows:
            print(
                f"{name:8s} {folder_rate:18.1f} {shard_rate:17.1f}  "
                f"ratio shards/folders {shard_rate / folder_rate:.2f}x"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
