"""``imesh evalset``: build a GSO or OmniObject3D evaluation set on Ray.

Selection (``evaluation.evalsets``): GSO ``--n`` (300) objects drawn with ``--seed``; Omni3D the
first ``--per-category`` (5) objects of each category (``--categories`` or the documented default
rule); or exactly the objects of a saved ``--list`` file. Then, per object (stage
``evalset-build``, resumable, one status row each): load the GT mesh with its texture
(``evaluation.datasets``: GSO texture quirk, Omni3D Y-up scans), normalize it into [-1, 1]^3
(Z up), write it as ``gt_mesh.glb`` and render the ``eval`` layout from it
(``rendering.output_layouts``): the input (condition) view, the six Zero123++ views, the 21 orbit
views and, for Omni3D, the 16 benchmark views (the dataset's ``transforms.json`` cameras mapped
into the normalized frame, else seeded upper-hemisphere views), all with cameras.

Written under ``<out>/<dataset>/``::

    evalset.json            dataset, spec, counts, notes, render settings
    selection.json          the selection list (reuse with --list)
    manifest.parquet        uid, source, mesh_uri, sha256, name, category, texture_uri, ...
    objects/<uid>/          gt_mesh.glb, input.png, zero123pp/, orbit/, [benchmark/], render.json
    evalset-build/          status.parquet, results.parquet (resume state)

A GT mesh without a usable texture fails its object (status row ``UntexturedGroundTruth``):
image metrics against an untextured GT would be meaningless; the report counts it as failed.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pyarrow as pa

from evaluation.datasets import (
    DatasetError,
    GsoObject,
    Omni3dObject,
    load_gso_mesh,
    load_omni3d_mesh,
    omni3d_scan_to_render,
)
from evaluation.evalsets import (
    EvalSetSpec,
    apply_selection_list,
    build_evalset,
    evalset_manifest,
    read_selection_list,
    scan,
    write_selection_list,
)
from pipelines import storage
from pipelines.configs import NO_HASH, ConfigError, write_resolved_config
from pipelines.fingerprint import file_digest, fingerprint, mesh_fingerprint
from pipelines.render import BackendName, backend_help, check_shading, worker_gpus
from pipelines.runner import RunOptions, StageReport, run_stage
from pipelines.schema import write_parquet
from pipelines.stage import ItemContext, Stage
from rendering.backends import RenderSettings, make_backend, prepare_object
from rendering.mesh_io import world_mesh_glb_bytes
from rendering.normalize import normalize_mesh
from rendering.output_layouts import layout_spec, read_record, render_layout, validate_object_dir


class UntexturedGroundTruth(ValueError):
    """A GT mesh whose texture is missing or does not decode."""


@dataclass
class EvalsetConfig:
    """Build a GSO / OmniObject3D evaluation set: selection, normalized GT meshes, GT views."""

    dataset: Literal["gso", "omni3d"]
    """Which dataset layout --root holds."""
    root: str
    """Dataset root: GSO folder of <Name>/ folders, or the OmniObject3D root (holding raw_scans/)."""
    out: str
    """Evaluation-sets root (local): the set is written to <out>/<dataset>/."""
    n: int = 300
    """GSO: objects drawn at random (paper: 300)."""
    seed: int = 0
    """GSO sampling seed; also the seed of the seeded cameras."""
    # builtins.list: the field `list` below would shadow the type when annotations are resolved.
    categories: builtins.list[str] | None = None
    """Omni3D categories (default: the 28 largest categories, ties by name; see docs)."""
    per_category: int = 5
    """Omni3D: first N objects (lowest indices) per category (paper: 5)."""
    list: str | None = None
    """Reuse exactly the objects of a saved selection.json instead of selecting."""
    backend: Annotated[
        BackendName,
        backend_help(
            "Renderer of the GT views (`evaluate` renders the predictions with the same one "
            "and the same shading, size and samples unless told otherwise)."
        ),
    ] = "cpu"
    """Renderer of the GT views (choices: ``rendering.backends.BACKENDS``)."""
    size: int = 320
    """View size in pixels (paper: 320)."""
    shading: Literal["lit", "unlit"] = "unlit"
    """unlit: the GT's base colour (what a vertex-coloured prediction can match); lit: Blender's
    white environment light."""
    samples: int = 16
    """Cycles samples (blender backend)."""
    orbit_mode: Literal["cycle", "grid"] = "cycle"
    """21 orbit views: uniform azimuths with elevations cycling 30/0/-30, or a 7x3 grid."""
    omni3d_up: Literal["y", "z"] = "y"
    """Up axis of the Omni3D scan files (the release stores them Y up)."""
    run: RunOptions = field(default_factory=RunOptions, metadata=NO_HASH)
    """Execution settings (workers, shard size, progress)."""
    address: str | None = field(default=None, metadata=NO_HASH)
    """Ray cluster address; default: RAY_ADDRESS if set, else a local embedded Ray."""

    def spec(self) -> EvalSetSpec:
        return EvalSetSpec(
            dataset=self.dataset,
            root=self.root,
            seed=self.seed,
            n=self.n,
            categories=self.categories,
            per_category=self.per_category,
        )

    @property
    def set_dir(self) -> str:
        return storage.join(self.out, self.dataset)


def _object_from_row(row: dict[str, Any]) -> GsoObject | Omni3dObject:
    mesh = Path(row["mesh_uri"])
    texture = Path(row["texture_uri"]) if row.get("texture_uri") else None
    if row["source"] == "gso":
        return GsoObject(
            uid=row["uid"],
            name=row["name"],
            folder=mesh.parent.parent,
            obj_path=mesh,
            texture_path=texture,
            category=row.get("category"),
        )
    transforms = Path(row["transforms_uri"]) if row.get("transforms_uri") else None
    return Omni3dObject(
        uid=row["uid"],
        category=row.get("category") or "",
        object_id=row["uid"],
        index=None,
        folder=mesh.parent.parent,
        obj_path=mesh,
        texture_path=texture,
        transforms_path=transforms,
    )


def _setup(cfg: EvalsetConfig) -> Any:
    settings = RenderSettings(samples=cfg.samples, shading=cfg.shading, threads=1)
    return make_backend(cfg.backend, settings)


def build_item(row: dict[str, Any], ctx: ItemContext) -> dict[str, Any]:
    cfg: EvalsetConfig = ctx.config
    assert ctx.scratch_dir is not None
    if row.get("uid_error"):
        raise DatasetError(row["uid_error"])
    obj = _object_from_row(row)
    if isinstance(obj, GsoObject):
        mesh = load_gso_mesh(obj)
    else:
        mesh = load_omni3d_mesh(obj, up_axis=cfg.omni3d_up)
    if not mesh.metadata.get("has_texture", False):
        notes = "; ".join(mesh.metadata.get("notes", [])) or "no texture"
        raise UntexturedGroundTruth(f"{ctx.uid}: GT mesh has no usable texture ({notes})")
    normalized, to_world = normalize_mesh(mesh, source_up="z")
    gt_path = ctx.scratch_dir / "gt_mesh.glb"
    gt_path.write_bytes(world_mesh_glb_bytes(normalized))
    render_obj, _ = prepare_object(gt_path)
    benchmark = row["source"] == "omni3d"
    transforms, cam_to_world = None, None
    if benchmark and isinstance(obj, Omni3dObject) and obj.transforms_path is not None:
        # Cameras live in the render frame = scale x (our Z-up scan frame); ours = N @ (1/scale).
        scan_to_render = omni3d_scan_to_render(obj, up_axis="z")
        cam_to_world = to_world @ np.linalg.inv(scan_to_render)
        transforms = str(obj.transforms_path)
    spec = layout_spec("eval", cfg.size, cfg.seed, orbit_mode=cfg.orbit_mode)
    record = render_layout(
        ctx.state,
        render_obj,
        ctx.uid,
        spec,
        ctx.scratch_dir,
        benchmark=benchmark,
        transforms_json=transforms,
        transforms_to_world=cam_to_world,
    )
    return {
        "n_views": record["n_views"],
        "min_coverage": record["min_coverage"],
        "normalization": [float(x) for x in to_world.reshape(-1)],
        "benchmark_source": None
        if not benchmark
        else ("transforms.json" if transforms else "seeded"),
    }


def validate_build(scratch: Path, result: dict[str, Any]) -> None:
    del result
    if not (scratch / "gt_mesh.glb").is_file():
        raise ValueError("gt_mesh.glb missing")
    validate_object_dir(scratch, read_record(scratch))


RESULT_SCHEMA = pa.schema(
    [
        ("n_views", pa.int32()),
        ("min_coverage", pa.float64()),
        ("normalization", pa.list_(pa.float64())),
        ("benchmark_source", pa.string()),
    ]
)


def gt_inputs(row: dict[str, Any], cfg: EvalsetConfig) -> str:
    """What a GT object's build reads: its OBJ with the MTL/textures beside it, the texture the
    dataset layout resolves (GSO ``materials/textures/``), the benchmark cameras'
    ``transforms.json`` (content hashes), so a replaced GT file rebuilds the object on resume
    (and the evaluations scored against it follow its new marker)."""
    del cfg
    try:
        return fingerprint(
            mesh=mesh_fingerprint(row.get("mesh_uri")),
            texture=file_digest(row.get("texture_uri")),
            transforms=file_digest(row.get("transforms_uri")),
            uid_error=row.get("uid_error"),
        )
    except Exception as e:  # a fingerprint never raises: `process` reports the cause
        return fingerprint(error=f"{type(e).__name__}: {e}")


BUILD_STAGE = Stage(
    name="evalset-build",
    process=build_item,
    result_schema=RESULT_SCHEMA,
    item_output="objects",
    setup=_setup,
    validate=validate_build,
    input_fingerprint=gt_inputs,
)


def build_stage(cfg: EvalsetConfig) -> Stage:
    """:data:`BUILD_STAGE` with the GPUs per worker of ``cfg.backend``'s registry entry
    (``pipelines.render.worker_gpus``), as ``imesh render`` reserves them."""
    return dataclasses.replace(BUILD_STAGE, num_gpus=worker_gpus(cfg.backend))


def select_objects(cfg: EvalsetConfig) -> tuple[Any, EvalSetSpec]:
    spec = cfg.spec()
    if cfg.list:
        saved = read_selection_list(cfg.list)
        if saved.dataset != cfg.dataset:
            raise ConfigError(f"--list {cfg.list} is a {saved.dataset} list, not {cfg.dataset}")
        return apply_selection_list(scan(spec), saved), saved.spec
    return build_evalset(spec), spec


def check_evalset_config(cfg: EvalsetConfig) -> tuple[Any, EvalSetSpec]:
    """Everything about an evalset job that can be checked without Ray and without writing
    under ``--out``: the output location, the dataset root and ``--list`` (read and scanned:
    the selection is returned), and ``--shading`` against what the backend can render."""
    if not storage.is_local(cfg.out):
        raise ConfigError(f"--out {cfg.out}: evaluation sets are written to a local/mounted path")
    check_shading(cfg.backend, cfg.shading)  # evalset.json must record what the views are
    try:
        return select_objects(cfg)
    except DatasetError as e:
        raise ConfigError(str(e)) from e


def run_evalset(
    cfg: EvalsetConfig, selection: tuple[Any, EvalSetSpec] | None = None
) -> StageReport:
    """Select, then build every object (Ray must be initialised). ``selection``: what
    :func:`check_evalset_config` returned (checked again otherwise)."""
    selected, spec = selection if selection is not None else check_evalset_config(cfg)
    set_dir = cfg.set_dir
    storage.makedirs(set_dir)
    write_resolved_config(cfg, storage.join(set_dir, "evalset.config.yaml"))
    write_selection_list(Path(set_dir) / "selection.json", selected, spec)
    manifest = evalset_manifest(selected, cfg.dataset)
    write_parquet(manifest, storage.join(set_dir, "manifest.parquet"))
    info = {
        "dataset": cfg.dataset,
        "spec": spec.to_dict(),
        "objects": manifest.num_rows,
        "notes": list(getattr(selected, "notes", [])),
        "backend": cfg.backend,
        "shading": cfg.shading,
        "size": cfg.size,
        "samples": cfg.samples,
    }
    storage.atomic_write_text(storage.join(set_dir, "evalset.json"), json.dumps(info, indent=1))
    return run_stage(build_stage(cfg), cfg, manifest, set_dir, cfg.run)
