"""FlexiCubes extraction memory: upstream's all-vertices evaluation vs surface cubes only.

Workload: one triplane through the mesh synthesizer's heads at FlexiCubes grids of 32/64/128
(scale 2.1), then vertex colours, i.e. ``extract_flexicubes_mesh`` minus the transformer.

* naive (``surface_only=False``): upstream's ``get_geometry_prediction``: SDF, deformation and
  the weight MLP on every vertex / cube in one batch (the weight MLP's input is
  ``grid^3 x 8 x 3C`` floats).
* surface (``surface_only=True``): the SDF head on all vertices in chunks of ``--chunk`` points,
  then deformation and weights only on the surface cubes, in chunks.

Both must produce the same faces (checked). The synthesizer (``--variant``, default
``tiny-mesh``; ``instant-mesh-base`` / ``-large`` have the real head widths) gets random
weights, except that its SDF head is set to read channel 0 of the three planes, which carry
``1 - (u^2 + v^2) / 2``: the SDF is then ``|p|^2 - 0.6^2``, a sphere of radius 0.6, so the
surface fraction is that of a real object rather than of random noise. Other channels are
random, so the other heads do real (random) work.

Memory: each measurement runs in a fresh subprocess. On CPU the peak is the process's maximum
RSS (``resource.getrusage``) minus its RSS just before the extraction (tracemalloc does not see
torch's allocator, so it is not used); on CUDA it is ``torch.cuda.max_memory_allocated`` minus
the allocation before. Times are wall-clock for one extraction (no warm-up; the machine may be
shared: compare the ratio, not the absolute seconds). ``--naive-max-grid`` skips naive runs
above that grid (they need ~16 GB at 128 for the large model's C = 80).

Run: ``python benchmarks/bench_flexicubes_memory.py [--grids 32 64 128] [--variant tiny-mesh]
[--device cpu] [--chunk 262144] [--naive-max-grid 128]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RADIUS = 0.6


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize()


def _sphere_synthesizer(variant: str, device: str) -> tuple[Any, Any]:
    import torch

    from instantmesh.synthesizer import MeshSynthesizer
    from instantmesh.variants import get_variant

    cfg = get_variant(variant)
    torch.manual_seed(0)
    synth = MeshSynthesizer(cfg).to(device).eval()
    c, r = cfg.triplane_dim, cfg.transformer.triplane_high_res
    planes = torch.randn(1, 3, c, r, r, generator=torch.Generator().manual_seed(1)) * 0.5
    centres = (torch.arange(r, dtype=torch.float32) + 0.5) / r * 2 - 1
    vv, uu = torch.meshgrid(centres, centres, indexing="ij")  # rows = v (height), cols = u
    planes[0, :, 0] = 1 - (uu**2 + vv**2) / 2
    net = synth.decoder.net_sdf
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for layer in linears:
            layer.weight.zero_()
            layer.bias.zero_()
        for p in range(3):
            linears[0].weight[0, p * c] = -1.0  # hidden = 4 - sum(plane channels 0) = 1 + |p|^2
        linears[0].bias[0] = 4.0
        for layer in linears[1:-1]:
            layer.weight[0, 0] = 1.0
        linears[-1].weight[0, 0] = 1.0
        linears[-1].bias[0] = -(1.0 + RADIUS**2)
    return synth, planes.to(device)


def run_one(variant: str, grid: int, mode: str, device: str, chunk: int) -> dict[str, Any]:
    import torch

    from instantmesh.mesh_extraction import (
        TriplaneMeshFields,
        flexicubes_from_fields,
        tanh_deformation_bound,
        vertex_colors_uint8,
    )

    synth, planes = _sphere_synthesizer(variant, device)
    fields = TriplaneMeshFields(synth, planes)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_bytes()
    start = time.perf_counter()
    with torch.no_grad():
        result = flexicubes_from_fields(
            fields,
            grid,
            2.1,
            tanh_deformation_bound(grid),
            surface_only=mode == "surface",
            chunk_size=chunk,
            device=device,
        )
        verts = result.vertices
        rgb = torch.cat([fields.rgb(verts[s : s + chunk]) for s in range(0, len(verts), chunk)])
        colors = vertex_colors_uint8(rgb)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if cuda:
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    faces = result.faces.cpu().numpy()
    return {
        "variant": variant,
        "grid": grid,
        "mode": mode,
        "device": device,
        "seconds": seconds,
        "peak_bytes": int(peak),
        "faces": int(faces.shape[0]),
        "vertices": int(verts.shape[0]),
        "colors": int(colors.shape[0]),
        "surface_cubes": result.surface_cubes,
        "faces_sha1": hashlib.sha1(faces.tobytes()).hexdigest(),
    }


def _child(args: argparse.Namespace, grid: int, mode: str) -> dict[str, Any] | None:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--variant",
        args.variant,
        "--device",
        args.device,
        "--chunk",
        str(args.chunk),
        "--grids",
        str(grid),
        "--mode",
        mode,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  {mode} grid {grid}: failed (rc {proc.returncode}): {proc.stderr.strip()[-300:]}")
        return None
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grids", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--variant", default="tiny-mesh")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chunk", type=int, default=2**18)
    parser.add_argument("--naive-max-grid", type=int, default=128)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["naive", "surface"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        assert args.mode is not None
        print(json.dumps(run_one(args.variant, args.grids[0], args.mode, args.device, args.chunk)))
        return

    unit = "GPU max_memory_allocated" if args.device.startswith("cuda") else "CPU peak RSS"
    print(
        f"FlexiCubes extraction, variant {args.variant}, device {args.device}, chunk {args.chunk}"
    )
    print(f"peak = {unit} above the level before extraction, one run per subprocess\n")
    header = (
        f"{'grid':>5} {'mode':>8} {'peak MiB':>10} {'seconds':>8} {'faces':>8} {'surf cubes':>10}"
    )
    print(header)
    rows: list[tuple[int, dict[str, Any] | None, dict[str, Any] | None]] = []
    for grid in args.grids:
        naive = _child(args, grid, "naive") if grid <= args.naive_max_grid else None
        surface = _child(args, grid, "surface")
        for r in (naive, surface):
            if r is not None:
                print(
                    f"{grid:>5} {r['mode']:>8} {r['peak_bytes'] / 2**20:>10.1f} "
                    f"{r['seconds']:>8.2f} {r['faces']:>8} {r['surface_cubes']:>10}"
                )
        if (
            naive is not None
            and surface is not None
            and naive["faces_sha1"] != surface["faces_sha1"]
        ):
            print(f"  MISMATCH at grid {grid}: the two paths gave different faces")
        rows.append((grid, naive, surface))
    print("\nnaive / surface-only:")
    for grid, naive, surface in rows:
        if naive is None or surface is None:
            print(f"{grid:>5}  (naive skipped or failed)")
            continue
        mem = naive["peak_bytes"] / max(surface["peak_bytes"], 1)
        speed = naive["seconds"] / max(surface["seconds"], 1e-9)
        same = "same faces" if naive["faces_sha1"] == surface["faces_sha1"] else "DIFFERENT"
        print(f"{grid:>5}  memory {mem:6.1f}x   time {speed:5.1f}x   ({same})")


if __name__ == "__main__":
    main()
