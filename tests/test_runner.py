"""The generic runner on a real local Ray: status rows, results, resume, atomic publish."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray.cloudpickle

from pipelines import storage
from pipelines.runner import RunOptions, read_parts, run_stage
from pipelines.schema import manifest_from_rows
from pipelines.stage import ItemContext, SkipItem, Stage

# Ray workers cannot import this test module: ship its functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.usefixtures("ray_local")
QUIET = RunOptions(shard_size=3, progress=False)


@dataclass
class ToyConfig:
    factor: int = 2
    calls_log: str = ""


def _log_call(cfg: ToyConfig, uid: str) -> None:
    if cfg.calls_log:
        with open(cfg.calls_log, "a") as f:
            f.write(uid + "\n")


def toy_process(row: dict[str, Any], ctx: ItemContext) -> dict[str, Any]:
    _log_call(ctx.config, row["uid"])
    n = int(row["uid"].split("_")[1])
    if n % 5 == 3:
        raise RuntimeError(f"/data/{row['uid']}.glb is broken")
    if n % 5 == 4:
        raise SkipItem("filtered out upstream")
    return {"value": n * ctx.config.factor}


TOY = Stage("toy", toy_process, pa.schema([("value", pa.int64())]))


def files_process(row: dict[str, Any], ctx: ItemContext) -> dict[str, Any]:
    _log_call(ctx.config, row["uid"])
    assert ctx.scratch_dir is not None
    (ctx.scratch_dir / "000.txt").write_text(row["uid"])
    if row["uid"] == "item_2":
        (ctx.scratch_dir / "000.txt").write_text("")  # invalid output: empty
    return {"n_files": 1}


def files_validate(scratch: Path, result: dict[str, Any]) -> None:
    if not (scratch / "000.txt").read_text():
        raise ValueError("000.txt is empty")


FILES = Stage(
    "files",
    files_process,
    pa.schema([("n_files", pa.int32())]),
    item_output="layout",
    validate=files_validate,
)


def _manifest(n: int, extra: list[str] | None = None) -> pa.Table:
    uids = [f"item_{i}" for i in range(n)] + (extra or [])
    return manifest_from_rows(
        {"uid": u, "source": "synthetic", "mesh_uri": f"/none/{u}", "sha256": None} for u in uids
    )


def _calls(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def test_failures_become_rows_and_the_job_goes_on(tmp_path: Path) -> None:
    report = run_stage(TOY, ToyConfig(), _manifest(10, ["../evil"]), str(tmp_path), QUIET)
    status = pq.read_table(report.status_uri).to_pandas().set_index("uid")
    assert len(status) == 11 and status.index.is_unique
    assert report.counts == {"ok": 6, "failed": 3, "skipped": 2}
    assert status.loc["item_3", "error_type"] == "RuntimeError"
    assert "/data/item_3.glb is broken" in status.loc["item_3", "error"]
    assert status.loc["item_4", "status"] == "skipped"
    assert status.loc["../evil", "error_type"] == "UnsafeUidError"
    assert (status["attempt"] == 1).all()
    results = pq.read_table(report.results_uri).to_pandas().set_index("uid")
    assert results["value"].to_dict() == {f"item_{i}": 2 * i for i in (0, 1, 2, 5, 6, 7)}
    # item_3 and item_8 fail for the same cause: one bucket (paths are masked)
    assert ("RuntimeError: <path> is broken [at test_runner.py:43]", 2) in report.errors
    assert not any(p.name.startswith("..") for p in tmp_path.iterdir())


def test_rerun_skips_done_items_and_retries_the_rest(tmp_path: Path) -> None:
    log = tmp_path / "calls.txt"
    cfg = ToyConfig(calls_log=str(log))
    run_stage(TOY, cfg, _manifest(10), str(tmp_path), QUIET)
    assert len(_calls(log)) == 10
    log.unlink()
    report = run_stage(TOY, cfg, _manifest(10), str(tmp_path), QUIET)
    assert sorted(_calls(log)) == ["item_3", "item_4", "item_8", "item_9"]
    assert report.skipped_done == 6
    status = pq.read_table(report.status_uri).to_pandas().set_index("uid")
    assert len(status) == 10
    assert status.loc["item_3", "attempt"] == 2 and status.loc["item_0", "attempt"] == 1
    assert read_parts(str(tmp_path), TOY).num_rows == 14  # history keeps every attempt


def test_changed_config_redoes_everything(tmp_path: Path) -> None:
    run_stage(TOY, ToyConfig(factor=2), _manifest(4), str(tmp_path), QUIET)
    report = run_stage(TOY, ToyConfig(factor=3), _manifest(4), str(tmp_path), QUIET)
    assert report.skipped_done == 0
    results = pq.read_table(report.results_uri).to_pandas().set_index("uid")
    assert results["value"].to_dict() == {"item_0": 0, "item_1": 3, "item_2": 6}


def test_file_outputs_published_with_marker_and_validated(tmp_path: Path) -> None:
    report = run_stage(FILES, ToyConfig(), _manifest(4), str(tmp_path), QUIET)
    assert report.counts == {"ok": 3, "failed": 1}
    for i in (0, 1, 3):
        item = tmp_path / "layout" / f"item_{i}"
        assert (item / "000.txt").read_text() == f"item_{i}"
        assert storage.read_marker(str(item))["files"] == {"000.txt": len(f"item_{i}")}  # type: ignore[index]
    assert not (tmp_path / "layout" / "item_2").exists()  # invalid output never published
    status = pq.read_table(report.status_uri).to_pandas().set_index("uid")
    assert "000.txt is empty" in status.loc["item_2", "error"]
    assert status.loc["item_0", "output_uri"] == str(tmp_path / "layout" / "item_0")


def test_published_item_without_status_part_is_not_recomputed(tmp_path: Path) -> None:
    """A kill after publishing but before the shard's part was written loses no work."""
    log = tmp_path / "calls.txt"
    cfg = ToyConfig(calls_log=str(log))
    run_stage(FILES, cfg, _manifest(3), str(tmp_path), QUIET)
    for part in (tmp_path / "files" / "parts").iterdir():
        part.unlink()
    log.unlink()
    report = run_stage(FILES, cfg, _manifest(3), str(tmp_path), QUIET)
    assert _calls(log) == ["item_2"]  # only the invalid one is redone
    assert report.counts == {"ok": 2, "failed": 1}


def test_a_second_run_on_the_same_stage_output_is_refused_while_the_first_holds_it(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys
    import textwrap

    from pipelines.runner import StageLocked, stage_lock

    sdir = str(tmp_path / "stage")
    with stage_lock(sdir):
        with pytest.raises(StageLocked, match="another run"), stage_lock(sdir):
            pass
        code = textwrap.dedent(
            f"""
            from pipelines.runner import StageLocked, stage_lock
            try:
                with stage_lock({sdir!r}):
                    print("acquired")
            except StageLocked as e:
                print("locked:", e)
            """
        )
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert other.stdout.startswith("locked:") and '"pid"' in other.stdout
    # Released: the next run proceeds (also after a holder dies: the OS drops flock locks).
    with stage_lock(sdir):
        pass
