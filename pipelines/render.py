"""``imesh render``: render objects into a training / Zero123++ / evaluation layout on Ray.

One backend per Ray actor (``Stage.setup``): a persistent Blender worker process, an
nvdiffrast context or the CPU rasterizer renders many objects. Per object the stage loads the
file, computes its normalization (``rendering.backends.prepare_object``), renders the layout's
cameras (``rendering.output_layouts``), checks the views (finite depth, no NaN), validates the
folder (file count, sizes, coverage range) and the runner publishes it atomically to
``<out>/<layout dir>/<uid>/`` with a marker written last. Any failure (unreadable file, zero
faces, NaN vertices, importer error, per-object timeout) is a ``failed`` status row naming the
cause; the other objects go on. Re-running resumes.

Outputs under ``<out>``::

    rendering_random_32views/<uid>/...   (layout instantmesh32)  or
    rendering_zero123plus/<uid>/...      (layout zero123pp)       or
    eval_views/<uid>/...                 (layout eval)
    render-<layout>/status.parquet, results.parquet (min/per-view coverage, timings), config.yaml
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import pyarrow as pa
from tyro.conf import arg

from pipelines import storage
from pipelines.configs import NO_HASH, ConfigError, registry_choices
from pipelines.fingerprint import file_digest, fingerprint, mesh_fingerprint, sha256_hex
from pipelines.runner import RunOptions, StageReport, run_stage
from pipelines.schema import manifest_from_rows, read_manifest, write_parquet
from pipelines.stage import ItemContext, Stage
from rendering.backends import (
    BACKENDS,
    BackendUnavailable,
    RenderSettings,
    backend_entry,
    describe_backends,
    make_backend,
    prepare_object,
    unavailable_reason,
)
from rendering.backends.base import DEFAULT_MAX_FACES
from rendering.mesh_io import check_regular_file
from rendering.normalize import Y_UP_SUFFIXES, Z_UP_SUFFIXES
from rendering.output_layouts import (
    LAYOUT_DIRS,
    LayoutSpec,
    LayoutValidationError,
    layout_spec,
    read_record,
    render_layout,
    validate_object_dir,
)
from rendering.uids import UidCollision, uid_collisions, uid_from_name

MESH_SUFFIXES = Y_UP_SUFFIXES + Z_UP_SUFFIXES
NATIVE_ONLY_SUFFIXES = (".fbx",)
"""Formats our Python loaders cannot read: Blender imports them and reports their bounds."""
REFUSED_SUFFIXES = (".blend",)
"""Scene files that are listed (so each gets a failed status row saying why) but never opened:
a .blend can carry auto-run Python."""
EMPTY_VIEW_COVERAGE = 1e-4
"""A view whose alpha coverage is at most this (0.01 % of the pixels: ~10 px at 320^2) is
empty; an object with an empty view fails whatever ``--min-coverage`` says (an empty render
was published as ``ok`` for skinned, animated and sparse glTF files)."""

if TYPE_CHECKING:
    BackendName = str
else:
    BackendName = registry_choices(BACKENDS)
"""A render backend's registry name (``rendering.backends.BACKENDS``)."""


def backend_help(purpose: str) -> Any:
    """``--help`` of a ``backend`` field: ``purpose``, then every registry entry's description
    (``Annotated[BackendName, backend_help(...)]``; tyro shows it instead of the docstring)."""
    return arg(help=f"{purpose} {describe_backends()}.")


def check_shading(backend: str, shading: str | None) -> None:
    """``--shading lit`` with a backend that renders unlit base colour only (its registry entry
    does not honour ``shading``): a :class:`ConfigError` naming the backends that light.
    Evaluation sets record their shading and ``evaluate`` renders predictions with it, so the
    record must be what the views are."""
    if shading != "lit" or "shading" in backend_entry(backend).options:
        return
    lit = [name for name, entry in BACKENDS.items() if "shading" in entry.options]
    raise ConfigError(
        f"--shading lit: the {backend} backend renders unlit base colour only; lit views need "
        f"--backend {' or '.join(lit)}"
    )


def worker_gpus(backend: str) -> float:
    """GPUs each worker of a job rendering with ``backend`` reserves on a cluster: one when
    its registry entry ``needs_gpu``, else none."""
    return 1.0 if backend_entry(backend).needs_gpu else 0.0


@dataclass
class RenderConfig:
    """Render objects (a manifest or mesh files) into an InstantMesh / Zero123++ / eval layout."""

    out: str
    """Job output root (URL): receives `<layout dir>/<uid>/` and `render-<layout>/` tables."""
    manifest: str | None = None
    """Object manifest (Parquet with uid, source, mesh_uri, sha256). Give this or `--input`."""
    input: str | None = None
    """A mesh file or a directory of mesh files (glb/gltf/obj/fbx/ply/stl); uid = file stem."""
    layout: Literal["instantmesh32", "zero123pp", "eval"] = "instantmesh32"
    """instantmesh32: 32 random training views (rendering_random_32views); zero123pp: condition
    + 6 targets, white background (rendering_zero123plus); eval: input view + 21 orbit views
    (+ benchmark views) (eval_views)."""
    backend: Annotated[BackendName, backend_help("Renderer.")] = "blender"
    """The renderer (choices and descriptions: ``rendering.backends.BACKENDS``)."""
    size: int | None = None
    """Image size in pixels (square); default 512 (instantmesh32) or 320 (zero123pp, eval)."""
    views: int = 32
    """Number of random training views (instantmesh32)."""
    seed: int = 0
    """Camera seed: cameras are a deterministic function of (uid, seed)."""
    samples: int = 16
    """Samples per pixel (blender)."""
    engine: Literal["cycles", "eevee"] = "cycles"
    """Blender engine: cycles (path traced; the dataset default) or eevee (rasterized, runs
    headless via EGL/Mesa; ~30 s shader compilation per worker on CPU)."""
    shading: Literal["lit", "unlit"] = "lit"
    """lit: uniform white environment light (blender); unlit: base colour as is."""
    device: Literal["auto", "cpu", "gpu"] = "auto"
    """Where the backend computes (auto: GPU when usable)."""
    orbit_mode: Literal["cycle", "grid"] = "cycle"
    """eval: 21 orbit views as uniform azimuths with elevations cycling 30/0/-30, or a 7x3 grid."""
    benchmark_views: Literal["auto", "on", "off"] = "auto"
    """eval: also render the Omni3D benchmark views (auto: for omni3d objects or rows with a
    transforms_uri)."""
    min_coverage: float = 0.0
    """Validation: fail an object with a view whose alpha coverage is below this (views with
    (near) zero coverage always fail: EMPTY_VIEW_COVERAGE; the filter, not the renderer,
    applies the 10 % criterion)."""
    timeout_s: float = 600.0
    """Per-object time limit (blender worker killed and respawned on timeout)."""
    max_faces: int = DEFAULT_MAX_FACES
    """Refuse objects declaring more triangles than this, before loading them (0 = no limit)."""
    threads: int = field(default=0, metadata=NO_HASH)
    """CPU threads per backend worker (0 = the worker's CPU reservation, --cpus-per-worker)."""
    max_objects_per_worker: int = field(default=200, metadata=NO_HASH)
    """Recycle the Blender worker process after this many objects."""
    cpus_per_worker: float = field(default=1.0, metadata=NO_HASH)
    """Ray CPUs reserved per render actor."""
    run: RunOptions = field(default_factory=RunOptions, metadata=NO_HASH)
    """Execution settings (workers, shard size, progress)."""
    address: str | None = field(default=None, metadata=NO_HASH)
    """Ray cluster address; default: RAY_ADDRESS if set, else a local embedded Ray."""

    def spec(self) -> LayoutSpec:
        return layout_spec(
            self.layout, self.size, self.seed, views=self.views, orbit_mode=self.orbit_mode
        )

    def settings(self) -> RenderSettings:
        return RenderSettings(
            samples=self.samples,
            engine=self.engine,
            shading=self.shading,
            device=self.device,
            threads=self.threads or max(1, int(self.cpus_per_worker)),
            timeout_s=self.timeout_s,
        )


RESULT_SCHEMA = pa.schema(
    [
        ("n_views", pa.int32()),
        ("min_coverage", pa.float64()),
        ("coverage", pa.list_(pa.float64())),
        ("render_seconds", pa.float64()),
        ("file_to_world", pa.list_(pa.float64())),
    ]
)


def _setup(cfg: RenderConfig) -> Any:
    kwargs: dict[str, Any] = {}
    # Backends running worker processes (blender) take the recycling period.
    if "max_objects_per_worker" in inspect.signature(backend_entry(cfg.backend).load()).parameters:
        kwargs["max_objects_per_worker"] = cfg.max_objects_per_worker
    return make_backend(cfg.backend, cfg.settings(), **kwargs)


def _wants_benchmark(cfg: RenderConfig, row: dict[str, Any]) -> bool:
    if cfg.layout != "eval" or cfg.benchmark_views == "off":
        return False
    if cfg.benchmark_views == "on":
        return True
    return row.get("source") == "omni3d" or bool(row.get("transforms_uri"))


def render_item(row: dict[str, Any], ctx: ItemContext) -> dict[str, Any]:
    cfg: RenderConfig = ctx.config
    assert ctx.scratch_dir is not None
    if row.get("uid_error"):
        raise UidCollision(row["uid_error"])
    if row.get("outside_input"):
        raise ConfigError(f"{row['mesh_uri']}: symlink resolves outside the input folder (refused)")
    path, temporary = storage.local_path(row["mesh_uri"])
    try:
        check_regular_file(path)  # only regular files are read (a FIFO would block)
        if path.suffix.lower() in NATIVE_ONLY_SUFFIXES:
            prepare_native = getattr(ctx.state, "prepare_native", None)
            if prepare_native is None:
                raise ConfigError(
                    f"{path}: {path.suffix} files can only be rendered with --backend blender"
                )
            obj = prepare_native(path)
        else:
            obj, _ = prepare_object(path, max_faces=cfg.max_faces)
        transforms = row.get("transforms_uri") or None
        record = render_layout(
            ctx.state,
            obj,
            ctx.uid,
            cfg.spec(),
            ctx.scratch_dir,
            benchmark=_wants_benchmark(cfg, row),
            transforms_json=transforms,
        )
    finally:
        if temporary:
            path.unlink(missing_ok=True)
    empty = [
        f"{name or 'views'}/{stem}"
        for name, vs in record["view_sets"].items()
        for stem, cov in zip(vs["files"], vs["coverage"], strict=True)
        if not cov > EMPTY_VIEW_COVERAGE
    ]
    if empty:
        shown = ", ".join(empty[:8]) + (f", ... ({len(empty) - 8} more)" if len(empty) > 8 else "")
        raise LayoutValidationError(
            f"{path}: empty render: {len(empty)} of {record['n_views']} views have (near) zero "
            f"alpha coverage (<= {EMPTY_VIEW_COVERAGE:g}): {shown}; the object is not where its "
            "normalization put it (nothing is published)"
        )
    if record["min_coverage"] < cfg.min_coverage:
        raise LayoutValidationError(
            f"min alpha coverage {record['min_coverage']:.4f} < --min-coverage {cfg.min_coverage}"
        )
    coverage = [c for vs in record["view_sets"].values() for c in vs["coverage"]]
    return {
        "n_views": record["n_views"],
        "min_coverage": record["min_coverage"],
        "coverage": coverage,
        "render_seconds": record["timings"]["total_s"],
        "file_to_world": [x for r in record["file_to_world"] for x in r],
    }


def validate_render(scratch: Path, result: dict[str, Any]) -> None:
    del result
    record = read_record(scratch)
    validate_object_dir(scratch, record)


def render_stage(cfg: RenderConfig) -> Stage:
    """The render stage for ``cfg``'s layout and backend (GPUs per worker from the backend's
    registry entry: :func:`worker_gpus`)."""
    return Stage(
        name=f"render-{cfg.layout}",
        process=render_item,
        result_schema=RESULT_SCHEMA,
        item_output=LAYOUT_DIRS[cfg.layout],
        setup=_setup,
        validate=validate_render,
        num_cpus=cfg.cpus_per_worker,
        num_gpus=worker_gpus(cfg.backend),
        input_fingerprint=render_inputs,
    )


def render_inputs(row: dict[str, Any], cfg: RenderConfig) -> str:
    """What a render reads besides its config: the mesh file, the textures/buffers it
    references and the benchmark cameras' ``transforms.json`` (content hashes), so replacing
    any of them re-renders the object on resume (``pipelines.fingerprint``)."""
    del cfg
    try:
        if row.get("uid_error"):
            return fingerprint(uid_error=row["uid_error"])
        if row.get("outside_input"):  # never read: the row fails saying so
            return fingerprint(mesh="outside the input folder (not read)")
        parts: dict[str, Any] = {"mesh": mesh_fingerprint(row.get("mesh_uri"))}
        if row.get("transforms_uri"):
            parts["transforms"] = file_digest(row["transforms_uri"])
        return fingerprint(**parts)
    except Exception as e:  # a fingerprint never raises: `process` reports the cause
        return fingerprint(error=f"{type(e).__name__}: {e}")


def manifest_from_input(input_path: str) -> pa.Table:
    """A manifest for a mesh file or every mesh file in a directory.

    uid = :func:`rendering.uids.uid_from_name` of the file stem (readable, stable, path-safe).
    Files whose uids are equal (up to case: ``a b.glb`` / ``a_b.glb``, ``Chair.glb`` /
    ``chair.glb``, or equal stems in different folders) share one row that fails naming all of
    them (``uid_error``), so no uid silently switches to another file. ``input_files`` holds the
    file(s) behind each uid, relative to the input folder (also written as ``uid_map.parquet``
    beside the stage's status).
    """
    p = Path(input_path)
    if p.is_dir():
        wanted = MESH_SUFFIXES + REFUSED_SUFFIXES
        # Every entry named like a mesh is listed, whatever it is: a FIFO, a device (link) or a
        # directory named *.glb becomes a failed row saying so instead of vanishing silently.
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in wanted)
    elif p.exists():
        files = [p]
    else:
        raise ConfigError(f"--input {input_path}: no such file or directory")
    if not files:
        raise ConfigError(f"--input {input_path}: no mesh files ({', '.join(MESH_SUFFIXES)})")
    gso = [f for f in files if f.name == "model.obj" and f.parent.name == "meshes"]
    if p.is_dir() and gso and (gso[0].parent.parent / "materials" / "textures").is_dir():
        raise ConfigError(
            f"--input {input_path} is laid out like Google Scanned Objects "
            "(<Name>/meshes/model.obj, textures in <Name>/materials/textures/): build its "
            "evaluation views with `imesh evalset --dataset gso --root DIR`, which resolves "
            "that layout's texture paths; `imesh render --input` takes plain mesh files"
        )
    root = p.resolve() if p.is_dir() else p.parent.resolve()
    names = [f.relative_to(p).as_posix() if p.is_dir() else f.name for f in files]
    uids = [uid_from_name(f.stem) for f in files]
    collided = {i: uid for uid, idx in uid_collisions(uids).items() for i in idx}
    groups: dict[str, list[int]] = {}
    for i, uid in collided.items():
        groups.setdefault(uid, []).append(i)
    rows = []
    for i, f in enumerate(files):
        if i in collided:
            group = groups[collided[i]]
            if i != group[0]:
                continue
            listed = ", ".join(repr(names[j]) for j in group)
            rows.append(
                {
                    "uid": collided[i],
                    "source": "synthetic",
                    "mesh_uri": str(f.absolute()),
                    "sha256": None,
                    "outside_input": False,
                    "input_files": [names[j] for j in group],
                    "uid_error": (
                        f"uid {collided[i]!r} would name {len(group)} files: {listed} (equal "
                        "once made path-safe, or up to case); rename them so that each file "
                        "has its own uid"
                    ),
                }
            )
            continue
        target = f.resolve()
        inside = target.is_relative_to(root)
        rows.append(
            {
                "uid": uids[i],
                "source": "synthetic",
                # A symlink leading outside the input folder is listed under its own path, so
                # its object fails with a row saying so instead of reading the target.
                "mesh_uri": str(target if inside else f.absolute()),
                "sha256": sha256_hex(target) if inside else None,
                "outside_input": not inside,
                "input_files": [names[i]],
                "uid_error": None,
            }
        )
    return manifest_from_rows(rows)


UID_MAP_COLUMNS = ("uid", "input_files", "mesh_uri", "uid_error")


def load_render_manifest(cfg: RenderConfig) -> pa.Table:
    if (cfg.manifest is None) == (cfg.input is None):
        raise ConfigError("give exactly one of --manifest or --input")
    if cfg.manifest is not None:
        return read_manifest(cfg.manifest)
    assert cfg.input is not None
    return manifest_from_input(cfg.input)


def check_render_config(cfg: RenderConfig) -> pa.Table:
    """Everything about a render job that can be checked without Ray: layout, backend
    availability, and the manifest (returned)."""
    if cfg.layout not in LAYOUT_DIRS:
        raise ConfigError(f"unknown layout {cfg.layout!r}; choose one of {sorted(LAYOUT_DIRS)}")
    reason = unavailable_reason(cfg.backend)
    if reason is not None:
        raise BackendUnavailable(reason)
    return load_render_manifest(cfg)


def run_render(cfg: RenderConfig, manifest: pa.Table | None = None) -> StageReport:
    """Render every object of the manifest (Ray must be initialised; see ``ray_session``).
    ``manifest``: the table :func:`check_render_config` returned (checked again otherwise)."""
    table = manifest if manifest is not None else check_render_config(cfg)
    stage = render_stage(cfg)
    report = run_stage(stage, cfg, table, cfg.out, cfg.run)
    if set(UID_MAP_COLUMNS) <= set(table.column_names):  # --input: which file is which uid
        write_parquet(
            table.select(list(UID_MAP_COLUMNS)),
            storage.join(cfg.out, stage.name, "uid_map.parquet"),
        )
    return report
