"""The predictor registry is the single truth (choices, options, GPU, fingerprint inputs), and
the package layers import downwards only (instantmesh/rendering/filtering never import
evaluation or pipelines; no library imports pipelines)."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import typing
from pathlib import Path

import numpy as np
import pytest
import trimesh

from evaluation.predictors import (
    DTYPE_NAMES,
    MESH_EXTENSIONS,
    PREDICTORS,
    BasePredictorOptions,
    InstantMeshOptions,
    MeshDirOptions,
    Prediction,
    PredictorEntry,
    PredictorError,
    PredictorInput,
    VisualHullOptions,
    make_predictor,
)
from pipelines.benchmark import (
    BenchmarkConfig,
    PredictConfig,
    PredictorOptions,
    prediction_inputs,
    predictor_options,
)

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("rendering", "filtering", "evaluation", "instantmesh", "training")
LOWER = ("rendering", "filtering", "instantmesh")
"""Libraries below evaluation: they import neither evaluation nor pipelines."""


def _imported_packages(path: Path) -> set[str]:
    """Top-level packages a module imports anywhere (module level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def _layer_violations() -> list[str]:
    bad = []
    for package in LIBRARIES:
        forbidden = {"pipelines"} | ({"evaluation"} if package in LOWER else set())
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in sorted(_imported_packages(path) & forbidden):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    return bad


def test_libraries_import_downwards_only() -> None:
    assert _layer_violations() == []


def test_the_layer_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from pipelines.storage import join\n    import evaluation\n")
    assert _imported_packages(module) == {"pipelines", "evaluation"}


# --------------------------------------------------------------------------- the registry


@pytest.mark.parametrize("name", sorted(PREDICTORS))
def test_each_entry_names_its_class_and_a_frozen_options_dataclass(name: str) -> None:
    entry = PREDICTORS[name]
    assert entry.name == name and entry.description
    assert issubclass(entry.options, BasePredictorOptions)
    assert dataclasses.is_dataclass(entry.options)
    assert entry.options.__dataclass_params__.frozen  # type: ignore[attr-defined]
    if name != "instantmesh":  # loading it imports torch and diffusers: covered elsewhere
        assert entry.load().name == name  # type: ignore[attr-defined]


def test_only_instantmesh_needs_a_gpu() -> None:
    assert [e.name for e in PREDICTORS.values() if e.needs_gpu] == ["instantmesh"]


def test_the_predictor_option_offers_exactly_the_registry_with_descriptions() -> None:
    hints = typing.get_type_hints(PredictorOptions)
    assert set(typing.get_args(hints["predictor"])) == set(PREDICTORS)
    help_text = typing.get_type_hints(PredictorOptions, include_extras=True)["predictor"]
    described = " ".join(str(m.help) for m in help_text.__metadata__)
    for entry in PREDICTORS.values():
        assert f"{entry.name}: {entry.description}" in described


def test_cli_help_lists_each_predictor(capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.cli import main

    assert main(["predict", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for entry in PREDICTORS.values():
        assert entry.name in out
    assert "weight-free CPU baseline" in out


def test_cli_options_and_predictor_options_agree_on_defaults_and_coverage() -> None:
    """Every predictor option that has a CLI option has the CLI's default, and every CLI
    predictor option is taken by some predictor (no option the ladder forgot)."""
    cli = {f.name: f for f in dataclasses.fields(PredictorOptions)}
    taken: set[str] = set()
    for entry in PREDICTORS.values():
        for f in dataclasses.fields(entry.options):
            if f.name in cli:
                taken.add(f.name)
                assert f.default == cli[f.name].default, (entry.name, f.name)
    assert set(cli) - taken == {"predictor", "gpus_per_worker"}


def test_instantmesh_dtype_names_match_the_adapters_torch_dtypes() -> None:
    from evaluation.instantmesh_predictor import DTYPES

    assert set(DTYPE_NAMES) == {"auto", *DTYPES}


# --------------------------------------------------------------------------- options


def test_options_come_from_the_job_config_by_field_name(tmp_path: Path) -> None:
    cfg = PredictConfig(
        evalset="e", out="o", predictor="mesh-dir", mesh_dir=str(tmp_path), convention="lgm"
    )
    assert predictor_options(cfg) == MeshDirOptions(mesh_dir=str(tmp_path), convention="lgm")
    cfg = PredictConfig(evalset="e", out="o", predictor="visual-hull", resolution=40)
    assert predictor_options(cfg) == VisualHullOptions(resolution=40)


def test_metric_options_of_the_same_name_do_not_leak_into_predictor_options() -> None:
    """``BenchmarkConfig.device`` is where metrics run; the LRM's own device stays auto."""
    cfg = BenchmarkConfig(
        evalsets=["e"],
        out="o",
        predictor="instantmesh",
        checkpoint="m.ckpt",
        views="ground-truth",
        diffusion_seed=7,
        device="cpu",
        seed=3,
    )
    options = predictor_options(cfg)
    assert isinstance(options, InstantMeshOptions)
    assert (options.device, options.diffusion_seed, options.checkpoint) == ("auto", 7, "m.ckpt")


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("mesh-dir", {}, "needs --mesh-dir"),
        ("mesh-dir", {"mesh_dir": "/nonexistent/meshes"}, "is not a directory"),
        ("instantmesh", {}, "needs --checkpoint"),
        ("instantmesh", {"checkpoint": "m"}, "needs --zero123pp"),
        ("instantmesh", {"checkpoint": "m", "views": "ground-truth", "steps": 0}, "--steps"),
        ("instantmesh", {"checkpoint": "m", "views": "ground-truth", "dtype": "f8"}, "--dtype"),
        ("instantmesh", {"checkpoint": "m", "views": "mixed"}, "--views"),
        ("visual-hull", {"resolution": 4}, "--resolution must be >= 8"),
        ("visual-hull", {"colour": True}, "takes no option.*colour.*its options: layout_prior"),
        ("nope", {}, "unknown predictor 'nope'; choose one of"),
    ],
)
def test_bad_options_fail_naming_the_option(
    name: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(PredictorError, match=message):
        make_predictor(name, **options)


def test_mesh_dir_convention_is_checked_before_any_file_is_read(tmp_path: Path) -> None:
    with pytest.raises(PredictorError, match="unknown convention 'sideways'"):
        MeshDirOptions(mesh_dir=str(tmp_path), convention="sideways").validate()


def test_make_predictor_passes_options_and_none_means_default() -> None:
    predictor = make_predictor("visual-hull", resolution=24, layout_prior=False, smooth_sigma=None)
    assert (predictor.resolution, predictor.layout_prior) == (24, False)  # type: ignore[attr-defined]
    assert predictor.smooth_sigma == 0.0  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- fingerprints


def _fingerprint(cfg: PredictConfig, uid: str = "obj") -> dict[str, object]:
    return dict(json.loads(prediction_inputs({"uid": uid}, cfg)))


def test_mesh_dir_fingerprint_follows_the_mesh_it_would_import(tmp_path: Path) -> None:
    meshes = tmp_path / "meshes"
    meshes.mkdir()
    cfg = PredictConfig(evalset=str(tmp_path / "es"), out="o", predictor="mesh-dir")
    cfg = dataclasses.replace(cfg, mesh_dir=str(meshes))
    assert _fingerprint(cfg) == {"gt": None, "predictor_yaml": "missing", "prediction": "missing"}
    (meshes / "obj.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    first = _fingerprint(cfg)
    assert list(first["prediction"]) == ["obj.obj"]  # type: ignore[call-overload]
    (meshes / "obj.obj").write_text("v 0 0 0\nv 2 0 0\nv 0 1 0\nf 1 2 3\n")
    assert _fingerprint(cfg) != first
    # .glb comes before .obj in MESH_EXTENSIONS: the predictor would import it instead.
    assert MESH_EXTENSIONS.index(".glb") < MESH_EXTENSIONS.index(".obj")
    os.symlink(meshes / "absent.glb", meshes / "obj.glb")  # dangling: fingerprinted as missing
    assert list(_fingerprint(cfg)["prediction"]) == ["obj.glb"]  # type: ignore[call-overload]
    (meshes / "predictor.yaml").write_text("convention: lgm\n")
    assert str(_fingerprint(cfg)["predictor_yaml"]).startswith("sha256:")


def test_other_predictors_fingerprint_only_the_evaluation_object(tmp_path: Path) -> None:
    cfg = PredictConfig(evalset=str(tmp_path), out="o", predictor="visual-hull")
    assert _fingerprint(cfg) == {"gt": None}


# --------------------------------------------------------------------------- extending


@dataclasses.dataclass(frozen=True, kw_only=True)
class CubeOptions(BasePredictorOptions):
    size: float = 1.0

    def validate(self) -> None:
        if self.size <= 0:
            raise PredictorError(f"cube: size must be > 0, got {self.size}")


class CubePredictor:
    name = "cube"

    def __init__(self, options: CubeOptions) -> None:
        options.validate()
        self.size = options.size

    def predict(self, item: PredictorInput) -> Prediction:
        return Prediction(trimesh.creation.box([self.size] * 3), "identity", {"uid": item.uid})

    def close(self) -> None:
        pass


def test_a_new_predictor_is_one_class_and_one_entry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    entry = PredictorEntry("cube", f"{__name__}:CubePredictor", CubeOptions, "a box (example)")
    monkeypatch.setitem(PREDICTORS, "cube", entry)
    prediction = make_predictor("cube", size=2.0).predict(PredictorInput("u", "gso", tmp_path))
    np.testing.assert_allclose(prediction.mesh.extents, [2.0, 2.0, 2.0])
    assert prediction.info == {"uid": "u"}
    with pytest.raises(PredictorError, match="size must be > 0"):
        make_predictor("cube", size=0.0)
