"""``imesh predict`` / ``imesh evaluate`` / ``imesh benchmark``: predictors over an evaluation set
on Ray, then metrics into the run records the reports read.

``predict`` (stage ``predict-<dataset>``): evaluation-set manifest -> a predictor **actor pool**
(each actor builds its predictor once in ``Stage.setup``; GPU predictors declare ``num_gpus=1``
when the cluster has GPUs) -> ``<run>/predictions/<dataset>/<uid>/mesh.glb`` in the GT's world
frame (the protocol alignment: the predictor's axis convention, then the evaluation object's
input-camera pose for methods that reconstruct relative to the input view; see
``evaluation.alignment.to_evaluation_frame``) + ``prediction.json`` (convention, frame, the
3x3 map applied, the predictor's own record) + the predictor's extra files (``views.png``).

``evaluate`` (stage ``evaluate-<dataset>``): per object, render the prediction at the GT
views' cameras with a render backend (``rendering.backends.BACKENDS``), image metrics against
the GT views, Chamfer / F-Score against the GT mesh (``evaluation.evaluate_object``) ->
``<run>/eval_renders/<dataset>/<uid>/<view set>/NNN.png``. Predictions are rendered like the
evaluation set's GT views: backend, shading, size and samples default to what its
``evalset.json`` records; a different explicit value is refused (``ConfigError``, exit 2)
unless ``--force-render-settings`` is given, and the deviation is then recorded in ``run.json``
(``config.render_settings``).
Then the run records are compiled (``evaluation.run_records``): one row per view, per object,
and one status row per object (failures from either stage included, with their cause).

``benchmark`` runs the two stages as one job per evaluation set (``pipelines.runner.run_stages``):
each worker builds its predictor and render backend once and predicts then evaluates each object
in turn, with the outputs, status rows, resume rules and run records of ``predict`` followed by
``evaluate``.

Both stages stream one object at a time (never all meshes in memory), write status rows and
resume: re-running the same command skips finished objects. An evaluation is also tied to the
prediction and GT it scored (``evaluation_inputs``): re-predicting an object, e.g. with another
predictor into the same run, makes the next ``evaluate`` redo it.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import pyarrow as pa
from tyro.conf import arg

from evaluation.evaluate_object import EvalOptions, evaluate_object, png_bytes
from evaluation.geometry import threshold_key
from evaluation.metric_registry import METRICS, Metric, metric_names
from evaluation.predictors import (
    PREDICTORS,
    BasePredictorOptions,
    DtypeName,
    PredictionMissing,
    PredictorInput,
    ViewsSource,
    predictor_entry,
    predictor_help,
)
from evaluation.run_records import (
    RunInfo,
    RunRecordError,
    RunRecords,
    merge_run_records,
    object_outcome,
    read_run,
    write_run_records,
)
from pipelines import storage
from pipelines.configs import NO_HASH, ConfigError, registry_choices
from pipelines.render import BackendName, backend_help, check_shading
from pipelines.runner import RunOptions, StageReport, run_stage, run_stages
from pipelines.schema import read_manifest, read_parquet
from pipelines.stage import ItemContext, Stage
from rendering.mesh_io import load_world_mesh, world_mesh_glb_bytes
from rendering.provenance import git_commit, versions

EVALSET_OBJECTS = "objects"

if TYPE_CHECKING:
    PredictorName = str
else:
    PredictorName = registry_choices(PREDICTORS)


@dataclass(kw_only=True)
class PredictorOptions:
    """Which predictor and its options (shared by predict, benchmark and nightly). A predictor
    takes the fields its options dataclass has (``evaluation.predictors.PREDICTORS``), by name."""

    predictor: Annotated[PredictorName, arg(help=predictor_help())] = "visual-hull"
    variant: str | None = None
    """Model variant (instantmesh: instant-mesh-large, instant-nerf-base, ...)."""
    checkpoint: str | None = None
    """Checkpoint file for model predictors."""
    mesh_dir: str | None = None
    """mesh-dir: folder with <uid>.glb/.obj/.ply meshes."""
    convention: str | None = None
    """mesh-dir: axis convention of those meshes (evaluation.alignment names)."""
    resolution: int = 64
    """visual-hull: voxel grid resolution."""
    mc_resolution: int = 256
    """instantmesh NeRF variants: marching-cubes grid resolution."""
    density_threshold: float = 10.0
    """instantmesh NeRF variants: density iso-level of the extracted surface."""
    views: ViewsSource = "generated"
    """instantmesh: where the six views come from. generated (the paper's task): the object's
    input.png -> Zero123++ -> six views; ground-truth: the six views rendered from the GT mesh
    (an ablation: an upper bound for the LRM, labelled 'GT views (upper bound)' in tables)."""
    zero123pp: str | None = None
    """instantmesh --views generated: the Zero123++ v1.2 diffusers folder (local; never
    downloaded)."""
    unet: str | None = None
    """instantmesh --views generated: InstantMesh's white-background UNet weights file
    (diffusion_pytorch_model.bin), loaded strictly into the Zero123++ UNet."""
    dtype: DtypeName = "auto"
    """instantmesh: Zero123++ dtype; auto = float16 on CUDA (upstream's), float32 on CPU."""
    steps: int = 75
    """instantmesh: diffusion steps (paper: 75)."""
    guidance: float = 4.0
    """instantmesh: classifier-free guidance scale (paper: 4.0)."""
    rembg_model: str | None = None
    """instantmesh --views generated: local u2net.onnx for inputs without transparency (the
    evaluation sets' input.png carry alpha and never need it); default: rembg's cache."""
    diffusion_seed: int = 42
    """instantmesh: run seed; each object's diffusion seed is derived from (this, uid)."""
    gpus_per_worker: float = field(default=1.0, metadata=NO_HASH)
    """GPUs per predictor actor for GPU predictors (when the cluster has GPUs)."""


@dataclass(kw_only=True)
class MetricOptions:
    """How predictions are rendered and scored (shared by evaluate, benchmark and nightly)."""

    backend: Annotated[
        BackendName | None,
        backend_help(
            "Renderer of the predictions; default (None): the evaluation set's, which rendered "
            "the GT views (evalset.json)."
        ),
    ] = None
    """Renderer of the predictions (default: the evaluation set's; choices:
    ``rendering.backends.BACKENDS``)."""
    shading: Literal["lit", "unlit"] | None = None
    """Shading of the prediction renders; default (None): the evaluation set's."""
    size: int | None = None
    """Image width of the prediction renders and the compared images; default (None): the
    evaluation set's view size (another size resamples the GT views)."""
    samples: int | None = None
    """Samples per pixel of the prediction renders (backends that honour them: blender);
    default (None): the evaluation set's."""
    force_render_settings: bool = field(default=False, metadata=NO_HASH)
    """Evaluate even where --backend / --shading / --size / --samples differ from the
    evaluation set's render settings (recorded in run.json and reported); without it such a
    mismatch is refused (exit 2): predictions must be rendered like the GT views."""
    lpips_net: str = "vgg"
    """LPIPS backbone: vgg (default), alex, squeeze; 'none' to skip. Weights must be cached
    locally ($TORCH_HOME); when absent LPIPS is reported unavailable (null), never invented."""
    n_points: int = 16000
    """Surface samples per mesh for Chamfer / F-Score."""
    fscore_threshold: float = 0.2
    """F-Score threshold (normalized units; paper: 0.2)."""
    icp: bool = False
    """Refine the alignment with ICP before metrics (off: the paper protocol)."""
    align: Literal["protocol", "search"] = "protocol"
    """protocol: score each prediction where the protocol puts it (its axis convention + the
    input view's pose). search: also a brute-force yaw (and, for view-space methods, pitch)
    search + similarity ICP, reported as separate best-aligned Chamfer / F-Score columns
    (chamfer_aligned, fscore_aligned, align_transform) beside the protocol numbers."""
    seed: int = 0
    """Sampling seed."""
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata=NO_HASH)
    """Where evaluate actors compute LPIPS/SSIM: auto = CUDA when the Ray cluster has GPUs
    (each actor then reserves --metrics-gpus-per-worker), else CPU; cuda = require GPUs. The
    nvdiffrast backend needs CUDA. Values agree across devices up to float rounding (LPIPS
    convolutions run in IEEE FP32 on GPUs too, never TF32)."""
    metrics_gpus_per_worker: float = field(default=0.25, metadata=NO_HASH)
    """GPU share each evaluate actor reserves when metrics run on CUDA."""


@dataclass(kw_only=True)
class JobOptions:
    run: RunOptions = field(default_factory=RunOptions, metadata=NO_HASH)
    """Execution settings (workers, shard size, progress)."""
    address: str | None = field(default=None, metadata=NO_HASH)
    """Ray cluster address; default: RAY_ADDRESS if set, else a local embedded Ray."""


@dataclass(kw_only=True)
class PredictConfig(PredictorOptions, JobOptions):
    """Run a predictor over an evaluation set (one actor per worker; resumable)."""

    evalset: str
    """Evaluation set directory written by `imesh evalset` (holds manifest.parquet, objects/)."""
    out: str
    """Run directory (URL): predictions/, eval_renders/, metrics/, run.json."""


@dataclass(kw_only=True)
class EvaluateConfig(MetricOptions, JobOptions):
    """Metrics of a run's predictions against its evaluation set -> run records (Parquet)."""

    evalset: str
    """Evaluation set directory (the one the predictions were made on)."""
    out: str
    """Run directory (the `imesh predict --out`)."""


@dataclass(kw_only=True)
class BenchmarkConfig(PredictorOptions, MetricOptions, JobOptions):
    """Predict + evaluate on one or more evaluation sets, then write the report."""

    evalsets: list[str]
    """Evaluation set directories (e.g. evalsets/gso evalsets/omni3d)."""
    out: str
    """Run directory."""
    report: bool = True
    """Also write tables.md / tables.tex / report.html into <out>/report."""


def subset_config(cls: type[Any], cfg: Any, **extra: Any) -> Any:
    """An instance of config class ``cls`` with the same-named fields of ``cfg`` (+ ``extra``)."""
    from dataclasses import fields

    names = {f.name for f in fields(cls)}
    values = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name in names}
    return cls(**{**values, **extra})


# ----------------------------------------------------------------------------------------------
# evaluation set access


def evalset_dataset(evalset: str) -> str:
    """The dataset an evaluation set was built from (its ``evalset.json``); a folder that is
    not an evaluation set is a ConfigError, naming the sets below it when there are some."""
    url = storage.join(evalset, "evalset.json")
    if not storage.exists(url):
        fs, root = storage.filesystem(evalset)
        below = sorted(
            p.rstrip("/").split("/")[-2] for p in fs.glob(f"{root.rstrip('/')}/*/evalset.json")
        )
        hint = (
            f"; it holds the evaluation sets {', '.join(below)}: pass one of "
            + ", ".join(storage.join(evalset, b) for b in below)
            if below
            else " (build one with `imesh evalset`)"
        )
        raise ConfigError(f"{evalset} is not an evaluation set: no evalset.json{hint}")
    try:
        return str(json.loads(storage.read_text(url))["dataset"])
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{url}: not a valid evalset.json ({e})") from e


RENDER_SETTINGS = ("backend", "shading", "size", "samples")
"""The render settings an evaluation set records and ``evaluate`` renders predictions with."""


def evalset_render_settings(evalset: str) -> dict[str, Any]:
    """How the evaluation set's GT views were rendered: ``backend``, ``shading``, ``size`` and
    ``samples`` from its ``evalset.json`` (``samples`` from ``evalset.config.yaml`` for sets
    written before ``evalset.json`` recorded it; ``None`` when neither has it)."""
    evalset_dataset(evalset)  # a folder that is not an evaluation set: ConfigError
    url = storage.join(evalset, "evalset.json")
    info = json.loads(storage.read_text(url))
    settings = {name: info.get(name) for name in RENDER_SETTINGS}
    config_url = storage.join(evalset, "evalset.config.yaml")
    if settings["samples"] is None and storage.exists(config_url):
        import yaml

        settings["samples"] = (yaml.safe_load(storage.read_text(config_url)) or {}).get("samples")
    missing = [name for name in ("backend", "shading", "size") if settings[name] is None]
    if missing:
        raise ConfigError(f"{url}: does not record {', '.join(missing)} (rebuild the set)")
    return settings


def resolve_render_settings(cfg: Any, evalset: str) -> tuple[Any, dict[str, Any]]:
    """``cfg`` (a :class:`MetricOptions`) with ``backend``, ``shading``, ``size`` and
    ``samples`` filled in from the evaluation set (:func:`evalset_render_settings`) where they
    are None, and the record of what was used (``evaluation_set``, ``used``, ``forced``: the
    settings given that differ from the set's).

    A given value that differs from the set's is a :class:`ConfigError` (one line naming each
    option, the set's value and the given one) unless ``cfg.force_render_settings``. ``samples``
    counts only for a backend that honours it (its registry entry's ``options``).
    """
    from rendering.backends import RenderSettings, backend_entry

    recorded = evalset_render_settings(evalset)
    used = {name: getattr(cfg, name) for name in RENDER_SETTINGS}
    for name, value in recorded.items():
        if used[name] is None:
            used[name] = value
    if used["samples"] is None:  # a set that never recorded it: the backends' default
        used["samples"] = RenderSettings().samples
    try:
        honoured = backend_entry(str(used["backend"])).options
    except ValueError as e:
        raise ConfigError(f"{evalset}/evalset.json: {e}") from e
    differ = [
        name
        for name in RENDER_SETTINGS
        if getattr(cfg, name) is not None
        and recorded[name] is not None
        and getattr(cfg, name) != recorded[name]
        and (name != "samples" or "samples" in honoured)
    ]
    if differ and not cfg.force_render_settings:
        clauses = "; ".join(
            f"--{name} {getattr(cfg, name)} (evaluation set: {recorded[name]})" for name in differ
        )
        raise ConfigError(
            f"render settings differ from the evaluation set {evalset}: {clauses}; predictions "
            "must be rendered like its GT views: drop the option(s) or pass "
            "--force-render-settings"
        )
    check_shading(str(used["backend"]), cfg.shading)  # a forced --shading lit it cannot do
    record = {"evaluation_set": recorded, "used": used, "forced": differ}
    return replace(cfg, **used), record


def check_evaluate_config(cfg: Any, evalset: str) -> Any:
    """Everything about evaluating ``evalset`` that can be checked before Ray starts: it is an
    evaluation set, the render settings agree with it (:func:`resolve_render_settings`), the
    backend can run here (``rendering.backends.unavailable_reason``) and ``--lpips-net`` names
    a backbone. Returns ``cfg`` with the render settings resolved."""
    from evaluation.metrics import parse_lpips_net
    from rendering.backends import BackendUnavailable, unavailable_reason

    resolved, _ = resolve_render_settings(cfg, evalset)
    reason = unavailable_reason(resolved.backend)
    if reason is not None:
        raise BackendUnavailable(reason)
    if cfg.lpips_net.lower() != "none":
        try:
            parse_lpips_net(cfg.lpips_net)
        except ValueError as e:
            raise ConfigError(str(e)) from e
    return resolved


def check_predict_config(cfg: Any, evalset: str) -> str:
    """Everything about predicting ``evalset`` that can be checked before Ray starts, cheaply:
    the predictor and its options (``validate``: a missing ``--mesh-dir``, ``--checkpoint``),
    the evaluation set and its manifest. Returns the set's dataset."""
    if cfg.predictor not in PREDICTORS:
        raise ConfigError(
            f"unknown predictor {cfg.predictor!r}; choose one of {sorted(PREDICTORS)}"
        )
    predictor_options(cfg).validate()
    dataset = evalset_dataset(evalset)
    evalset_manifest(evalset)
    return dataset


def check_predictions(out: str, evalset: str) -> None:
    """``out`` holds predictions for ``evalset``'s dataset (``imesh predict`` ran); checked
    before ``imesh evaluate`` starts Ray."""
    _predict_info(out, evalset_dataset(evalset))


def evalset_manifest(evalset: str) -> pa.Table:
    return read_manifest(storage.join(evalset, "manifest.parquet"))


def object_dir(evalset: str, uid: str) -> Path:
    if not storage.is_local(evalset):
        raise ConfigError(f"evaluation set {evalset}: must be a local or mounted directory")
    return Path(storage.join(evalset, EVALSET_OBJECTS, storage.check_uid(uid)))


class GroundTruthMissing(FileNotFoundError):
    """An object of the evaluation set's manifest that the set has no finished folder for (its
    build failed, e.g. an untextured GT, or never ran)."""


def finished_object_dir(evalset: str, uid: str) -> Path:
    """:func:`object_dir` of an object whose build finished; :class:`GroundTruthMissing`
    naming where the cause is otherwise (rather than the first file a predictor misses)."""
    folder = object_dir(evalset, uid)
    if storage.read_marker(str(folder)) is None:
        raise GroundTruthMissing(
            f"{uid}: the evaluation set has no finished object {folder} (its build failed or "
            f"did not run: imesh status {storage.join(evalset, 'evalset-build')})"
        )
    return folder


# ----------------------------------------------------------------------------------------------
# predict


PREDICT_SCHEMA = pa.schema(
    [("n_vertices", pa.int64()), ("n_faces", pa.int64()), ("convention", pa.string())]
)


def predictor_options(cfg: PredictorOptions) -> BasePredictorOptions:
    """The chosen predictor's options: its options dataclass's fields, taken from ``cfg`` by
    name (a field ``cfg`` lacks keeps its default)."""
    values = {f.name: getattr(cfg, f.name) for f in fields(PredictorOptions)}
    return predictor_entry(cfg.predictor).options_from(values)


def _predictor_setup(cfg: PredictConfig) -> Any:
    return predictor_entry(cfg.predictor).build(predictor_options(cfg))


def predict_item(row: dict[str, Any], ctx: ItemContext) -> dict[str, Any]:
    from evaluation.alignment import convention_frame, to_evaluation_frame

    cfg: PredictConfig = ctx.config
    assert ctx.scratch_dir is not None
    folder = finished_object_dir(cfg.evalset, ctx.uid)
    item = PredictorInput(ctx.uid, row.get("source") or "", folder)
    prediction = ctx.state.predict(item)
    frame = convention_frame(prediction.convention)
    input_camera = None if frame == "world" else item.cameras("")[0]
    world, to_world = to_evaluation_frame(prediction.mesh, prediction.convention, input_camera)
    (ctx.scratch_dir / "mesh.glb").write_bytes(world_mesh_glb_bytes(world))
    for name, data in prediction.files.items():
        (ctx.scratch_dir / name).write_bytes(data)
    info = {
        "predictor": cfg.predictor,
        "convention": prediction.convention,
        "frame": frame,
        "to_world": to_world.tolist(),
        "input_camera": None
        if input_camera is None
        else {"azimuth_deg": input_camera.azimuth_deg, "elevation_deg": input_camera.elevation_deg},
        **prediction.info,
    }
    (ctx.scratch_dir / "prediction.json").write_text(json.dumps(info, indent=1, default=str))
    return {
        "n_vertices": len(world.vertices),
        "n_faces": len(world.faces),
        "convention": prediction.convention,
    }


def predict_stage(cfg: PredictConfig, dataset: str) -> Stage:
    gpus = 0.0
    if predictor_entry(cfg.predictor).needs_gpu:
        import ray

        if ray.cluster_resources().get("GPU", 0) > 0:
            gpus = cfg.gpus_per_worker
    return Stage(
        name=f"predict-{dataset}",
        process=predict_item,
        result_schema=PREDICT_SCHEMA,
        item_output=f"predictions/{dataset}",
        setup=_predictor_setup,
        num_gpus=gpus,
        input_fingerprint=prediction_inputs,
    )


def prediction_inputs(row: dict[str, Any], cfg: PredictConfig) -> str:
    """What a prediction reads besides its config: the evaluation-set object it predicts from
    (its marker) and the files its predictor names (``input_files`` of its options; for
    ``mesh-dir``, the mesh file it imports with the files that mesh references and
    ``predictor.yaml``; content hashes). Replacing a predicted mesh therefore re-predicts the
    object on resume, and ``evaluate`` follows the new prediction's marker."""
    from pipelines.fingerprint import file_digest, fingerprint, mesh_fingerprint

    uid = str(row.get("uid"))
    try:
        parts: dict[str, Any] = {
            "gt": storage.read_marker(storage.join(cfg.evalset, EVALSET_OBJECTS, uid))
        }
        inputs = predictor_options(cfg).input_files(uid)
        for role, path in inputs.files.items():
            parts[role] = file_digest(path)
        for role, mesh in inputs.meshes.items():
            parts[role] = "missing" if mesh is None else {mesh.name: mesh_fingerprint(str(mesh))}
        return fingerprint(**parts)
    except Exception as e:  # a fingerprint never raises: `process` reports the cause
        return fingerprint(error=f"{type(e).__name__}: {e}")


def prepare_predict(cfg: PredictConfig) -> Stage:
    """The predict stage of ``cfg.evalset``, after the checks that fail before any object is
    read: the options (:func:`check_predict_config`), and a predictor built once in the driver
    (fail fast, e.g. on unloadable weights)."""
    dataset = check_predict_config(cfg, cfg.evalset)
    _setup_check = _predictor_setup(cfg)
    _setup_check.close()
    return predict_stage(cfg, dataset)


def run_predict(cfg: PredictConfig) -> StageReport:
    """Predict every evaluation-set object (Ray must be initialised)."""
    stage = prepare_predict(cfg)
    return run_stage(stage, cfg, evalset_manifest(cfg.evalset), cfg.out, cfg.run)


# ----------------------------------------------------------------------------------------------
# evaluate


def evaluate_schema(registry: Mapping[str, Metric] | None = None) -> pa.Schema:
    """The evaluate stage's result columns for a metric registry (default: ``METRICS``): the
    views (``view_set``, ``view``), one list column per per-view metric, then the per-object
    metrics with the protocol geometry's ``precision`` / ``recall`` after the protocol ones and
    the best-alignment details (:data:`ALIGN_DETAILS`) after the optional ones."""
    reg = METRICS if registry is None else registry
    return pa.schema(
        [
            ("view_set", pa.list_(pa.string())),
            ("view", pa.list_(pa.int32())),
            *((m, pa.list_(pa.float64())) for m in metric_names("view", registry=reg)),
            *((m, pa.float64()) for m in metric_names("object", optional=False, registry=reg)),
            *((name, pa.float64()) for name in GEOMETRY_DETAILS),
            *((m, pa.float64()) for m in metric_names("object", optional=True, registry=reg)),
            ("align_transform", pa.list_(pa.float64())),
            ("align_yaw_deg", pa.float64()),
            ("align_pitch_deg", pa.float64()),
            ("align_scale", pa.float64()),
        ]
    )


GEOMETRY_DETAILS = ("precision", "recall")
"""Protocol geometry columns beside the metrics (at the run's F-Score threshold): stage
results and ``geometry_metrics.parquet`` columns."""
ALIGN_DETAILS = ("align_transform", "align_yaw_deg", "align_pitch_deg", "align_scale")
"""The alignment found by ``--align search`` (``evaluation.alignment.search_alignment``): stage
results, and extra ``geometry_metrics.parquet`` columns of the objects that have it."""
EVALUATE_SCHEMA = evaluate_schema()
"""The evaluate stage's result columns for the packaged registry (:func:`evaluate_schema`)."""


def _lpips_setting(cfg: EvaluateConfig) -> str | None:
    """The LPIPS backbone to use, or None when disabled or its weights are not cached."""
    if cfg.lpips_net.lower() == "none":
        return None
    if cfg.lpips_net.endswith("random") or cfg.lpips_net == "random":
        return cfg.lpips_net
    from evaluation.metrics import lpips_backbone_path

    return cfg.lpips_net if lpips_backbone_path(cfg.lpips_net).is_file() else None


def _render_backend(cfg: EvaluateConfig) -> Any:
    from rendering.backends import RenderSettings, make_backend

    if cfg.backend is None or cfg.shading is None or cfg.samples is None:
        raise ConfigError("evaluate: render settings not resolved (resolve_render_settings)")
    # One thread per actor: actors already fill the CPUs (torch's default of one thread per
    # core oversubscribes them and slows the CPU rasterizer many times over).
    settings = RenderSettings(shading=cfg.shading, samples=cfg.samples, threads=1)
    return make_backend(cfg.backend, settings)


@dataclass
class EvaluateState:
    """An evaluate worker's state: its render backend and the metrics it computes."""

    backend: Any
    metrics: tuple[Metric, ...]

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()


@dataclass(frozen=True)
class EvaluateSetup:
    """``Stage.setup`` of the evaluate stage. It carries the metric entries of the driver's
    registry to the workers (Ray pickles it with the stage), so the workers compute exactly
    the columns the driver's result schema and run records declare."""

    metrics: tuple[Metric, ...]

    def __call__(self, cfg: EvaluateConfig) -> EvaluateState:
        return EvaluateState(_render_backend(cfg), self.metrics)


def evaluate_item(row: dict[str, Any], ctx: ItemContext) -> dict[str, Any]:
    cfg: EvaluateConfig = ctx.config
    state: EvaluateState = ctx.state
    assert ctx.scratch_dir is not None
    dataset = str(row["source"])  # evaluation-set manifests name their dataset in `source`
    folder = finished_object_dir(cfg.evalset, ctx.uid)
    pred_url = storage.join(cfg.out, "predictions", dataset, ctx.uid)
    if storage.read_marker(pred_url) is None:
        raise PredictionMissing(f"no finished prediction for {ctx.uid} at {pred_url}")
    pred = load_world_mesh(Path(pred_url) / "mesh.glb")
    frame = "world"
    if cfg.align == "search":
        record = json.loads(storage.read_text(storage.join(pred_url, "prediction.json")))
        frame = str(record.get("frame", "world"))
    options = EvalOptions(
        lpips_net=_lpips_setting(cfg),
        n_points=cfg.n_points,
        fscore_threshold=cfg.fscore_threshold,
        seed=cfg.seed,
        icp=cfg.icp,
        align=cfg.align,
        frame=frame,
        device=cfg.device,  # "cpu" or "cuda": resolved by the driver (resolve_metrics_device)
        image_size=cfg.size,  # the evaluation set's unless forced (resolve_render_settings)
    )
    result = evaluate_object(pred, folder, state.backend, options, state.metrics)
    view_metrics = [m.name for m in state.metrics if m.scope == "view"]
    out: dict[str, list[Any]] = {k: [] for k in ("view_set", "view", *view_metrics)}
    for vs, metrics in result.views.items():
        (ctx.scratch_dir / vs).mkdir()
        for i, image in enumerate(result.renders[vs]):
            (ctx.scratch_dir / vs / f"{i:03d}.png").write_bytes(png_bytes(image))
        n = len(result.renders[vs])
        out["view_set"] += [vs] * n
        out["view"] += list(range(n))
        for k in view_metrics:
            out[k] += [float(x) for x in metrics[k]]
    t = cfg.fscore_threshold
    aligned = result.geometry.get("aligned") or {}
    return {
        **out,
        **result.metrics,
        **{k: result.geometry[threshold_key(k, t)] for k in GEOMETRY_DETAILS},
        **{k: aligned.get(k.removeprefix("align_")) for k in ALIGN_DETAILS},
    }


def resolve_metrics_device(cfg: MetricOptions, cluster_gpus: float) -> Literal["cpu", "cuda"]:
    """``cfg.device`` -> "cpu" or "cuda" for a cluster with ``cluster_gpus`` GPUs; a setting
    that cannot run there is a :class:`ConfigError` naming the option. A backend whose
    registry entry ``needs_gpu`` (nvdiffrast) needs "cuda"; each evaluate actor then reserves
    ``--metrics-gpus-per-worker`` of a GPU for its renders and metrics."""
    from rendering.backends import backend_entry

    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, got {cfg.device!r}")
    try:
        needs_gpu = cfg.backend is not None and backend_entry(cfg.backend).needs_gpu
    except ValueError as e:
        raise ConfigError(f"--backend: {e}") from e
    if cfg.device == "cpu":
        if needs_gpu:
            raise ConfigError(f"--backend {cfg.backend} renders on CUDA: use --device auto or cuda")
        return "cpu"
    if cluster_gpus <= 0:
        if cfg.device == "cuda" or needs_gpu:
            what = "--device cuda" if cfg.device == "cuda" else f"--backend {cfg.backend}"
            raise ConfigError(
                f"{what} needs GPUs but the Ray cluster has none "
                "(use --device cpu / --backend cpu, or a cluster with GPU nodes)"
            )
        return "cpu"
    if not 0 < cfg.metrics_gpus_per_worker <= cluster_gpus:
        raise ConfigError(
            f"--metrics-gpus-per-worker must be in (0, {cluster_gpus:g}] on this cluster, "
            f"got {cfg.metrics_gpus_per_worker}"
        )
    return "cuda"


def evaluation_inputs(row: dict[str, Any], cfg: EvaluateConfig, metrics: Sequence[str] = ()) -> str:
    """Identity of what an evaluation scores: the prediction's and the GT object's completion
    markers (which name the run, attempt and config that produced them), the LPIPS backbone
    actually usable and the ``metrics`` computed (registry names). Re-predicting an object
    (another predictor, a fixed mesh), rebuilding the evaluation set, installing the LPIPS
    weights or registering a metric changes it, so resume re-evaluates that object instead of
    keeping stale metrics (or a null LPIPS, or no value for the new metric)."""
    markers: dict[str, Any] = {"lpips_backbone": _lpips_setting(cfg), "metrics": list(metrics)}
    for name, url in (
        ("prediction", storage.join(cfg.out, "predictions", str(row["source"]), str(row["uid"]))),
        ("gt", storage.join(cfg.evalset, EVALSET_OBJECTS, str(row["uid"]))),
    ):
        try:
            markers[name] = storage.read_marker(url)
        except Exception as exc:  # a fingerprint must not raise; `process` reports the cause
            markers[name] = {"unreadable": type(exc).__name__}
    return json.dumps(markers, sort_keys=True, default=str)


def evaluate_stage(
    dataset: str, num_gpus: float = 0.0, registry: Mapping[str, Metric] | None = None
) -> Stage:
    """The evaluate stage of ``dataset``: every metric of ``registry`` (default: ``METRICS``,
    read now, in the driver; an entry without a compute function is refused here)."""
    metrics = tuple((METRICS if registry is None else registry).values())
    for metric in metrics:
        metric.compute_function()  # a bad target fails here, not once per object
    return Stage(
        name=f"evaluate-{dataset}",
        process=evaluate_item,
        result_schema=evaluate_schema({m.name: m for m in metrics}),
        item_output=f"eval_renders/{dataset}",
        setup=EvaluateSetup(metrics),
        num_gpus=num_gpus,
        input_fingerprint=functools.partial(
            evaluation_inputs, metrics=tuple(m.name for m in metrics)
        ),
    )


def _predict_info(out: str, dataset: str) -> dict[str, Any]:
    cfg_url = storage.join(out, f"predict-{dataset}", "config.yaml")
    if not storage.exists(cfg_url):
        raise ConfigError(
            f"{out}: no predictions for dataset {dataset!r} (run `imesh predict` first)"
        )
    import yaml

    data: dict[str, Any] = yaml.safe_load(storage.read_text(cfg_url)) or {}
    return data


def compile_run_records(
    cfg: EvaluateConfig,
    dataset: str,
    report: StageReport,
    render_settings: dict[str, Any] | None = None,
) -> RunRecords:
    """Merge this dataset's predict + evaluate outcomes into the run's records (the policy:
    ``evaluation.run_records.object_outcome`` per object, ``merge_run_records`` per run);
    ``render_settings`` (:func:`resolve_render_settings`' record) goes to ``run.json``'s
    ``config.render_settings.<dataset>``."""
    predict_cfg = _predict_info(cfg.out, dataset)
    pconf = predict_cfg.get("config", predict_cfg)
    predictor = str(pconf.get("predictor", "unknown"))
    backbone = _lpips_setting(cfg)
    try:
        previous: RunRecords | None = read_run(cfg.out)
    except RunRecordError:
        previous = None
    # Per dataset: each evaluation set is predicted and evaluated with its own config.
    info = RunInfo(
        run_id=Path(cfg.out.rstrip("/")).name or "run",  # an existing run keeps its own
        predictor=predictor,
        variant=pconf.get("variant"),
        datasets=[dataset],
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        config={
            "predict": {dataset: pconf},
            "evaluate": {dataset: _plain(asdict(cfg))},
            "render_settings": {dataset: _plain(render_settings)} if render_settings else {},
        },
        versions=versions(),
        git_commit=git_commit(),
        lpips_backbone=backbone,
        lpips_available=backbone is not None and not backbone.endswith("random"),
    )
    status = read_parquet(report.status_uri).to_pylist()
    results = {r["uid"]: r for r in read_parquet(report.results_uri).to_pylist()}
    pstatus = {
        r["uid"]: r
        for r in read_parquet(
            storage.join(cfg.out, f"predict-{dataset}", "status.parquet")
        ).to_pylist()
    }
    build_uri = storage.join(cfg.evalset, "evalset-build", "status.parquet")
    gt_status = (
        {r["uid"]: r for r in read_parquet(build_uri).to_pylist()}
        if storage.exists(build_uri)
        else {}
    )
    image_rows, geo_rows, obj_rows = [], [], []
    view_metrics = metric_names("view")
    for s in status:
        uid = s["uid"]
        ids = {"dataset": dataset, "uid": uid}
        outcome = object_outcome(s, pstatus.get(uid), gt_status.get(uid))
        obj_rows.append({**ids, **outcome})
        if outcome["status"] != "ok":
            continue
        r = results[uid]
        for vs, view, *values in zip(
            r["view_set"], r["view"], *(r[m] for m in view_metrics), strict=True
        ):
            image_rows.append(
                {
                    **ids,
                    "view_set": vs,
                    "view": view,
                    **{m: _recorded(m, v, info) for m, v in zip(view_metrics, values, strict=True)},
                    "pred_uri": storage.join(
                        cfg.out, "eval_renders", dataset, uid, vs, f"{view:03d}.png"
                    ),
                    "gt_uri": storage.join(
                        cfg.evalset, EVALSET_OBJECTS, uid, vs, f"{view:03d}.png"
                    ),
                }
            )
        geo_rows.append(
            {
                **ids,
                **{m: r[m] for m in metric_names("object")},
                **{k: r[k] for k in GEOMETRY_DETAILS},
                "fscore_threshold": cfg.fscore_threshold,
                # The alignment found (--align search) as extra columns, only when computed.
                **({k: r[k] for k in ALIGN_DETAILS} if r[ALIGN_DETAILS[0]] is not None else {}),
            }
        )
    records = merge_run_records(
        previous, RunRecords.from_rows(info, image_rows, geo_rows, obj_rows)
    )
    write_run_records(cfg.out, records)
    return records


def _recorded(metric: str, value: float | None, info: RunInfo) -> float | None:
    """A per-view value as the run records keep it: null where the run cannot vouch for the
    metric (``RunInfo.unavailable_metrics``: LPIPS without real weights) and, in a nullable
    column, where it was not computed (NaN)."""
    if value is None or metric in info.unavailable_metrics:
        return None
    if not METRICS[metric].required and np.isnan(value):
        return None
    return value


@dataclass(frozen=True)
class PreparedEvaluation:
    """An evaluate stage ready to run: its config with the render settings and the metrics
    device resolved, and the record of the render settings (``run.json``)."""

    stage: Stage
    config: EvaluateConfig
    dataset: str
    render_settings: dict[str, Any]


def prepare_evaluate(cfg: EvaluateConfig) -> PreparedEvaluation:
    """The evaluate stage of ``cfg.evalset``: render settings resolved from the evaluation set
    (a forced mismatch is printed as a note), the resolved backend checked to run here, the
    metrics device resolved for the Ray cluster (Ray must be initialised)."""
    import ray

    dataset = evalset_dataset(cfg.evalset)
    cfg, render_settings = resolve_render_settings(cfg, cfg.evalset)
    check_evaluate_config(cfg, cfg.evalset)  # the resolved backend can run here
    if render_settings["forced"]:
        forced = "; ".join(
            f"--{name} {render_settings['used'][name]} "
            f"(evaluation set: {render_settings['evaluation_set'][name]})"
            for name in render_settings["forced"]
        )
        render_settings["note"] = f"forced render settings (--force-render-settings): {forced}"
        from pipelines.summary import make_console

        make_console().print(f"[yellow]note:[/] {dataset}: {render_settings['note']}")
    device = resolve_metrics_device(cfg, float(ray.cluster_resources().get("GPU", 0.0)))
    cfg = replace(cfg, device=device)  # actors get the resolved device and render settings
    gpus = cfg.metrics_gpus_per_worker if device == "cuda" else 0.0
    return PreparedEvaluation(evaluate_stage(dataset, gpus), cfg, dataset, render_settings)


def run_evaluate(cfg: EvaluateConfig) -> tuple[StageReport, RunRecords]:
    """Evaluate every prediction of the run on this evaluation set and write the run records."""
    _predict_info(cfg.out, evalset_dataset(cfg.evalset))  # predictions exist
    ev = prepare_evaluate(cfg)
    report = run_stage(ev.stage, ev.config, evalset_manifest(cfg.evalset), cfg.out, cfg.run)
    return report, compile_run_records(ev.config, ev.dataset, report, ev.render_settings)


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


def run_benchmark(cfg: BenchmarkConfig) -> tuple[list[StageReport], RunRecords]:
    """Predict and evaluate every evaluation set into one run (Ray must be initialised).

    Per evaluation set, predict and evaluate run as one job (``pipelines.runner.run_stages``):
    each object is predicted and then evaluated in the same worker, which builds its predictor
    and render backend once; the outputs, status rows, resume rules and run records are those
    of ``imesh predict`` followed by ``imesh evaluate``. Returns each set's predict and
    evaluate reports, in order, and the run records."""
    if not cfg.evalsets:
        raise ConfigError("--evalsets needs at least one evaluation set directory")
    reports: list[StageReport] = []
    records: RunRecords | None = None
    for evalset in cfg.evalsets:
        predict_cfg = subset_config(PredictConfig, cfg, evalset=evalset)
        predict = prepare_predict(predict_cfg)
        ev = prepare_evaluate(subset_config(EvaluateConfig, cfg, evalset=evalset))
        steps = [(predict, predict_cfg), (ev.stage, ev.config)]
        stage_reports = run_stages(steps, evalset_manifest(evalset), cfg.out, cfg.run)
        reports += stage_reports
        records = compile_run_records(ev.config, ev.dataset, stage_reports[-1], ev.render_settings)
    assert records is not None
    if cfg.report:
        from pipelines.report import ReportConfig, run_report

        run_report(
            ReportConfig(runs=[cfg.out], out=storage.join(cfg.out, "report"), print_tables=False)
        )
    return reports, records
