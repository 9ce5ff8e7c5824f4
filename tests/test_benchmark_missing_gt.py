"""Predict and evaluate an object the evaluation set could not build (an untextured GT, a build
that never ran): the status row names the evaluation set, not the first file a predictor or the
evaluator happens to miss (``gt_mesh.glb: file not found``, ``missing zero123pp/cameras.npz``,
``no finished prediction``), as seen on real GSO-layout folders with untextured meshes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.predictors import make_predictor
from pipelines.benchmark import (
    EvaluateConfig,
    GroundTruthMissing,
    PredictConfig,
    evaluate_item,
    finished_object_dir,
    predict_item,
)
from pipelines.stage import ItemContext


def _half_built(evalset: Path, uid: str) -> None:
    """An object folder as a failed build can leave it: files, but no completion marker."""
    folder = evalset / "objects" / uid
    (folder / "zero123pp").mkdir(parents=True)
    (folder / "input.png").write_bytes(b"")


@pytest.mark.parametrize("predictor", ["oracle", "visual-hull"])
def test_predict_names_the_unbuilt_ground_truth(tmp_path: Path, predictor: str) -> None:
    evalset = tmp_path / "gso"
    _half_built(evalset, "Bunny")
    cfg = PredictConfig(evalset=str(evalset), out=str(tmp_path / "run"), predictor=predictor)
    ctx = ItemContext("Bunny", 1, cfg, make_predictor(predictor), tmp_path / "scratch")
    with pytest.raises(GroundTruthMissing, match="Bunny: the evaluation set has no finished") as e:
        predict_item({"uid": "Bunny", "source": "gso"}, ctx)
    assert str(evalset / "evalset-build") in str(e.value)


def test_evaluate_names_the_unbuilt_ground_truth_before_the_missing_prediction(
    tmp_path: Path,
) -> None:
    evalset = tmp_path / "gso"
    _half_built(evalset, "Bunny")
    cfg = EvaluateConfig(evalset=str(evalset), out=str(tmp_path / "run"))
    ctx = ItemContext("Bunny", 1, cfg, None, tmp_path / "scratch")
    with pytest.raises(GroundTruthMissing, match="evalset-build"):
        evaluate_item({"uid": "Bunny", "source": "gso"}, ctx)


def test_a_finished_object_folder_is_returned(tmp_path: Path) -> None:
    evalset = tmp_path / "gso"
    _half_built(evalset, "Duck")
    folder = evalset / "objects" / "Duck"
    with pytest.raises(GroundTruthMissing):
        finished_object_dir(str(evalset), "Duck")
    (folder / "_SUCCESS.json").write_text(json.dumps({"uid": "Duck"}))
    assert finished_object_dir(str(evalset), "Duck") == folder
