"""Progress per object (also inside a shard), reused objects reported as resumed, plain progress
lines in logs, no leftovers (``.lock``, empty ``.staging/``) and no Ray log line on stderr."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import ray.cloudpickle

from pipelines.progress import StageProgress
from pipelines.runner import RunOptions, run_stage, stage_lock
from pipelines.schema import manifest_from_rows
from pipelines.stage import ItemContext, Stage

# Ray workers cannot import this test module: ship its functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@dataclass
class StepConfig:
    calls_log: str = ""
    seen_dir: str = ""
    """If set, item_<k> starts only once the driver reported item_<k-1> (a file written by the
    test's ``on_item`` callback): it proves per-object progress from inside one shard."""


def step_process(row: dict[str, Any], ctx: ItemContext) -> dict[str, Any]:
    cfg: StepConfig = ctx.config
    k = int(row["uid"].split("_")[1])
    if cfg.seen_dir and k > 0:
        previous = Path(cfg.seen_dir) / f"item_{k - 1}"
        deadline = time.monotonic() + 60
        while not previous.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"item_{k - 1} was not reported while its shard ran")
            time.sleep(0.02)
    if cfg.calls_log:
        with open(cfg.calls_log, "a") as f:
            f.write(row["uid"] + "\n")
    assert ctx.scratch_dir is not None
    (ctx.scratch_dir / "000.txt").write_text(row["uid"])
    return {"k": k}


STEP = Stage("step", step_process, pa.schema([("k", pa.int64())]), item_output="items")


def _manifest(n: int) -> pa.Table:
    return manifest_from_rows(
        {"uid": f"item_{i}", "source": "synthetic", "mesh_uri": f"/none/{i}", "sha256": None}
        for i in range(n)
    )


# ---------------------------------------------------------------------------------------------
# The display: a bar on a terminal, a plain line per 10 % elsewhere.
# ---------------------------------------------------------------------------------------------


def test_logs_get_a_plain_line_per_ten_percent() -> None:
    stream = io.StringIO()
    with StageProgress("render", 20, stream=stream) as progress:
        for i in range(20):
            progress.advance("failed" if i in (3, 11) else "ok")
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert [ln.split(" objects")[0] for ln in lines] == [
        f"render: {2 * k}/20" for k in range(1, 11)
    ]
    assert lines[1].startswith("render: 4/20 objects (20 %), 1 failed, ")
    assert lines[-1].startswith("render: 20/20 objects (100 %), 2 failed, ")


def test_few_objects_and_an_early_end_still_say_where_it_stopped() -> None:
    stream = io.StringIO()
    with StageProgress("inspect", 3, stream=stream) as progress:
        for _ in range(3):
            progress.advance("ok")
    assert [ln.split(" objects")[0] for ln in stream.getvalue().splitlines()] == [
        "inspect: 1/3",
        "inspect: 2/3",
        "inspect: 3/3",
    ]
    stream = io.StringIO()
    with StageProgress("inspect", 40, stream=stream) as progress:
        for _ in range(7):  # interrupted after 7 of 40: lines at 4, then the last one at 7
            progress.advance("ok")
    assert [ln.split(" objects")[0] for ln in stream.getvalue().splitlines()] == [
        "inspect: 4/40",
        "inspect: 7/40",
    ]


def test_a_terminal_gets_a_bar_and_no_progress_shows_nothing() -> None:
    stream = io.StringIO()
    with StageProgress("render", 5, stream=stream, tty=True) as progress:
        for _ in range(5):
            progress.advance("ok")
    assert "\r" in stream.getvalue() and "5/5" in stream.getvalue()
    stream = io.StringIO()
    with StageProgress("render", 5, stream=stream, enabled=False) as progress:
        progress.advance("ok")
    assert stream.getvalue() == "" and progress.done == 1


# ---------------------------------------------------------------------------------------------
# The runner on a real local Ray.
# ---------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("ray_local")
def test_each_object_is_reported_as_it_finishes_inside_its_shard(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    seen.mkdir()
    events: list[tuple[str, str]] = []

    def on_item(uid: str, status: str) -> None:
        events.append((uid, status))
        (seen / uid).touch()

    # One worker, one shard of 3: item_1 waits for item_0 to be reported, item_2 for item_1.
    report = run_stage(
        STEP,
        StepConfig(seen_dir=str(seen)),
        _manifest(3),
        str(tmp_path / "out"),
        RunOptions(workers=1, shard_size=3, progress=False),
        on_item=on_item,
    )
    assert report.counts == {"ok": 3}
    assert events == [("item_0", "ok"), ("item_1", "ok"), ("item_2", "ok")]


@pytest.mark.usefixtures("ray_local")
def test_objects_published_before_an_interruption_count_as_resumed(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    log = tmp_path / "calls.txt"
    cfg = StepConfig(calls_log=str(log))
    k, n = 3, 7
    first = run_stage(STEP, cfg, _manifest(k), str(out), RunOptions(progress=False))
    assert first.counts == {"ok": k}
    # An interruption after publishing k objects but before their shard's status part was
    # written: the objects are published (markers), the status rows are not.
    for part in (out / "step" / "parts").iterdir():
        part.unlink()
    (out / "step" / "status.parquet").unlink()
    log.unlink()
    events: list[tuple[str, str]] = []
    report = run_stage(
        STEP,
        cfg,
        _manifest(n),
        str(out),
        RunOptions(workers=1, shard_size=4, progress=True),
        on_item=lambda uid, status: events.append((uid, status)),
    )
    assert report.counts == {"ok": n}
    assert report.skipped_done == k and report.processed == n - k
    assert sorted(log.read_text().split()) == [f"item_{i}" for i in range(k, n)]
    # one progress step per object (published ones included), each object once
    assert sorted(events) == [(f"item_{i}", "ok") for i in range(n)]
    err = capfd.readouterr().err  # stderr is not a terminal here: plain lines
    assert "\r" not in err and "step: 7/7 objects (100 %), 0 failed" in err
    # a clean finish leaves neither the lock file nor an empty staging folder
    assert not (out / "step" / ".lock").exists()
    assert not (out / "items" / ".staging").exists()
    assert sorted(p.name for p in (out / "items").iterdir()) == [f"item_{i}" for i in range(n)]


def test_the_lock_file_goes_with_its_holder_and_never_has_two_holders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipelines.runner as runner
    from pipelines.runner import StageLocked

    sdir = str(tmp_path / "stage")
    lock = tmp_path / "stage" / ".lock"
    with stage_lock(sdir):
        assert lock.exists()
    assert not lock.exists()

    # The race the removal opens: run B opens the lock file, holder A leaves (removing the
    # file it locked), run C locks a new file, then B locks the removed one. B must notice and
    # find C's lock.
    holder_a, run_c = stage_lock(sdir), stage_lock(sdir)
    holder_a.__enter__()
    real_open = open
    raced: list[bool] = []

    def racing_open(*args: Any, **kwargs: Any) -> Any:
        fh = real_open(*args, **kwargs)
        if not raced:
            raced.append(True)
            holder_a.__exit__(None, None, None)
            run_c.__enter__()
        return fh

    monkeypatch.setattr(runner, "open", racing_open, raising=False)
    with pytest.raises(StageLocked, match="another run"), stage_lock(sdir):
        pass  # run B
    monkeypatch.undo()
    assert raced and lock.exists()  # C still holds it
    run_c.__exit__(None, None, None)
    assert not lock.exists()


def test_no_ray_log_line_on_stderr(tmp_path: Path) -> None:
    """Ray's core prints ``logging.cc:303 Set ray log level...`` when RAY_BACKEND_LOG_LEVEL is
    set, and its errors (an "actor constructor arguments" notice per actor pool) when not: a
    run's stderr has neither."""
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pipelines.ray_session import ray_session
        from pipelines.runner import RunOptions, run_stage
        from test_progress import STEP, StepConfig, _manifest
        import ray.cloudpickle, test_progress
        ray.cloudpickle.register_pickle_by_value(test_progress)
        with ray_session(num_cpus=1):
            report = run_stage(STEP, StepConfig(), _manifest(2), {str(tmp_path)!r},
                               RunOptions(workers=1, progress=False))
        print(report.counts)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_BACKEND_LOG_LEVEL"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "{'ok': 2}" in proc.stdout
    assert "logging.cc" not in proc.stderr and "RAY_BACKEND_LOG_LEVEL" not in proc.stderr
    assert proc.stderr.strip() == "", proc.stderr
