"""The run-record merge policy (``evaluation.run_records``): which stage's failure an object
reports (:func:`object_outcome`) and which evaluation of a dataset a run keeps
(:func:`merge_run_records`). Table-driven; pure functions, no I/O."""

from __future__ import annotations

from typing import Any

import pytest

from evaluation.run_records import RunInfo, RunRecords, merge_run_records, object_outcome

OK = {"status": "ok", "error_type": None, "error": None}


def _failed(error_type: str, error: str) -> dict[str, Any]:
    return {"status": "failed", "error_type": error_type, "error": error}


EVAL_FAIL = _failed("PredictionMissing", "no finished prediction")
PRED_FAIL = _failed("PredictorError", "no surface")
GT_FAIL = _failed("MeshLoadError", "truncated GLB")
SKIPPED = {"status": "skipped", "error_type": "Skipped", "error": "not attempted"}


@pytest.mark.parametrize(
    ("evaluate", "predict", "gt", "expected"),
    [
        # evaluate ok decides, whatever the other stages say
        (OK, OK, OK, OK),
        (OK, None, None, OK),
        (OK, PRED_FAIL, None, OK),  # a later predict attempt failed; an earlier one was scored
        # failures: the first cause along GT -> prediction -> evaluation
        (EVAL_FAIL, PRED_FAIL, OK, PRED_FAIL),
        (EVAL_FAIL, PRED_FAIL, None, PRED_FAIL),
        (EVAL_FAIL, PRED_FAIL, GT_FAIL, _failed("MeshLoadError", "evaluation set: truncated GLB")),
        (EVAL_FAIL, OK, GT_FAIL, _failed("MeshLoadError", "evaluation set: truncated GLB")),
        (EVAL_FAIL, OK, OK, EVAL_FAIL),
        (EVAL_FAIL, None, None, EVAL_FAIL),
        (EVAL_FAIL, SKIPPED, None, _failed("Skipped", "not attempted")),  # not ok counts
        (SKIPPED, None, None, _failed("Skipped", "not attempted")),
    ],
)
def test_object_outcome(
    evaluate: dict[str, Any],
    predict: dict[str, Any] | None,
    gt: dict[str, Any] | None,
    expected: dict[str, Any],
) -> None:
    assert object_outcome(evaluate, predict, gt) == expected


# --------------------------------------------------------------------------- runs

Objects = dict[tuple[str, str], str]
"""(dataset, uid) -> "ok" | "failed"."""


def _run(
    run_id: str,
    predictor: str,
    objects: Objects,
    chamfer: float,
    config: dict[str, Any] | None = None,
    created_at: str = "2026-01-01T00:00:00+00:00",
) -> RunRecords:
    """Records with one object row per entry; each ok object gets one image and one geometry
    row whose value (``chamfer``, ``psnr``) says which run it came from."""
    datasets = sorted({d for d, _ in objects})
    if config is None:
        config = {
            "predict": {d: {"predictor": predictor} for d in datasets},
            "evaluate": {d: {"run": run_id} for d in datasets},
        }
    info = RunInfo(
        run_id=run_id,
        predictor=predictor,
        datasets=datasets,
        created_at=created_at,
        config=config,
        versions={"package": run_id},
    )
    obj_rows, image_rows, geo_rows = [], [], []
    for (dataset, uid), status in objects.items():
        ids = {"dataset": dataset, "uid": uid}
        obj_rows.append({**ids, **(OK if status == "ok" else PRED_FAIL)})
        if status == "ok":
            image_rows.append(
                {**ids, "view_set": "orbit", "view": 0, "psnr": 10 * chamfer, "ssim": 0.5}
            )
            geo_rows.append(
                {
                    **ids,
                    "chamfer": chamfer,
                    "fscore": 0.5,
                    "precision": 0.5,
                    "recall": 0.5,
                    "fscore_threshold": 0.2,
                }
            )
    return RunRecords.from_rows(info, image_rows, geo_rows, obj_rows)


def _objects(records: RunRecords) -> Objects:
    return {(r["dataset"], r["uid"]): r["status"] for r in records.objects.to_pylist()}


def _chamfer(records: RunRecords) -> dict[tuple[str, str], float]:
    return {(r["dataset"], r["uid"]): r["chamfer"] for r in records.geometry_metrics.to_pylist()}


PREV = 1.0  # chamfer of the previous run's rows
NEW = 2.0  # chamfer of the new run's rows

CASES: list[tuple[str, Objects | None, Objects, Objects, dict[tuple[str, str], float]]] = [
    # (case, previous objects (None: no earlier run), new objects, merged objects, chamfer)
    ("first evaluation", None, {("gso", "a"): "ok"}, {("gso", "a"): "ok"}, {("gso", "a"): NEW}),
    (
        "another dataset is added beside the earlier one",
        {("gso", "a"): "ok", ("gso", "b"): "failed"},
        {("omni3d", "c"): "ok"},
        {("gso", "a"): "ok", ("gso", "b"): "failed", ("omni3d", "c"): "ok"},
        {("gso", "a"): PREV, ("omni3d", "c"): NEW},
    ),
    (
        "tie: the same dataset again, the latest wins both ways (ok->failed, failed->ok)",
        {("gso", "a"): "ok", ("gso", "b"): "failed"},
        {("gso", "a"): "failed", ("gso", "b"): "ok"},
        {("gso", "a"): "failed", ("gso", "b"): "ok"},
        {("gso", "b"): NEW},
    ),
    (
        "tie: ok both times, the new numbers replace the old",
        {("gso", "a"): "ok"},
        {("gso", "a"): "ok"},
        {("gso", "a"): "ok"},
        {("gso", "a"): NEW},
    ),
    (
        "an object the new evaluation of its dataset did not attempt is dropped",
        {("gso", "a"): "ok", ("gso", "gone"): "ok", ("omni3d", "c"): "failed"},
        {("gso", "a"): "failed"},
        {("gso", "a"): "failed", ("omni3d", "c"): "failed"},
        {},
    ),
    (
        "failed/ok mix over two datasets, one replaced",
        {("gso", "a"): "failed", ("omni3d", "c"): "ok", ("omni3d", "d"): "failed"},
        {("gso", "a"): "ok", ("gso", "e"): "failed"},
        {
            ("gso", "a"): "ok",
            ("gso", "e"): "failed",
            ("omni3d", "c"): "ok",
            ("omni3d", "d"): "failed",
        },
        {("gso", "a"): NEW, ("omni3d", "c"): PREV},
    ),
]


@pytest.mark.parametrize(
    ("previous", "new", "objects", "chamfer"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_merge_rows(
    previous: Objects | None,
    new: Objects,
    objects: Objects,
    chamfer: dict[tuple[str, str], float],
) -> None:
    earlier = None if previous is None else _run("run-a", "visual-hull", previous, PREV)
    latest = _run("run-b", "oracle", new, NEW)
    merged = merge_run_records(earlier, latest)
    assert _objects(merged) == objects
    assert _chamfer(merged) == chamfer
    psnr = {(r["dataset"], r["uid"]): r["psnr"] for r in merged.image_metrics.to_pylist()}
    assert psnr == {k: 10 * v for k, v in chamfer.items()}
    # identity: the directory's first run_id; labels and run.json fields: the latest run's
    assert merged.run_id == ("run-b" if previous is None else "run-a")
    for table in (merged.objects, merged.image_metrics, merged.geometry_metrics):
        assert set(table.column("run_id").to_pylist()) <= {merged.run_id}
        assert set(table.column("predictor").to_pylist()) <= {"oracle"}
    assert merged.info.predictor == "oracle" and merged.info.versions == {"package": "run-b"}
    assert merged.info.datasets == sorted({d for d, _ in objects})


def test_merge_config_keeps_per_dataset_sections_and_drops_the_rest() -> None:
    earlier = _run(
        "run-a",
        "visual-hull",
        {("gso", "a"): "ok", ("omni3d", "c"): "ok"},
        PREV,
        config={
            "predict": {"gso": {"v": "a-gso"}, "omni3d": {"v": "a-omni"}},
            "evaluate": {"seed": 0},  # not per dataset (an older layout): dropped
            "notes": {"gso": "only in the earlier run"},  # a section the new run lacks: dropped
        },
    )
    latest = _run(
        "run-b",
        "visual-hull",
        {("gso", "a"): "ok"},
        NEW,
        config={"predict": {"gso": {"v": "b-gso"}}, "evaluate": {"gso": {"v": "b-gso"}}},
        created_at="2026-02-02T00:00:00+00:00",
    )
    merged = merge_run_records(earlier, latest)
    assert merged.info.config == {
        "predict": {"gso": {"v": "b-gso"}, "omni3d": {"v": "a-omni"}},
        "evaluate": {"gso": {"v": "b-gso"}},
    }
    assert merged.info.created_at == "2026-02-02T00:00:00+00:00"


def test_merge_does_not_modify_its_inputs() -> None:
    earlier = _run("run-a", "visual-hull", {("gso", "a"): "ok"}, PREV)
    latest = _run("run-b", "oracle", {("omni3d", "c"): "ok"}, NEW)
    before = (earlier.objects, earlier.info.config, latest.objects, latest.info.config)
    merge_run_records(earlier, latest)
    assert earlier.objects.equals(before[0]) and latest.objects.equals(before[2])
    assert earlier.info.config is before[1] and "omni3d" not in earlier.info.config["predict"]
    assert latest.info.run_id == "run-b" and latest.info.datasets == ["omni3d"]
