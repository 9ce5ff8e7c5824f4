"""Several stages as one job (``pipelines.runner.run_stages``): each object goes through every
stage in the same warm worker, and each stage keeps the outputs, status rows and resume rules it
has when run alone with ``run_stage``; ``imesh benchmark`` runs predict + evaluate that way."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import ray.cloudpickle

from pipelines import storage
from pipelines.runner import RunOptions, read_parts, run_stage, run_stages
from pipelines.schema import manifest_from_rows, read_parquet
from pipelines.stage import ItemContext, Stage

# Ray workers cannot import this test module: ship its functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.usefixtures("ray_local")
QUIET = RunOptions(workers=2, shard_size=1, progress=False)
STATUS_KEYS = ("uid", "stage", "status", "error_type", "attempt", "config_hash")


@dataclass
class ChainConfig:
    src: str
    """Folder of <uid>.txt inputs of the first stage."""
    log: str
    """File each process call appends ``<stage> <uid>`` to."""


def _log(cfg: ChainConfig, stage: str, uid: str) -> None:
    with open(cfg.log, "a") as f:
        f.write(f"{stage} {uid}\n")


def make_process(row: dict[str, Any], ctx: ItemContext) -> dict[str, Any]:
    """Stage 1: publishes its input's text, upper-cased."""
    _log(ctx.config, "make", ctx.uid)
    assert ctx.scratch_dir is not None
    text = Path(ctx.config.src, f"{ctx.uid}.txt").read_text()
    if text == "bad":
        raise ValueError(f"{ctx.uid}: bad input")
    (ctx.scratch_dir / "out.txt").write_text(text.upper())
    return {"pid": os.getpid()}


def make_inputs(row: dict[str, Any], cfg: ChainConfig) -> str:
    return Path(cfg.src, f"{row['uid']}.txt").read_text()


def use_process(row: dict[str, Any], ctx: ItemContext) -> dict[str, Any]:
    """Stage 2: reads what stage 1 published for the object."""
    _log(ctx.config, "use", ctx.uid)
    assert ctx.scratch_dir is not None
    made = Path(ctx.config.src).parent / "out" / "made" / ctx.uid
    if storage.read_marker(str(made)) is None:
        raise FileNotFoundError(f"{ctx.uid}: nothing made")
    text = (made / "out.txt").read_text()
    (ctx.scratch_dir / "used.txt").write_text(text + "!")
    return {"pid": os.getpid(), "text": text}


def use_inputs(row: dict[str, Any], cfg: ChainConfig) -> str:
    """Stage 2 scores what stage 1 published: its marker."""
    made = Path(cfg.src).parent / "out" / "made" / str(row["uid"])
    return str(storage.read_marker(str(made)))


MAKE = Stage(
    "make",
    make_process,
    pa.schema([("pid", pa.int64())]),
    item_output="made",
    input_fingerprint=make_inputs,
)
USE = Stage(
    "use",
    use_process,
    pa.schema([("pid", pa.int64()), ("text", pa.string())]),
    item_output="used",
    input_fingerprint=use_inputs,
)


def _setup(tmp_path: Path, texts: dict[str, str]) -> tuple[ChainConfig, pa.Table, str]:
    src = tmp_path / "src"
    src.mkdir(parents=True, exist_ok=True)
    for uid, text in texts.items():
        (src / f"{uid}.txt").write_text(text)
    manifest = manifest_from_rows(
        {"uid": u, "source": "synthetic", "mesh_uri": f"/none/{u}", "sha256": None} for u in texts
    )
    return ChainConfig(str(src), str(tmp_path / "calls.txt")), manifest, str(tmp_path / "out")


def _calls(cfg: ChainConfig) -> list[str]:
    log = Path(cfg.log)
    calls = sorted(log.read_text().splitlines()) if log.exists() else []
    log.unlink(missing_ok=True)
    return calls


def _status(out: str, stage: str) -> dict[str, dict[str, Any]]:
    rows = read_parquet(storage.join(out, stage, "status.parquet")).to_pylist()
    return {r["uid"]: {k: r[k] for k in STATUS_KEYS} for r in rows}


def test_each_object_goes_through_both_stages_in_one_worker(tmp_path: Path) -> None:
    cfg, manifest, out = _setup(tmp_path, {"a": "x", "b": "y", "c": "bad", "d": "z"})
    seen: list[tuple[str, str]] = []
    reports = run_stages(
        [(MAKE, cfg), (USE, cfg)], manifest, out, QUIET, lambda u, s: seen.append((u, s))
    )
    assert [r.stage for r in reports] == ["make", "use"]
    assert [r.counts for r in reports] == [{"ok": 3, "failed": 1}, {"ok": 3, "failed": 1}]
    assert [(r.processed, r.skipped_done) for r in reports] == [(4, 0), (4, 0)]
    made = {r["uid"]: r for r in read_parquet(reports[0].results_uri).to_pylist()}
    used = {r["uid"]: r for r in read_parquet(reports[1].results_uri).to_pylist()}
    for uid, text in (("a", "X"), ("b", "Y"), ("d", "Z")):
        assert used[uid]["text"] == text
        assert used[uid]["pid"] == made[uid]["pid"] != os.getpid()  # same worker process
        assert (Path(out) / "used" / uid / "used.txt").read_text() == text + "!"
    status = _status(out, "use")
    assert status["c"]["status"] == "failed" and status["c"]["error_type"] == "FileNotFoundError"
    assert sorted(seen) == [("a", "ok"), ("b", "ok"), ("c", "failed"), ("d", "ok")]
    # the same status rows (hashes included) as the two stages run one after the other
    cfg2, manifest2, out2 = _setup(tmp_path / "alone", {"a": "x", "b": "y", "c": "bad", "d": "z"})
    run_stage(MAKE, cfg2, manifest2, out2, QUIET)
    run_stage(USE, cfg2, manifest2, out2, QUIET)
    for stage in ("make", "use"):
        alone = _status(out2, stage)
        fused = _status(out, stage)
        for uid in "abcd":
            alone[uid].pop("config_hash")  # the configs name their folders
            assert {k: v for k, v in fused[uid].items() if k != "config_hash"} == alone[uid]


def test_resume_keeps_each_stages_rules(tmp_path: Path) -> None:
    cfg, manifest, out = _setup(tmp_path, {"a": "x", "b": "y", "c": "bad"})
    steps = [(MAKE, cfg), (USE, cfg)]
    run_stages(steps, manifest, out, QUIET)
    assert len(_calls(cfg)) == 6

    # nothing changed: nothing runs but the failed object, in both stages
    reports = run_stages(steps, manifest, out, QUIET)
    assert _calls(cfg) == ["make c", "use c"]
    assert [(r.processed, r.skipped_done) for r in reports] == [(1, 2), (1, 2)]

    # a fixed input: that object is made again, so used again; the others stay
    Path(cfg.src, "c.txt").write_text("w")
    reports = run_stages(steps, manifest, out, QUIET)
    assert _calls(cfg) == ["make c", "use c"]
    assert [r.counts for r in reports] == [{"ok": 3}, {"ok": 3}]
    assert _status(out, "make")["c"]["attempt"] == 3 and _status(out, "use")["c"]["attempt"] == 3

    # a changed input of a done object: stage 1 redoes it, and stage 2, found done by the
    # driver, redoes it too since what it reads changed
    Path(cfg.src, "a.txt").write_text("v")
    reports = run_stages(steps, manifest, out, QUIET)
    assert _calls(cfg) == ["make a", "use a"]
    assert (Path(out) / "used" / "a" / "used.txt").read_text() == "V!"
    assert _status(out, "use")["a"]["attempt"] == 2 and _status(out, "use")["b"]["attempt"] == 1

    # stage 2 lost its rows (a kill before its parts were written): only stage 2 runs, and it
    # finds its published objects (resumed, not recomputed)
    for part in (Path(out) / "use" / "parts").iterdir():
        part.unlink()
    rows_before = read_parts(out, MAKE).num_rows
    reports = run_stages(steps, manifest, out, QUIET)
    assert _calls(cfg) == []
    assert read_parts(out, MAKE).num_rows == rows_before  # stage 1 done: no row written
    assert [(r.processed, r.skipped_done) for r in reports] == [(0, 3), (0, 3)]
    assert [r.counts for r in reports] == [{"ok": 3}, {"ok": 3}]


def test_benchmark_predicts_and_evaluates_in_one_job_and_resumes(
    fixture_set: dict[str, Any], tmp_path: Path
) -> None:
    from pipelines.benchmark import BenchmarkConfig, run_benchmark
    from pipelines.evalset import EvalsetConfig, run_evalset

    opts = RunOptions(workers=1, shard_size=2, progress=False)
    root = str(fixture_set["paths"]["gso"])
    run_evalset(EvalsetConfig(dataset="gso", root=root, out=str(tmp_path), n=3, size=32, run=opts))
    cfg = BenchmarkConfig(
        evalsets=[str(tmp_path / "gso")],
        out=str(tmp_path / "run"),
        predictor="visual-hull",
        resolution=12,
        lpips_net="none",
        n_points=1000,
        report=False,
        run=opts,
    )
    reports, records = run_benchmark(cfg)
    assert [r.stage for r in reports] == ["predict-gso", "evaluate-gso"]
    assert [(r.ok, r.processed) for r in reports] == [(3, 3), (3, 3)]
    predicted = read_parquet(str(tmp_path / "run" / "predict-gso" / "status.parquet"))
    evaluated = read_parquet(str(tmp_path / "run" / "evaluate-gso" / "status.parquet"))
    assert predicted.column("stage").to_pylist() == ["predict-gso"] * 3
    assert evaluated.column("stage").to_pylist() == ["evaluate-gso"] * 3
    assert records.objects.num_rows == 3 and records.image_metrics.num_rows == 3 * 21
    for uid in records.objects.column("uid").to_pylist():
        assert storage.read_marker(str(tmp_path / "run" / "predictions" / "gso" / uid))
        assert storage.read_marker(str(tmp_path / "run" / "eval_renders" / "gso" / uid))
    again, same = run_benchmark(cfg)
    assert [(r.processed, r.skipped_done) for r in again] == [(0, 3), (0, 3)]
    assert same.geometry_metrics.equals(records.geometry_metrics)
