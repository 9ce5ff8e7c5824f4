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
views' cameras with a render backend (``cpu`` rasterizer or ``nvdiffrast`` on GPU), image
metrics against the GT views, Chamfer / F-Score against the GT mesh
(``evaluation.evaluate_object``) -> ``<run>/eval_renders/<dataset>/<uid>/<view set>/NNN.png``.
Then the run records are compiled (``evaluation.run_records``): one row per view, per object,
and one status row per object (failures from either stage included, with their cause).

Both stages stream one object at a time (never all meshes in memory), write status rows and
resume: re-running the same command skips finished objects. An evaluation is also tied to the
prediction and GT it scored (``evaluation_inputs``): re-predicting an object, e.g. with another
predictor into the same run, makes the next ``evaluate`` redo it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from evaluation.evaluate_object import EvalOptions, evaluate_object, png_bytes
from evaluation.geometry import threshold_key
from evaluation.predictors import (
    GPU_PREDICTORS,
    PREDICTORS,
    PredictionMissing,
    PredictorInput,
    make_predictor,
)
from evaluation.run_records import RunInfo, RunRecordError, RunRecords, read_run, write_run_records
from pipelines import storage
from pipelines.configs import NO_HASH, ConfigError, git_commit
from pipelines.runner import RunOptions, StageReport, run_stage
from pipelines.schema import read_manifest, read_parquet
from pipelines.stage import ItemContext, Stage
from rendering.mesh_io import load_world_mesh, world_mesh_glb_bytes

EVALSET_OBJECTS = "objects"


@dataclass(kw_only=True)
class PredictorOptions:
    """Which predictor and its options (shared by predict, benchmark and nightly)."""

    predictor: Literal["oracle", "visual-hull", "mesh-dir", "instantmesh"] = "visual-hull"
    """oracle: the GT (sanity); visual-hull: weight-free CPU baseline; mesh-dir: meshes of another
    method; instantmesh: the LRM (needs --checkpoint)."""
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
    views: Literal["generated", "ground-truth"] = "generated"
    """instantmesh: where the six views come from. generated (the paper's task): the object's
    input.png -> Zero123++ -> six views; ground-truth: the six views rendered from the GT mesh
    (an ablation: an upper bound for the LRM, labelled 'GT views (upper bound)' in tables)."""
    zero123pp: str | None = None
    """instantmesh --views generated: the Zero123++ v1.2 diffusers folder (local; never
    downloaded)."""
    unet: str | None = None
    """instantmesh --views generated: InstantMesh's white-background UNet weights file
    (diffusion_pytorch_model.bin), loaded strictly into the Zero123++ UNet."""
    dtype: Literal["auto", "float16", "float32", "bfloat16"] = "auto"
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

    backend: Literal["cpu", "nvdiffrast"] = "cpu"
    """Renderer for the predictions (match how the GT views were rendered: cpu by default)."""
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


def evalset_manifest(evalset: str) -> pa.Table:
    return read_manifest(storage.join(evalset, "manifest.parquet"))


def object_dir(evalset: str, uid: str) -> Path:
    if not storage.is_local(evalset):
        raise ConfigError(f"evaluation set {evalset}: must be a local or mounted directory")
    return Path(storage.join(evalset, EVALSET_OBJECTS, storage.check_uid(uid)))


# ----------------------------------------------------------------------------------------------
# predict


PREDICT_SCHEMA = pa.schema(
    [("n_vertices", pa.int64()), ("n_faces", pa.int64()), ("convention", pa.string())]
)


def _predictor_setup(cfg: PredictConfig) -> Any:
    options: dict[str, Any] = {}
    if cfg.predictor == "visual-hull":
        options["resolution"] = cfg.resolution
    elif cfg.predictor == "mesh-dir":
        options = {"root": cfg.mesh_dir, "convention": cfg.convention}
    elif cfg.predictor == "instantmesh":
        options = {
            "variant": cfg.variant,
            "checkpoint": cfg.checkpoint,
            "mc_resolution": cfg.mc_resolution,
            "density_threshold": cfg.density_threshold,
            "views": cfg.views,
            "zero123pp": cfg.zero123pp,
            "unet": cfg.unet,
            "dtype": cfg.dtype,
            "steps": cfg.steps,
            "guidance": cfg.guidance,
            "seed": cfg.diffusion_seed,
            "rembg_model": cfg.rembg_model,
        }
    return make_predictor(cfg.predictor, **options)


def predict_item(row: dict[str, Any], ctx: ItemContext) -> dict[str, Any]:
    from evaluation.alignment import convention_frame, to_evaluation_frame

    cfg: PredictConfig = ctx.config
    assert ctx.scratch_dir is not None
    folder = object_dir(cfg.evalset, ctx.uid)
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
    if cfg.predictor in GPU_PREDICTORS:
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
    (its marker) and, for ``mesh-dir``, the mesh file it imports with the files that mesh
    references and ``predictor.yaml`` (content hashes). Replacing a predicted mesh therefore
    re-predicts the object on resume, and ``evaluate`` follows the new prediction's marker."""
    from evaluation.predictors import MESH_EXTENSIONS
    from pipelines.fingerprint import file_digest, fingerprint, mesh_fingerprint

    uid = str(row.get("uid"))
    try:
        parts: dict[str, Any] = {
            "gt": storage.read_marker(storage.join(cfg.evalset, EVALSET_OBJECTS, uid))
        }
        if cfg.predictor == "mesh-dir" and cfg.mesh_dir:
            root = Path(cfg.mesh_dir)
            parts["predictor_yaml"] = file_digest(root / "predictor.yaml")
            for ext in MESH_EXTENSIONS:  # the file MeshDirPredictor picks: first that exists
                candidate = root / f"{uid}{ext}"
                if os.path.lexists(candidate):
                    parts["prediction"] = {candidate.name: mesh_fingerprint(str(candidate))}
                    break
            else:
                parts["prediction"] = "missing"
        return fingerprint(**parts)
    except Exception as e:  # a fingerprint never raises: `process` reports the cause
        return fingerprint(error=f"{type(e).__name__}: {e}")


def run_predict(cfg: PredictConfig) -> StageReport:
    """Predict every evaluation-set object (Ray must be initialised)."""
    if cfg.predictor not in PREDICTORS:
        raise ConfigError(
            f"unknown predictor {cfg.predictor!r}; choose one of {sorted(PREDICTORS)}"
        )
    if cfg.predictor == "mesh-dir" and not cfg.mesh_dir:
        raise ConfigError("--predictor mesh-dir needs --mesh-dir <folder of <uid>.glb/.obj>")
    dataset = evalset_dataset(cfg.evalset)
    _setup_check = _predictor_setup(cfg)  # fail fast in the driver on bad options
    _setup_check.close()
    return run_stage(
        predict_stage(cfg, dataset), cfg, evalset_manifest(cfg.evalset), cfg.out, cfg.run
    )


# ----------------------------------------------------------------------------------------------
# evaluate


EVALUATE_SCHEMA = pa.schema(
    [
        ("view_set", pa.list_(pa.string())),
        ("view", pa.list_(pa.int32())),
        ("psnr", pa.list_(pa.float64())),
        ("ssim", pa.list_(pa.float64())),
        ("lpips", pa.list_(pa.float64())),
        ("chamfer", pa.float64()),
        ("fscore", pa.float64()),
        ("precision", pa.float64()),
        ("recall", pa.float64()),
        ("chamfer_aligned", pa.float64()),
        ("fscore_aligned", pa.float64()),
        ("align_transform", pa.list_(pa.float64())),
        ("align_yaw_deg", pa.float64()),
        ("align_pitch_deg", pa.float64()),
        ("align_scale", pa.float64()),
    ]
)
ALIGNED_COLUMNS = (
    "chamfer_aligned",
    "fscore_aligned",
    "align_transform",
    "align_yaw_deg",
    "align_pitch_deg",
    "align_scale",
)


def _lpips_setting(cfg: EvaluateConfig) -> str | None:
    """The LPIPS backbone to use, or None when disabled or its weights are not cached."""
    if cfg.lpips_net.lower() == "none":
        return None
    if cfg.lpips_net.endswith("random") or cfg.lpips_net == "random":
        return cfg.lpips_net
    from evaluation.metrics import lpips_backbone_path

    return cfg.lpips_net if lpips_backbone_path(cfg.lpips_net).is_file() else None


def _evaluate_setup(cfg: EvaluateConfig) -> Any:
    from rendering.backends import RenderSettings, make_backend

    # One thread per actor: actors already fill the CPUs (torch's default of one thread per
    # core oversubscribes them and slows the CPU rasterizer many times over).
    return make_backend(cfg.backend, RenderSettings(shading="unlit", threads=1))


def evaluate_item(row: dict[str, Any], ctx: ItemContext) -> dict[str, Any]:
    cfg: EvaluateConfig = ctx.config
    assert ctx.scratch_dir is not None
    dataset = str(row["source"])  # evaluation-set manifests name their dataset in `source`
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
    )
    result = evaluate_object(pred, object_dir(cfg.evalset, ctx.uid), ctx.state, options)
    out: dict[str, list[Any]] = {k: [] for k in ("view_set", "view", "psnr", "ssim", "lpips")}
    for vs, metrics in result.views.items():
        (ctx.scratch_dir / vs).mkdir()
        for i, image in enumerate(result.renders[vs]):
            (ctx.scratch_dir / vs / f"{i:03d}.png").write_bytes(png_bytes(image))
        n = len(metrics["psnr"])
        out["view_set"] += [vs] * n
        out["view"] += list(range(n))
        for k in ("psnr", "ssim", "lpips"):
            out[k] += [float(x) for x in metrics[k]]
    t = cfg.fscore_threshold
    geo = result.geometry
    aligned = geo.get("aligned") or {}
    return {
        **out,
        "chamfer": geo["chamfer"],
        **{k: geo[threshold_key(k, t)] for k in ("fscore", "precision", "recall")},
        "chamfer_aligned": aligned.get("chamfer"),
        "fscore_aligned": aligned.get("fscore"),
        "align_transform": aligned.get("transform"),
        "align_yaw_deg": aligned.get("yaw_deg"),
        "align_pitch_deg": aligned.get("pitch_deg"),
        "align_scale": aligned.get("scale"),
    }


def resolve_metrics_device(cfg: MetricOptions, cluster_gpus: float) -> Literal["cpu", "cuda"]:
    """``cfg.device`` -> "cpu" or "cuda" for a cluster with ``cluster_gpus`` GPUs; a setting
    that cannot run there is a :class:`ConfigError` naming the option."""
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, got {cfg.device!r}")
    if cfg.device == "cpu":
        if cfg.backend == "nvdiffrast":
            raise ConfigError("--backend nvdiffrast renders on CUDA: use --device auto or cuda")
        return "cpu"
    if cluster_gpus <= 0:
        if cfg.device == "cuda" or cfg.backend == "nvdiffrast":
            what = "--device cuda" if cfg.device == "cuda" else "--backend nvdiffrast"
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


def evaluation_inputs(row: dict[str, Any], cfg: EvaluateConfig) -> str:
    """Identity of what an evaluation scores: the prediction's and the GT object's completion
    markers (which name the run, attempt and config that produced them). Re-predicting an
    object (another predictor, a fixed mesh) or rebuilding the evaluation set changes it, so
    resume re-evaluates that object instead of keeping stale metrics."""
    markers = {}
    for name, url in (
        ("prediction", storage.join(cfg.out, "predictions", str(row["source"]), str(row["uid"]))),
        ("gt", storage.join(cfg.evalset, EVALSET_OBJECTS, str(row["uid"]))),
    ):
        try:
            markers[name] = storage.read_marker(url)
        except Exception as exc:  # a fingerprint must not raise; `process` reports the cause
            markers[name] = {"unreadable": type(exc).__name__}
    return json.dumps(markers, sort_keys=True, default=str)


def evaluate_stage(dataset: str, num_gpus: float = 0.0) -> Stage:
    return Stage(
        name=f"evaluate-{dataset}",
        process=evaluate_item,
        result_schema=EVALUATE_SCHEMA,
        item_output=f"eval_renders/{dataset}",
        setup=_evaluate_setup,
        num_gpus=num_gpus,
        input_fingerprint=evaluation_inputs,
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


def compile_run_records(cfg: EvaluateConfig, dataset: str, report: StageReport) -> RunRecords:
    """Merge this dataset's predict + evaluate outcomes into the run's records."""
    predict_cfg = _predict_info(cfg.out, dataset)
    pconf = predict_cfg.get("config", predict_cfg)
    predictor = str(pconf.get("predictor", "unknown"))
    lpips = _lpips_setting(cfg)
    try:
        previous: RunRecords | None = read_run(cfg.out)
    except RunRecordError:
        previous = None
    run_id = previous.run_id if previous else Path(cfg.out.rstrip("/")).name or "run"
    # Per dataset: each evaluation set is predicted and evaluated with its own config.
    config: dict[str, dict[str, Any]] = {"predict": {}, "evaluate": {}}
    if previous is not None:
        for key in config:
            earlier = previous.info.config.get(key)
            if isinstance(earlier, dict) and set(earlier) <= set(previous.info.datasets):
                config[key].update(earlier)
    config["predict"][dataset] = pconf
    config["evaluate"][dataset] = _plain(asdict(cfg))
    info = RunInfo(
        run_id=run_id,
        predictor=predictor,
        variant=pconf.get("variant"),
        datasets=sorted(set((previous.info.datasets if previous else []) + [dataset])),
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        config=config,
        versions=_versions(),
        git_commit=git_commit(),
        lpips_backbone=lpips,
        lpips_available=lpips is not None and not lpips.endswith("random"),
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
    for s in status:
        uid = s["uid"]
        ids = {"dataset": dataset, "uid": uid}
        p = pstatus.get(uid)
        if s["status"] != "ok":
            # The first cause wins: a GT object that could not be built, then the prediction.
            g = gt_status.get(uid)
            if g is not None and g["status"] != "ok":
                cause = {**g, "error": f"evaluation set: {g['error']}"}
            else:
                cause = p if p is not None and p["status"] != "ok" else s
            obj_rows.append(
                {
                    **ids,
                    "status": "failed",
                    "error_type": cause["error_type"],
                    "error": cause["error"],
                }
            )
            continue
        r = results[uid]
        obj_rows.append({**ids, "status": "ok", "error_type": None, "error": None})
        for vs, view, ps, ss, lp in zip(
            r["view_set"], r["view"], r["psnr"], r["ssim"], r["lpips"], strict=True
        ):
            image_rows.append(
                {
                    **ids,
                    "view_set": vs,
                    "view": view,
                    "psnr": ps,
                    "ssim": ss,
                    "lpips": None
                    if (lp is None or np.isnan(lp) or not info.lpips_available)
                    else lp,
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
                "chamfer": r["chamfer"],
                "fscore": r["fscore"],
                "precision": r["precision"],
                "recall": r["recall"],
                "fscore_threshold": cfg.fscore_threshold,
                # Best-aligned numbers (--align search) as separate columns, only when computed.
                **{k: r.get(k) for k in ALIGNED_COLUMNS if r.get("chamfer_aligned") is not None},
            }
        )
    if previous is not None:
        keep = lambda t: [x for x in t.to_pylist() if x["dataset"] != dataset]  # noqa: E731
        image_rows = keep(previous.image_metrics) + image_rows
        geo_rows = keep(previous.geometry_metrics) + geo_rows
        obj_rows = keep(previous.objects) + obj_rows
        for rows in (image_rows, geo_rows, obj_rows):
            for x in rows:
                x["run_id"], x["predictor"] = run_id, predictor
    records = RunRecords.from_rows(info, image_rows, geo_rows, obj_rows)
    write_run_records(cfg.out, records)
    return records


def run_evaluate(cfg: EvaluateConfig) -> tuple[StageReport, RunRecords]:
    """Evaluate every prediction of the run on this evaluation set and write the run records."""
    import ray

    dataset = evalset_dataset(cfg.evalset)
    _predict_info(cfg.out, dataset)
    device = resolve_metrics_device(cfg, float(ray.cluster_resources().get("GPU", 0.0)))
    cfg = replace(cfg, device=device)  # actors get the resolved device
    gpus = cfg.metrics_gpus_per_worker if device == "cuda" else 0.0
    report = run_stage(
        evaluate_stage(dataset, gpus), cfg, evalset_manifest(cfg.evalset), cfg.out, cfg.run
    )
    return report, compile_run_records(cfg, dataset, report)


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


def _versions() -> dict[str, str | None]:
    from pipelines import __version__

    out: dict[str, str | None] = {"python": platform.python_version(), "package": __version__}
    try:
        import torch

        out["torch"] = torch.__version__
    except ImportError:
        out["torch"] = None
    return out


def run_benchmark(cfg: BenchmarkConfig) -> tuple[list[StageReport], RunRecords]:
    """Predict and evaluate every evaluation set into one run (Ray must be initialised)."""
    if not cfg.evalsets:
        raise ConfigError("--evalsets needs at least one evaluation set directory")
    reports: list[StageReport] = []
    records: RunRecords | None = None
    for evalset in cfg.evalsets:
        reports.append(run_predict(subset_config(PredictConfig, cfg, evalset=evalset)))
        report, records = run_evaluate(subset_config(EvaluateConfig, cfg, evalset=evalset))
        reports.append(report)
    assert records is not None
    if cfg.report:
        from pipelines.report import ReportConfig, run_report

        run_report(
            ReportConfig(runs=[cfg.out], out=storage.join(cfg.out, "report"), print_tables=False)
        )
    return reports, records
