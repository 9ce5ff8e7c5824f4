"""``imesh plan``: time and cost of a target from hand-built status tables with known seconds,
the bootstrap against its derived distribution, cluster node counts, warnings, the CLI."""

from __future__ import annotations

import datetime as dt
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from pipelines.cli import main
from pipelines.configs import ConfigError, write_resolved_config
from pipelines.plan import (
    PlanConfig,
    bootstrap_totals,
    cluster_fits,
    format_duration,
    make_plan,
    plan_json,
)
from pipelines.schema import status_table, write_parquet

T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)


def write_stage(
    sdir: Path,
    seconds: list[float | None],
    statuses: list[str] | None = None,
    *,
    starts: list[dt.datetime] | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """A stage folder with a status table of the given per-object seconds (and config.yaml)."""
    statuses = statuses or ["ok"] * len(seconds)
    starts = starts or [T0] * len(seconds)
    rows = [
        {
            "uid": f"obj{i:04d}",
            "stage": sdir.name,
            "status": status,
            "error_type": None if status == "ok" else "RenderError",
            "error": None if status == "ok" else "boom",
            "seconds": s,
            "attempt": 1,
            "output_uri": None,
            "config_hash": "0" * 16,
            "run_id": "run",
            "finished_at": start + dt.timedelta(seconds=s or 0.0),
        }
        for i, (s, status, start) in enumerate(zip(seconds, statuses, starts, strict=True))
    ]
    sdir.mkdir(parents=True, exist_ok=True)
    write_parquet(status_table(rows), str(sdir / "status.parquet"))
    if config is not None:
        (sdir / "config.yaml").write_text(yaml.safe_dump(config))
    return sdir


def render_config(sdir: Path, **kwargs: Any) -> None:
    """The config.yaml a render stage writes (the real resolved config + provenance)."""
    from pipelines.render import RenderConfig

    write_resolved_config(RenderConfig(out=str(sdir.parent), **kwargs), str(sdir / "config.yaml"))


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["plan", *args])
    out, err = capsys.readouterr()
    return rc, out, err


# ---------------------------------------------------------------------------------------------
# Arithmetic on known seconds.
# ---------------------------------------------------------------------------------------------


def test_equal_seconds_give_the_exact_wall_and_a_collapsed_range(tmp_path: Path) -> None:
    stage = write_stage(tmp_path / "render-instantmesh32", [2.0] * 40)
    plan = make_plan(PlanConfig(from_=str(stage), objects=800_000, workers=64))
    (s,) = plan.stages
    exact = 800_000 * 2.0 / 64
    assert (s.wall_s.p10, s.wall_s.p50, s.wall_s.p90) == (exact, exact, exact)
    assert s.object_seconds.p50 == 1_600_000.0
    assert plan.wall_s.p50 == exact and plan.biggest == "render-instantmesh32"
    assert plan.worker_hours(plan.wall_s).p50 == pytest.approx(exact * 64 / 3600)
    assert not any("measured objects" in w for w in plan.warnings)  # 40 >= 30
    assert any("fixed overhead not recorded" in a for a in plan.assumptions)


def test_two_valued_seconds_bootstrap_median_and_range_as_derived() -> None:
    # m = 40 measured objects: 20 at a = 1 s, 20 at b = 3 s (p = 1/2); target N = 1000.
    # A replicate resamples the 40 (A objects at a, A ~ Bin(m, p)), then draws the N target
    # objects from that resample (K at a, K | A ~ Bin(N, A/m)): total = N b + (a - b) K.
    # E[total] = N (p a + (1-p) b) = 2000; by total variance
    # Var = (a-b)^2 [N E[p*(1-p*)] + N^2 p(1-p)/m] ~ (a-b)^2 [N p(1-p) + N^2 p(1-p)/m].
    a, b, m, n, n_boot = 1.0, 3.0, 40, 1000, 2000
    p = 0.5
    sigma = abs(a - b) * math.sqrt(n * p * (1 - p) + n * n * p * (1 - p) / m)  # 161.2 s
    seconds = np.array([a] * 20 + [b] * 20)
    totals = bootstrap_totals(seconds, n, n_boot=n_boot, seed=0)
    p10, p50, p90 = np.percentile(totals, [10, 50, 90])
    # The sample median of n_boot replicates has standard error ~ 1.2533 sigma / sqrt(n_boot)
    # (~4.5 s); allow 5 of them plus one lattice step |a - b| of the total.
    assert abs(p50 - n * (p * a + (1 - p) * b)) <= 5 * 1.2533 * sigma / math.sqrt(n_boot) + abs(
        a - b
    )
    # Close to normal: p90 - p10 = 2 x 1.2816 sigma (413 s). A bootstrap that only drew the
    # N objects (no resampling of the measured 40) would give 2 x 1.2816 x 31.6 = 81 s.
    assert (p90 - p10) / (2 * 1.2816 * sigma) == pytest.approx(1.0, abs=0.15)
    assert np.array_equal(totals, bootstrap_totals(seconds, n, n_boot=n_boot, seed=0))  # seeded
    assert np.all(totals == n * b + (a - b) * np.round((totals - n * b) / (a - b)))  # lattice


def test_many_distinct_values_are_grouped_with_the_mean_kept() -> None:
    seconds = np.arange(1.0, 101.0)  # 100 distinct values, grouped into 4 when max_values=4
    totals = bootstrap_totals(seconds, 10_000, n_boot=4000, seed=1, max_values=4)
    # E[total] = N mean(x) = 505000 whatever the grouping; the mean over replicates estimates
    # it within 4 standard errors (sd of a replicate ~ N sd(x) / sqrt(m) ~ 28900).
    sd = 10_000 * seconds.std() / math.sqrt(seconds.size)
    assert abs(totals.mean() - 505_000) <= 4 * sd / math.sqrt(4000)


def test_cost_and_gpu_hours_arithmetic(tmp_path: Path) -> None:
    stage = write_stage(tmp_path / "predict-gso", [9.0] * 30)
    wall = 300 * 9.0 / 4  # 675 s
    cpu = plan_json(
        make_plan(PlanConfig(from_=str(stage), objects=300, workers=4, price_per_hour=2.5))
    )
    assert cpu["total"]["wall_s"]["p50"] == wall
    assert cpu["total"]["worker_hours"]["p50"] == pytest.approx(wall * 4 / 3600)  # 0.75
    assert cpu["total"]["gpu_hours"] is None
    assert cpu["total"]["cost"]["p50"] == pytest.approx(0.75 * 2.5)
    gpu = plan_json(
        make_plan(
            PlanConfig(
                from_=str(stage), objects=300, workers=4, gpu_per_worker=0.5, price_per_hour=2.5
            )
        )
    )
    assert gpu["total"]["gpu_hours"]["p50"] == pytest.approx(0.75 * 0.5)
    assert gpu["total"]["cost"]["p50"] == pytest.approx(0.75 * 0.5 * 2.5)  # per GPU-hour
    assert any("per GPU-hour" in a for a in gpu["assumptions"])
    none = plan_json(make_plan(PlanConfig(from_=str(stage), objects=300, workers=4)))
    assert none["total"]["cost"] is None


def test_failed_rows_are_resampled_and_rows_without_seconds_left_out(tmp_path: Path) -> None:
    # 30 ok at 1 s, 10 failed at 5 s, 2 lost (no seconds): every timed row is equally likely,
    # so the mean per object is (30 x 1 + 10 x 5) / 40 = 2 s.
    stage = write_stage(
        tmp_path / "render-eval",
        [1.0] * 30 + [5.0] * 10 + [None, None],
        ["ok"] * 30 + ["failed"] * 10 + ["failed"] * 2,
    )
    data = plan_json(make_plan(PlanConfig(from_=str(stage), objects=100_000, workers=1)))
    (s,) = data["stages"]
    counts = {k: s["measured"][k] for k in ("timed", "ok", "failed", "untimed")}
    assert counts == {"timed": 40, "ok": 30, "failed": 12, "untimed": 2}
    sigma = 100_000 * 4 * math.sqrt(0.25 * 0.75 / 40)  # (5-1) x sd of the failed share
    assert abs(s["object_seconds"]["p50"] - 200_000) <= 5 * 1.2533 * sigma / math.sqrt(2000) + 4
    assert any("2 rows without seconds" in w for w in data["warnings"])
    assert any("resampled with the ok ones (25.0%)" in a for a in data["assumptions"])


def test_fixed_overhead_from_the_latest_run_is_added_once(tmp_path: Path) -> None:
    created = T0 + dt.timedelta(hours=1)
    starts = [T0] * 5 + [created + dt.timedelta(seconds=7 + i) for i in range(35)]
    config = {"backend": "cpu", "_provenance": {"created_at": created.isoformat()}}
    stage = write_stage(tmp_path / "render-eval", [3.0] * 40, starts=starts, config=config)
    plan = make_plan(PlanConfig(from_=str(stage), objects=1000, workers=10))
    (s,) = plan.stages
    assert s.measured.overhead_s == 7.0  # the earlier run's 5 rows say nothing about it
    assert s.wall_s.p50 == 1000 * 3.0 / 10 + 7.0


def test_durations_read_in_one_unit_per_range() -> None:
    assert [format_duration(x) for x in (42, 750, 25_000, 300_000)] == [
        "42 s",
        "12.5 min",
        "6.94 h",
        "3.47 d",
    ]
    # The ends of a range take their median's unit: 44.4 h - 50 h, not 44.4 h - 2.08 d.
    assert (format_duration(160_000, 170_000), format_duration(180_000, 170_000)) == (
        "44.4 h",
        "50 h",
    )


# ---------------------------------------------------------------------------------------------
# Conditions and warnings.
# ---------------------------------------------------------------------------------------------


def test_small_sample_is_warned(tmp_path: Path) -> None:
    stage = write_stage(tmp_path / "render-instantmesh32", [2.0] * 10)
    plan = make_plan(PlanConfig(from_=str(stage), objects=100, workers=1))
    assert any("only 10 measured objects (< 30)" in w for w in plan.warnings)
    plan = make_plan(PlanConfig(from_=str(stage), objects=100, workers=1, min_sample=10))
    assert not any("measured objects" in w for w in plan.warnings)


def test_backend_and_size_mismatch_are_warned_never_silently_rescaled(tmp_path: Path) -> None:
    stage = write_stage(tmp_path / "render-instantmesh32", [2.0] * 30)
    render_config(stage, backend="blender", cpus_per_worker=4.0)  # size: layout default 512
    base = {"from_": str(stage), "objects": 1000, "workers": 1}
    same = make_plan(PlanConfig(**base, backend="blender", size=512, cpu_per_worker=4.0))
    assert same.warnings == []
    m = same.stages[0].measured
    assert (m.backend, m.layout, m.size, m.cpus_per_worker) == (
        "blender",
        "instantmesh32",
        512,
        4.0,
    )
    other = make_plan(PlanConfig(**base, backend="nvdiffrast", size=1024, cpu_per_worker=8.0))
    text = "\n".join(other.warnings)
    assert "measured with backend blender, target nvdiffrast" in text
    assert "measured at 512 px, target 1024 px: NOT accounted for" in text
    assert "measured with 4 CPUs per worker, target 8: NOT accounted for" in text
    assert other.stages[0].object_seconds.p50 == 2000.0  # as measured
    scaled = make_plan(PlanConfig(**base, size=1024, scale_by_pixels=True))
    assert scaled.stages[0].object_seconds.p50 == 2000.0 * 4  # (1024 / 512)^2
    assert any("scaled by the pixel count (1024/512)^2 = 4" in w for w in scaled.warnings)


def test_stage_without_config_says_conditions_are_unknown(tmp_path: Path) -> None:
    stage = write_stage(tmp_path / "render-eval", [1.0] * 30)
    plan = make_plan(PlanConfig(from_=str(stage), objects=10, backend="cpu"))
    text = "\n".join(plan.warnings)
    assert "measured conditions unknown" in text
    assert "--backend cpu: no measured stage records a backend; not checked" in text


# ---------------------------------------------------------------------------------------------
# Cluster node types.
# ---------------------------------------------------------------------------------------------

CLUSTER = {
    "max_workers": 40,
    "head_node_type": "head",
    "available_node_types": {
        "head": {"resources": {"CPU": 0}, "max_workers": 0},
        "render_cpu": {"resources": {"CPU": 32}, "max_workers": 48},
        "inference_gpu": {"resources": {"CPU": 8, "GPU": 1}, "max_workers": 16},
        "auto": {"max_workers": 4},  # resources left to Ray's detection
    },
}


def test_cluster_node_counts_by_cpu_and_gpu(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(CLUSTER))
    fits = {f.node_type: f for f in cluster_fits(str(path), 64, 4.0, 0.0)}
    # render_cpu: 32 // 4 = 8 workers per node -> ceil(64 / 8) = 8 nodes <= min(48, 40)
    assert (fits["render_cpu"].workers_per_node, fits["render_cpu"].nodes) == (8, 8)
    assert fits["render_cpu"].max_nodes == 40 and fits["render_cpu"].fits
    # inference_gpu: 8 // 4 = 2 per node -> 32 nodes > 16
    assert (fits["inference_gpu"].nodes, fits["inference_gpu"].fits) == (32, False)
    assert "needs 32 nodes; max_workers allows 16" in fits["inference_gpu"].note
    assert (fits["head"].workers_per_node, fits["head"].max_nodes, fits["head"].fits) == (
        0,
        1,
        False,
    )
    assert fits["auto"].workers_per_node is None and not fits["auto"].fits
    # One GPU per worker: only the GPU type hosts one (min(8 // 4, 1 // 1) = 1 per node).
    gpu = {f.node_type: f for f in cluster_fits(str(path), 16, 4.0, 1.0)}
    assert (gpu["inference_gpu"].nodes, gpu["inference_gpu"].fits) == (16, True)
    assert gpu["render_cpu"].workers_per_node == 0 and "not enough GPU" in gpu["render_cpu"].note
    assert not cluster_fits(str(path), 17, 4.0, 1.0)[2].fits  # 17 nodes > 16


def test_cluster_unreadable_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("available_node_types: [unclosed")
    with pytest.raises(ConfigError, match="unreadable"):
        cluster_fits(str(bad), 1, 1.0, 0.0)
    bad.write_text("cluster_name: x\n")
    with pytest.raises(ConfigError, match="no available_node_types"):
        cluster_fits(str(bad), 1, 1.0, 0.0)
    with pytest.raises(ConfigError, match="no such file"):
        cluster_fits(str(tmp_path / "missing.yaml"), 1, 1.0, 0.0)


# ---------------------------------------------------------------------------------------------
# The command line, in process.
# ---------------------------------------------------------------------------------------------


def benchmark_run(root: Path) -> Path:
    """A benchmark run folder: predict + evaluate stages for GSO and Omni3D, known seconds."""
    for name, s in (
        ("predict-gso", 10.0),
        ("evaluate-gso", 2.0),
        ("predict-omni3d", 10.0),
        ("evaluate-omni3d", 3.0),
    ):
        write_stage(root / name, [s] * 30)
    (root / "report").mkdir()  # no status table: not a stage
    return root


def test_cli_plans_an_evaluation_run_with_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = benchmark_run(tmp_path / "runs" / "y")
    out = tmp_path / "plan.json"
    args = ["--from", str(run), "--gso", "300", "--omni3d", "140", "--workers", "4"]
    args += ["--gpu-per-worker", "1", "--price-per-hour", "2.5", "--json", str(out)]
    rc, stdout, _ = run_cli(
        [*args, "--cluster", str(Path(__file__).parent.parent / "cluster.yaml")], capsys
    )
    assert rc == 0
    data = json.loads(out.read_text())
    walls = {s["stage"]: s["wall_s"]["p50"] for s in data["stages"]}
    assert walls == {
        "evaluate-gso": 300 * 2.0 / 4,
        "evaluate-omni3d": 140 * 3.0 / 4,
        "predict-gso": 300 * 10.0 / 4,
        "predict-omni3d": 140 * 10.0 / 4,
    }
    total = sum(walls.values())  # 1405 s, stages one after another
    assert data["total"]["wall_s"] == {"p10": total, "p50": total, "p90": total}
    assert data["total"]["gpu_hours"]["p50"] == pytest.approx(total * 4 / 3600)
    assert data["total"]["cost"]["p50"] == pytest.approx(total * 4 / 3600 * 2.5)
    assert data["biggest_stage"] == "predict-gso"
    assert {s["stage"]: s["objects"] for s in data["stages"]}["evaluate-omni3d"] == 140
    nodes = {n["node_type"]: n for n in data["cluster"]["node_types"]}
    assert nodes["inference_gpu"]["nodes"] == 4 and nodes["inference_gpu"]["fits"]
    assert data["cluster"]["summary"].endswith("4 x inference_gpu (1 workers per node)")
    assert "biggest stage: predict-gso" in stdout and "assumptions:" in stdout


def test_cli_bad_input_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = benchmark_run(tmp_path / "run")
    empty = tmp_path / "empty"
    empty.mkdir()
    failed = write_stage(tmp_path / "failed" / "render-eval", [1.0, 2.0], ["failed", "failed"])
    garbage = tmp_path / "garbage.yaml"
    garbage.write_text("{not: [yaml")
    cases = {
        "no such folder": ["--from", str(tmp_path / "nope"), "--objects", "5"],
        "no stage status table": ["--from", str(empty), "--objects", "5"],
        "no ok rows": ["--from", str(failed), "--objects", "5"],
        "give the target": ["--from", str(run)],
        "--workers must be >= 1": ["--from", str(run), "--objects", "5", "--workers", "0"],
        "unreadable": ["--from", str(run), "--objects", "5", "--cluster", str(garbage)],
        "has no target count": ["--from", str(run), "--gso", "5"],
    }
    for expected, args in cases.items():
        rc, _, err = run_cli(args, capsys)
        assert rc == 2, (expected, err)
        assert expected in err and err.count("\n") == 1, err
    only_gso = tmp_path / "gso-only"
    write_stage(only_gso / "predict-gso", [1.0] * 30)
    rc, _, err = run_cli(["--from", str(only_gso), "--omni3d", "5"], capsys)
    assert rc == 2 and "--omni3d given but no omni3d stage" in err


def test_plan_never_starts_ray(tmp_path: Path) -> None:
    stage = write_stage(tmp_path / "render-eval", [1.0] * 30)
    code = (
        "import sys; from pipelines.cli import main; "
        f"rc = main(['plan', '--from', {str(stage)!r}, '--objects', '10']); "
        "assert rc == 0, rc; assert 'ray' not in sys.modules, 'ray imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)


# ---------------------------------------------------------------------------------------------
# A real stage.
# ---------------------------------------------------------------------------------------------


def test_plan_from_a_real_render_stage(
    tmp_path: Path, ray_local: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from rendering import procedural as pg

    src = tmp_path / "meshes"
    src.mkdir()
    for i, shape in enumerate(("box", "cone")):
        mesh = pg.textured(pg.make_shape(shape, i), pg.make_texture("checker", i))
        (src / f"{shape}.glb").write_bytes(pg.glb_bytes(mesh))
    out = tmp_path / "out"
    args = ["--input", str(src), "--out", str(out), "--backend", "cpu", "--layout", "zero123pp"]
    rc = main(["render", *args, "--size", "32", "--run.workers", "1", "--run.no-progress"])
    assert rc == 0
    plan_path = tmp_path / "plan.json"
    rc, _, _ = run_cli(
        ["--from", str(out), "--objects", "1000", "--size", "64", "--json", str(plan_path)],
        capsys,
    )
    assert rc == 0
    data = json.loads(plan_path.read_text())
    (s,) = data["stages"]
    m = s["measured"]
    assert s["stage"] == "render-zero123pp"
    assert (m["timed"], m["ok"], m["backend"], m["layout"], m["size"], m["views"]) == (
        2,
        2,
        "cpu",
        "zero123pp",
        32,
        7.0,  # condition + 6 targets
    )
    import pyarrow.parquet as pq

    seconds = pq.read_table(out / "render-zero123pp" / "status.parquet")["seconds"].to_pylist()
    assert m["seconds_median"] == pytest.approx(float(np.median(seconds)))
    q = s["object_seconds"]
    assert 1000 * min(seconds) <= q["p10"] <= q["p50"] <= q["p90"] <= 1000 * max(seconds)
    assert m["overhead_s"] is not None and m["overhead_s"] >= 0
    assert s["wall_s"]["p50"] == pytest.approx(q["p50"] + m["overhead_s"])
    text = "\n".join(data["warnings"])
    assert "only 2 measured objects" in text
    assert "measured at 32 px, target 64 px: NOT accounted for" in text
