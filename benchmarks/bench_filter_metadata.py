"""Benchmark: the vectorised metadata pass vs a naive per-row Python loop.

Synthesizes ``--rows`` (default 800k) Objaverse-shaped metadata rows (random names and tag lists,
a few percent carrying lowpoly variants, ~10% missing or blank captions), times
``filtering.metadata_pass.metadata_pass`` over the whole table, and times the per-row functions
(``criteria.is_lowpoly`` / ``criteria.has_caption``) over a random subsample, extrapolating that
loop to the full row count (printed as such). Also checks that both agree on the subsample.

Run: ``python benchmarks/bench_filter_metadata.py [--rows N] [--sample N] [--seed S]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from filtering.criteria import has_caption, is_lowpoly
from filtering.metadata_pass import metadata_pass


def _vocab(text: str) -> np.ndarray:
    return np.array(text.split())


WORDS = _vocab(
    "chair table car tree house sword robot lamp cup rock ship tower dragon girl boy helmet gun "
    "barrel crate bottle plant flower statue skull cat dog horse bird fish truck bike door window "
    "yellow polygon polygonal slow below fellow pillow scan photogrammetry game asset"
)
"""Name words, including lowpoly look-alikes that must not match (yellow polygon, below...)."""
TAGS = _vocab(
    "3d model game gameasset blender pbr realistic cartoon stylized scan photogrammetry "
    "furniture vehicle character weapon props prop medieval scifi fantasy animal nature "
    "architecture building food low-res highpoly substancepainter polygon yellow"
)
LOWPOLY_VARIANTS = np.array(
    ["lowpoly", "low_poly", "low-poly", "low poly", "LowPoly", "LOWPOLY", "lowpolyart", "Low.Poly"]
)


def _strings(rng: np.random.Generator, vocab: np.ndarray, n: int, sep: str, k: int) -> pa.Array:
    """``n`` strings of ``k`` random words from ``vocab`` joined by ``sep`` (vectorised)."""
    cols = [pa.array(vocab[rng.integers(0, len(vocab), n)]) for _ in range(k)]
    return pc.binary_join_element_wise(*cols, sep)


def synthesize(n: int, seed: int = 0) -> pa.Table:
    """``n`` metadata rows: uid, name, tags (list<string>), caption (nullable)."""
    rng = np.random.default_rng(seed)
    uids = pc.utf8_lpad(pa.array(np.arange(n).astype(str)), 32, "0")
    names = _strings(rng, WORDS, n, " ", 3)
    lowpoly_name = rng.random(n) < 0.01
    names = pc.if_else(
        pa.array(lowpoly_name),
        pc.binary_join_element_wise(
            _strings(rng, LOWPOLY_VARIANTS, n, "", 1), _strings(rng, WORDS, n, "", 1), " "
        ),
        names,
    )
    names = pc.if_else(pa.array(rng.random(n) < 0.01), pa.nulls(n, pa.string()), names)
    counts = rng.integers(0, 9, n)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    total = int(offsets[-1])
    flat = TAGS[rng.integers(0, len(TAGS), total)].astype(object)
    swap = rng.random(total) < 0.006
    flat[swap] = LOWPOLY_VARIANTS[rng.integers(0, len(LOWPOLY_VARIANTS), int(swap.sum()))]
    tags = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=pa.string()))
    captions = pc.binary_join_element_wise(
        pa.array(np.full(n, "a 3D model of a")), _strings(rng, WORDS, n, " ", 2), " "
    )
    r = rng.random(n)
    captions = pc.if_else(pa.array(r < 0.09), pa.nulls(n, pa.string()), captions)
    captions = pc.if_else(pa.array((r >= 0.09) & (r < 0.10)), pa.scalar("  "), captions)
    return pa.table({"uid": uids, "name": names, "tags": tags, "caption": captions})


def naive(table: pa.Table) -> list[tuple[bool, bool]]:
    """The per-row loop: ``(no_caption, lowpoly)`` per row with the plain functions."""
    uids = table["uid"].to_pylist()
    captions = dict(zip(uids, table["caption"].to_pylist(), strict=True))
    out = []
    for uid, name, tags in zip(
        uids, table["name"].to_pylist(), table["tags"].to_pylist(), strict=True
    ):
        out.append((not has_caption(uid, captions), is_lowpoly(name, tags)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=800_000)
    parser.add_argument("--sample", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    table = synthesize(args.rows, args.seed)
    t_synth = time.perf_counter() - t0
    print(f"synthesized {table.num_rows:,} rows in {t_synth:.2f} s")

    t0 = time.perf_counter()
    result = metadata_pass(table)
    t_vec = time.perf_counter() - t0
    no_cap = int(pc.sum(result["no_caption"]).as_py())
    low = int(pc.sum(result["lowpoly"]).as_py())
    kept = int(pc.sum(result["metadata_ok"]).as_py())
    print(
        f"vectorised metadata_pass: {t_vec:.3f} s for {table.num_rows:,} rows "
        f"= {table.num_rows / t_vec:,.0f} rows/s  "
        f"(no_caption {no_cap / table.num_rows:.1%}, lowpoly {low / table.num_rows:.1%}, "
        f"kept {kept / table.num_rows:.1%})"
    )

    sample_n = min(args.sample, table.num_rows)
    idx = np.sort(np.random.default_rng(args.seed + 1).choice(table.num_rows, sample_n, False))
    sample = table.take(pa.array(idx))
    t0 = time.perf_counter()
    rows = naive(sample)
    t_loop = time.perf_counter() - t0
    loop_rate = sample_n / t_loop
    t_loop_full = table.num_rows / loop_rate
    print(
        f"naive per-row loop: {t_loop:.3f} s for a {sample_n:,}-row subsample "
        f"= {loop_rate:,.0f} rows/s; extrapolated to {table.num_rows:,} rows: {t_loop_full:.1f} s"
    )
    vec_sample = result.take(pa.array(idx))
    same = rows == list(
        zip(vec_sample["no_caption"].to_pylist(), vec_sample["lowpoly"].to_pylist(), strict=True)
    )
    print(f"vectorised == per-row on the subsample: {same}")
    print(f"speed-up (extrapolated loop time / vectorised time): {t_loop_full / t_vec:.1f}x")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
