from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evaluation.compare import (
    GEOMETRY_VIEW_SET,
    CompareError,
    ThresholdsError,
    bootstrap_ci,
    compare_runs,
    load_thresholds,
)
from evaluation.run_records import RunInfo, RunRecordError, RunRecords, write_run_records

N_OBJECTS = 12
N_VIEWS = 3


def make_run(
    run_id: str,
    *,
    psnr_shift: Callable[[int, int], float] = lambda i, v: 0.0,
    lpips_shift: float = 0.0,
    chamfer_shift: float = 0.0,
    failed: tuple[int, ...] = (),
    absent: tuple[int, ...] = (),
    predictor: str = "instantmesh",
    lpips_backbone: str = "vgg",
) -> RunRecords:
    """A deterministic run on ``N_OBJECTS`` GSO objects with ``N_VIEWS`` orbit views each."""
    info = RunInfo.new(
        run_id, predictor, datasets=["gso"], lpips_backbone=lpips_backbone, lpips_available=True
    )
    image: list[dict[str, Any]] = []
    geometry: list[dict[str, Any]] = []
    objects: list[dict[str, Any]] = []
    for i in range(N_OBJECTS):
        if i in absent:
            continue
        uid = f"obj{i:02d}"
        if i in failed:
            objects.append(
                {
                    "dataset": "gso",
                    "uid": uid,
                    "status": "failed",
                    "error_type": "RuntimeError",
                    "error": f"boom {i}",
                }
            )
            continue
        objects.append({"dataset": "gso", "uid": uid, "status": "ok"})
        for v in range(N_VIEWS):
            image.append(
                {
                    "dataset": "gso",
                    "uid": uid,
                    "view_set": "orbit",
                    "view": v,
                    "psnr": 18.0 + i * 0.5 + v + psnr_shift(i, v),
                    "ssim": 0.80 + 0.01 * i,
                    "lpips": 0.20 - 0.005 * i + lpips_shift,
                }
            )
        geometry.append(
            {
                "dataset": "gso",
                "uid": uid,
                "chamfer": 0.10 + 0.01 * i + chamfer_shift,
                "fscore": 0.7,
                "precision": 0.7,
                "recall": 0.7,
                "fscore_threshold": 0.2,
            }
        )
    return RunRecords.from_rows(info, image, geometry, objects)


def _metric(result: Any, metric: str, view_set: str = "orbit") -> Any:
    (m,) = [x for x in result.metrics if x.metric == metric and x.view_set == view_set]
    return m


def test_identical_runs_no_regression() -> None:
    base = make_run("base")
    res = compare_runs(base, make_run("new"))
    assert not res.regressed and not res.failures_regressed
    assert {m.verdict for m in res.metrics} == {"no_change"}
    psnr = _metric(res, "psnr")
    assert psnr.n_pairs == N_OBJECTS
    assert psnr.mean_delta == 0.0 and psnr.ci_low == 0.0 and psnr.ci_high == 0.0
    assert psnr.p_value == 1.0
    assert {(m.view_set, m.metric) for m in res.metrics} == {
        ("orbit", "psnr"),
        ("orbit", "ssim"),
        ("orbit", "lpips"),
        (GEOMETRY_VIEW_SET, "chamfer"),
        (GEOMETRY_VIEW_SET, "fscore"),
    }
    assert "**Verdict: no regression**" in res.to_markdown()


def test_psnr_drop_of_2db_is_a_regression_with_exact_ci() -> None:
    res = compare_runs(make_run("base"), make_run("new", psnr_shift=lambda i, v: -2.0))
    psnr = _metric(res, "psnr")
    assert psnr.verdict == "regression" and res.regressed
    # constant delta: mean and both CI ends are exactly the delta (oriented: worse = negative)
    assert psnr.mean_delta == pytest.approx(-2.0)
    assert psnr.oriented_delta == pytest.approx(-2.0)
    assert psnr.ci_low == pytest.approx(-2.0) and psnr.ci_high == pytest.approx(-2.0)
    assert psnr.p_value is not None and psnr.p_value < 0.01
    assert _metric(res, "ssim").verdict == "no_change"
    md = res.to_markdown()
    assert "**Verdict: REGRESSION**" in md and "**REGRESSION**" in md


def test_lower_is_better_metrics_are_oriented() -> None:
    # LPIPS +0.02 and Chamfer +0.01 on every object: worse, beyond 0.01 / 0.005
    res = compare_runs(make_run("b"), make_run("n", lpips_shift=0.02, chamfer_shift=0.01))
    lp = _metric(res, "lpips")
    assert lp.mean_delta == pytest.approx(0.02) and lp.oriented_delta == pytest.approx(-0.02)
    assert lp.ci_high == pytest.approx(-0.02) and lp.verdict == "regression"
    cd = _metric(res, "chamfer", GEOMETRY_VIEW_SET)
    assert cd.oriented_delta == pytest.approx(-0.01) and cd.verdict == "regression"
    # and the reverse direction is an improvement, not a regression
    res2 = compare_runs(make_run("b"), make_run("n", lpips_shift=-0.02, psnr_shift=lambda i, v: 2))
    assert _metric(res2, "lpips").verdict == "improvement"
    assert _metric(res2, "psnr").verdict == "improvement"
    assert not res2.regressed


def test_small_noise_below_threshold_is_no_change() -> None:
    rng = np.random.default_rng(1)
    noise = rng.normal(0.0, 0.1, size=(N_OBJECTS, N_VIEWS))
    res = compare_runs(make_run("b"), make_run("n", psnr_shift=lambda i, v: float(noise[i, v])))
    psnr = _metric(res, "psnr")
    assert abs(psnr.oriented_delta) < 0.5
    assert psnr.verdict == "no_change" and not res.regressed


def test_drop_beyond_threshold_but_ci_straddling_zero_is_no_change() -> None:
    # two objects lose 10 dB, ten gain 1 dB: mean -0.83 dB (beyond 0.5), but a resample
    # without the two bad objects (probability (5/6)^12 = 11%) has mean +1: the 95% CI
    # reaches +1, so the drop is not established -> no_change.
    shift = {i: (-10.0 if i < 2 else 1.0) for i in range(N_OBJECTS)}
    res = compare_runs(make_run("b"), make_run("n", psnr_shift=lambda i, v: shift[i]))
    psnr = _metric(res, "psnr")
    assert psnr.oriented_delta == pytest.approx(-10.0 / 12.0)
    assert psnr.ci_high == pytest.approx(1.0) and psnr.ci_low < -0.5
    assert psnr.verdict == "no_change"


def test_new_failure_is_a_regression_on_its_own() -> None:
    res = compare_runs(make_run("b"), make_run("n", failed=(3,), absent=(5,)))
    (f,) = res.failures
    assert f.new_failures == ["obj03"] and f.missing_in_new == ["obj05"]
    assert f.errors == {"obj03": "RuntimeError: boom 3"}
    assert res.n_new_failures == 2 and res.failures_regressed and res.regressed
    assert {m.verdict for m in res.metrics} == {"no_change"}  # metrics alone look fine
    assert _metric(res, "psnr").n_pairs == N_OBJECTS - 2
    md = res.to_markdown()
    assert "gso/`obj03`: RuntimeError: boom 3" in md and "absent from the new run" in md
    # tolerated when max_new_failures allows it
    ok = compare_runs(
        make_run("b"), make_run("n", failed=(3,), absent=(5,)), {"max_new_failures": 2}
    )
    assert not ok.regressed


def test_fixed_objects_and_baseline_failures_are_reported() -> None:
    res = compare_runs(make_run("b", failed=(1, 2)), make_run("n", failed=(2,)))
    (f,) = res.failures
    assert f.fixed == ["obj01"] and f.still_failed == ["obj02"] and f.new_failures == []
    assert not res.regressed


def test_bootstrap_ci_matches_a_direct_computation() -> None:
    x = np.array([0.3, -0.1, 0.5, 0.2, 0.0, 0.4])
    lo, hi = bootstrap_ci(x, resamples=500, confidence=0.9, seed=7)
    rng = np.random.default_rng(7)
    means = x[rng.integers(0, x.size, size=(500, x.size))].mean(axis=1)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(means, [0.05, 0.95])))
    assert bootstrap_ci(np.full(10, 0.3)) == pytest.approx((0.3, 0.3))
    # chunked path gives the same numbers as one block
    big = np.random.default_rng(0).normal(size=5000)
    a = bootstrap_ci(big, resamples=1000, seed=3)
    assert a[0] < big.mean() < a[1]


def test_thresholds_defaults_and_overrides(tmp_path: Path) -> None:
    th = load_thresholds(None)
    assert th.max_drop == {
        "psnr": 0.5,
        "ssim": 0.01,
        "lpips": 0.01,
        "chamfer": 0.005,
        "fscore": 0.01,
        "chamfer_aligned": 0.005,
        "fscore_aligned": 0.01,
    }
    assert (th.max_new_failures, th.resamples, th.confidence, th.seed) == (0, 2000, 0.95, 0)
    f = tmp_path / "t.yaml"
    f.write_text("psnr: {max_drop: 3.0}\nbootstrap: {resamples: 100}\n")
    th2 = load_thresholds(str(f))
    assert th2.max_drop["psnr"] == 3.0 and th2.max_drop["ssim"] == 0.01 and th2.resamples == 100
    res = compare_runs(make_run("b"), make_run("n", psnr_shift=lambda i, v: -2.0), th2)
    assert _metric(res, "psnr").verdict == "no_change"
    f.write_text("psnr: {max_drop: -1}\n")
    with pytest.raises(ThresholdsError, match="max_drop must be a number >= 0"):
        load_thresholds(str(f))
    f.write_text("iou: {max_drop: 1}\n")
    with pytest.raises(ThresholdsError, match="unknown key 'iou'"):
        load_thresholds(str(f))
    with pytest.raises(ThresholdsError, match="not found"):
        load_thresholds(str(tmp_path / "nope.yaml"))


def test_lpips_backbone_mismatch_is_not_compared() -> None:
    res = compare_runs(make_run("b"), make_run("n", lpips_shift=0.5, lpips_backbone="alex"))
    lp = _metric(res, "lpips")
    assert lp.verdict == "no_data" and "backbones differ" in (lp.note or "")
    assert not res.regressed


def test_several_predictors_per_dataset_refused() -> None:
    a = make_run("b")
    rows = [
        *a.objects.to_pylist(),
        {
            "run_id": "b",
            "predictor": "lgm",
            "dataset": "gso",
            "uid": "x",
            "status": "failed",
            "error_type": None,
            "error": None,
        },
    ]
    two = RunRecords.from_rows(
        a.info, a.image_metrics.to_pylist(), a.geometry_metrics.to_pylist(), rows
    )
    with pytest.raises(CompareError, match="several predictors"):
        compare_runs(two, make_run("n"))


def test_run_compare_exit_codes_and_outputs(tmp_path: Path) -> None:
    from pipelines.compare import REGRESSION_EXIT_CODE, CompareConfig, run_compare

    base, same, worse = (str(tmp_path / n) for n in ("base", "same", "worse"))
    write_run_records(base, make_run("base"))
    write_run_records(same, make_run("same"))
    write_run_records(worse, make_run("worse", psnr_shift=lambda i, v: -2.0))
    assert run_compare(CompareConfig(baseline=base, new=same)) == 0
    out = tmp_path / "cmp"
    rc = run_compare(CompareConfig(baseline=base, new=worse, out=str(out)))
    assert rc == REGRESSION_EXIT_CODE == 3
    data = json.loads((out / "compare.json").read_text())
    assert data["regressed"] is True
    psnr = next(m for m in data["metrics"] if m["metric"] == "psnr")
    assert psnr["verdict"] == "regression" and psnr["ci_high"] == pytest.approx(-2.0)
    assert "REGRESSION" in (out / "compare.md").read_text()
    assert (out / "compare_config.yaml").exists()
    with pytest.raises(RunRecordError, match="run directory not found"):
        run_compare(CompareConfig(baseline=base, new=str(tmp_path / "missing")))
