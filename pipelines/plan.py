"""``imesh plan``: wall time, worker-hours and cost of a target, before spending them.

A finished stage records every object's wall seconds in its status table (``seconds``; see
:mod:`pipelines.schema`) and its resolved config beside it (``config.yaml``: backend, layout,
size, CPUs per worker; see :mod:`pipelines.runner`). From these, for a target (``--objects N``,
or ``--gso N --omni3d M`` for evaluation runs, on ``--workers W``):

- **object-seconds**: a two-level bootstrap (``n_boot`` replicates, seeded). Each replicate
  resamples the measured objects with replacement (what we do not know about the distribution
  from a sample of ``m``), then draws the ``N`` target objects from that resample and sums their
  seconds (what ``N`` random objects add up to). Failed and skipped rows are resampled like ok
  rows: their seconds are spent too, at the measured failure rate. Rows without seconds
  (``WorkerLost``) cannot be resampled and are counted in a warning.
- **wall time** = object-seconds / workers + the stage's measured fixed overhead. Each runner
  worker (a Ray actor) processes one object at a time, so the per-worker concurrency is 1; load
  balance is assumed perfect. The fixed overhead is what the latest run spent between writing
  ``config.yaml`` and starting its first object (actor start, backend setup: e.g. Blender's
  start), when the stage records it; Ray's own start is not included.
- **worker-hours** = workers x wall hours (workers are held for the whole wall time);
  **GPU-hours** = worker-hours x GPUs per worker; **cost** = GPU-hours x price when workers have
  GPUs (the price is per GPU-hour), else worker-hours x price.

Stages of one run folder run one after another: their walls add up (replicate by replicate, so
the total's range is that of the sum). Target conditions that differ from the measured ones
(backend, image size, CPUs per worker) are warned about and never rescaled silently;
``--scale-by-pixels`` scales by ``(target size / measured size)^2`` and says so. ``--cluster``
reads a Ray cluster-launcher YAML and says how many nodes of each type the workers need.

Plain Python: ``imesh plan`` never starts Ray.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import tyro
import yaml

from pipelines import storage
from pipelines.configs import ConfigError, registry_choices
from pipelines.schema import ManifestError, read_parquet
from rendering.backends import BACKENDS
from rendering.output_layouts import DEFAULT_SIZES
from rendering.urls import parquet_from_bytes, read_bytes

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    BackendName = str
else:
    BackendName = registry_choices(BACKENDS)

DATASETS = ("gso", "omni3d")
"""Evaluation datasets a stage can belong to (``--gso`` / ``--omni3d`` target counts)."""
MAX_BOOTSTRAP_VALUES = 2048
"""More distinct measured values than this are grouped into this many equal-count groups of
consecutive (sorted) values, each represented by its mean, before bootstrapping: the sample
mean is kept exactly, the work stays O(n_boot x 2048) instead of O(n_boot x measured objects)."""


@dataclass
class PlanConfig:
    """Estimate wall time, worker-hours and cost of a target from a finished stage's measured
    per-object seconds (median and p10-p90, bootstrap over the measured objects). No Ray."""

    from_: Annotated[str, tyro.conf.arg(name="from", metavar="PATH")]
    """A finished stage folder (holds `status.parquet`, e.g. `runs/x/render-instantmesh32`), or a
    run/output folder: every stage folder under it (one level down, else two), in sequence."""
    objects: int | None = None
    """Target object count for every stage (e.g. 800000)."""
    gso: int | None = None
    """Target count for the GSO stages (`predict-gso`, `evaluate-gso`, a GSO evaluation set's
    build); overrides --objects there."""
    omni3d: int | None = None
    """Target count for the OmniObject3D stages; overrides --objects there."""
    workers: int = 1
    """Parallel workers of the target (Ray actors; each processes one object at a time)."""
    gpu_per_worker: float = 0.0
    """GPUs per worker. When > 0, --price-per-hour is per GPU-hour."""
    cpu_per_worker: float | None = None
    """CPUs per worker (default: as measured, the stage's --cpus-per-worker, else 1)."""
    price_per_hour: float | None = None
    """Price per worker-hour (per GPU-hour when --gpu-per-worker > 0); default: no cost."""
    backend: BackendName | None = None
    """Target backend (default: as measured). A different backend is warned about; its speed is
    not accounted for."""
    size: int | None = None
    """Target image size in pixels (default: as measured). A different size is warned about and
    not accounted for, unless --scale-by-pixels."""
    scale_by_pixels: bool = False
    """Scale the measured seconds by (target size / measured size)^2 when --size differs."""
    cluster: str | None = None
    """Ray cluster-launcher YAML (e.g. `cluster.yaml`): nodes of each `available_node_types`
    entry the workers need, and whether its `max_workers` allows them."""
    json: str | None = None
    """Also write the plan as JSON to this path (seconds, hours, the bootstrap quantiles)."""
    n_boot: int = 2000
    """Bootstrap replicates."""
    seed: int = 0
    """Bootstrap seed (stage i uses the seed sequence (seed, i))."""
    min_sample: int = 30
    """Warn when a stage measured fewer objects than this."""


def check_plan_config(cfg: PlanConfig) -> None:
    """Raise :class:`ConfigError` naming the option when the target is not a target."""
    if cfg.objects is None and cfg.gso is None and cfg.omni3d is None:
        raise ConfigError("give the target: --objects N, or --gso N / --omni3d N")
    for name in ("objects", "gso", "omni3d", "workers", "n_boot", "min_sample"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    for name, value in (
        ("gpu-per-worker", cfg.gpu_per_worker),
        ("price-per-hour", cfg.price_per_hour),
    ):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"--{name} must be >= 0, got {value}")
    if cfg.cpu_per_worker is not None and not (
        math.isfinite(cfg.cpu_per_worker) and cfg.cpu_per_worker > 0
    ):
        raise ConfigError(f"--cpu-per-worker must be > 0, got {cfg.cpu_per_worker}")


# ---------------------------------------------------------------------------------------------
# The bootstrap.
# ---------------------------------------------------------------------------------------------


def _grouped(seconds: np.ndarray, max_values: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values and their counts; more than ``max_values`` of them become equal-count
    groups of consecutive sorted values (value = group mean, so the total is unchanged)."""
    values, counts = np.unique(seconds, return_counts=True)
    if values.size <= max_values:
        return values, counts
    groups = np.array_split(np.sort(seconds), max_values)
    return np.array([g.mean() for g in groups]), np.array([g.size for g in groups])


def bootstrap_totals(
    seconds: np.ndarray,
    n_objects: int,
    *,
    n_boot: int = 2000,
    seed: int | tuple[int, ...] = 0,
    max_values: int = MAX_BOOTSTRAP_VALUES,
) -> np.ndarray:
    """``n_boot`` bootstrap replicates of the total seconds of ``n_objects`` objects.

    Each replicate resamples the ``m`` measured ``seconds`` with replacement, then draws
    ``n_objects`` objects from that resample and sums their seconds (both draws as multinomial
    counts over the distinct values, so the cost does not grow with ``n_objects``). Equal
    measured values give ``n_objects * value`` in every replicate.
    """
    x = np.asarray(seconds, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("bootstrap_totals needs a non-empty 1-D array of seconds")
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise ValueError("measured seconds must be finite and >= 0")
    if n_objects < 0 or n_boot < 1:
        raise ValueError(f"need n_objects >= 0 and n_boot >= 1, got {n_objects}, {n_boot}")
    values, counts = _grouped(x, max_values)
    if values.size == 1:
        return np.full(n_boot, n_objects * values[0])
    rng = np.random.default_rng(seed)
    m = int(counts.sum())
    p = counts / m
    totals = np.empty(n_boot)
    step = max(1, min(n_boot, 1_000_000 // values.size))
    for start in range(0, n_boot, step):
        k = min(step, n_boot - start)
        resample = rng.multinomial(m, p, size=k)  # (k, values): one resample of the measured
        drawn = rng.multinomial(n_objects, resample / m)  # (k, values): the target's objects
        totals[start : start + k] = drawn @ values
    return totals


@dataclass(frozen=True)
class Range:
    """p10 / median / p90 of a bootstrap distribution."""

    p10: float
    p50: float
    p90: float

    @classmethod
    def of(cls, samples: np.ndarray) -> Range:
        p10, p50, p90 = np.percentile(samples, [10, 50, 90])
        return cls(float(p10), float(p50), float(p90))

    def scaled(self, factor: float) -> Range:
        return Range(self.p10 * factor, self.p50 * factor, self.p90 * factor)


# ---------------------------------------------------------------------------------------------
# What a finished stage measured.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """What one finished stage measured, and under which conditions (its ``config.yaml``)."""

    stage: str
    """The stage folder, relative to ``--from`` (its own name when ``--from`` is the stage)."""
    path: str
    seconds: np.ndarray
    """Per-object seconds of every row that has one (ok, failed and skipped)."""
    ok: int
    failed: int
    skipped: int
    untimed: int
    """Rows without seconds (a lost worker's objects): not resampled."""
    timed_not_ok: int
    """Timed rows that are failed or skipped: resampled with the ok ones."""
    dataset: str | None
    backend: str | None
    layout: str | None
    size: int | None
    views: float | None
    """Views per object (median of the stage's ``n_views`` result column, for render stages)."""
    cpus_per_worker: float | None
    overhead_s: float | None
    """Fixed start-up seconds of the latest run (config written -> first object started)."""
    config_note: str | None = None
    """Why the conditions are unknown (no or unreadable ``config.yaml``), if they are."""


def find_stages(url: str) -> list[tuple[str, str]]:
    """``(name, folder)`` of the stage at ``url`` or of every stage folder under it (found as
    ``imesh status`` finds them); a :class:`ConfigError` when there is none."""
    from pipelines.cli import _stage_dirs

    url = url.rstrip("/") or url
    if not storage.exists(url):
        raise ConfigError(f"--from {url}: no such folder")
    if storage.exists(storage.join(url, "status.parquet")):
        return [(url.rsplit("/", 1)[-1], url)]
    found = _stage_dirs(url)
    if not found:
        raise ConfigError(
            f"--from {url}: no stage status table (status.parquet) in it or in its sub-folders; "
            "point it at a finished stage (<out>/<stage>) or a run folder"
        )
    return [(name, storage.join(url, name)) for name in found]


def _read_config(sdir: str) -> tuple[dict[str, Any], str | None]:
    url = storage.join(sdir, "config.yaml")
    if not storage.exists(url):
        return {}, f"{url} not found"
    try:
        data = yaml.safe_load(storage.read_text(url))
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as e:
        return {}, f"{url} is unreadable ({type(e).__name__})"
    if not isinstance(data, dict):
        return {}, f"{url} is not a mapping"
    return data, None


def _views(sdir: str) -> float | None:
    url = storage.join(sdir, "results.parquet")
    if not storage.exists(url):
        return None
    try:  # a results table without an n_views column is ArrowInvalid too
        col = parquet_from_bytes(read_bytes(url), columns=["n_views"]).column("n_views")
    except (pa.ArrowInvalid, OSError):
        return None
    values = col.drop_null().to_numpy()
    return float(np.median(values)) if values.size else None


def _created_at(config: dict[str, Any]) -> dt.datetime | None:
    value = (config.get("_provenance") or {}).get("created_at")
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, dt.datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _overhead(status: pa.Table, config: dict[str, Any]) -> float | None:
    """Seconds between the latest run writing ``config.yaml`` and starting its first object.

    Rows finished before that run are earlier runs'; rows whose start (finish - seconds) lies
    more than a second before it carry seconds from an earlier run (a reused published object)
    and say nothing about this start. ``created_at`` has 1 s resolution."""
    created = _created_at(config)
    if created is None or "finished_at" not in status.column_names:
        return None
    starts = []
    for finished, seconds in zip(
        status["finished_at"].to_pylist(), status["seconds"].to_pylist(), strict=True
    ):
        if finished is None or seconds is None:
            continue
        if finished.tzinfo is None:
            finished = finished.replace(tzinfo=dt.UTC)
        start = finished - dt.timedelta(seconds=float(seconds))
        if finished >= created and start >= created - dt.timedelta(seconds=1):
            starts.append(start)
    if not starts:
        return None
    return max(0.0, (min(starts) - created).total_seconds())


def _dataset(name: str, config: dict[str, Any]) -> str | None:
    if config.get("dataset") in DATASETS:
        return str(config["dataset"])
    suffix = name.rstrip("/").rsplit("/", 1)[-1].rsplit("-", 1)[-1]
    return suffix if suffix in DATASETS else None


def measure_stage(name: str, sdir: str) -> Measured:
    """Read a finished stage's status table and config; :class:`ConfigError` when the stage has
    no status table, no ``seconds``/``status`` columns or no ok row."""
    url = storage.join(sdir, "status.parquet")
    if not storage.exists(url):
        raise ConfigError(f"{sdir}: no stage status table (status.parquet)")
    try:
        status = read_parquet(url)
    except ManifestError as e:
        raise ConfigError(str(e)) from e
    missing = [c for c in ("status", "seconds") if c not in status.column_names]
    if missing:
        raise ConfigError(f"{url} is not a stage status table (no {'/'.join(missing)} column)")
    states = status["status"].to_pylist()
    n_ok = states.count("ok")
    if n_ok == 0:
        raise ConfigError(
            f"{url}: no ok rows ({status.num_rows} rows: {_counts_text(states)}); nothing "
            "measured to plan from"
        )
    seconds_col = status["seconds"].cast(pa.float64())
    timed = pc.is_valid(seconds_col)
    seconds = seconds_col.filter(timed).to_numpy(zero_copy_only=False)
    timed_states = status["status"].filter(timed).to_pylist()
    config, note = _read_config(sdir)
    layout = config.get("layout")
    size = config.get("size")
    if size is None and layout in DEFAULT_SIZES:
        size = DEFAULT_SIZES[layout]
    cpus = config.get("cpus_per_worker")
    return Measured(
        stage=name,
        path=sdir,
        seconds=seconds,
        ok=n_ok,
        failed=states.count("failed"),
        skipped=states.count("skipped"),
        untimed=status.num_rows - int(seconds.size),
        timed_not_ok=int(seconds.size) - sum(s == "ok" for s in timed_states),
        dataset=_dataset(name, config),
        backend=str(config["backend"]) if config.get("backend") else None,
        layout=str(layout) if layout else None,
        size=int(size) if isinstance(size, int | float) else None,
        views=_views(sdir),
        cpus_per_worker=float(cpus) if isinstance(cpus, int | float) else None,
        overhead_s=_overhead(status, config),
        config_note=note,
    )


def _counts_text(states: list[str]) -> str:
    counts = {s: states.count(s) for s in sorted(set(states))}
    return ", ".join(f"{n} {s}" for s, n in counts.items()) or "none"


# ---------------------------------------------------------------------------------------------
# Cluster node types.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeFit:
    """How one ``available_node_types`` entry hosts the target's workers."""

    node_type: str
    cpu: float | None
    """Declared CPUs (None: not declared; Ray detects them from the instance)."""
    gpu: float
    workers_per_node: int | None
    nodes: int | None
    """Nodes of this type the workers need (None: unknown, or the type cannot host one)."""
    max_nodes: int
    """Nodes of this type the cluster may start (its max_workers, capped by the cluster's;
    + 1 for the head node type: the head itself)."""
    fits: bool
    note: str


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    return float(value)


def cluster_fits(
    cluster_yaml: str, workers: int, cpu_per_worker: float, gpu_per_worker: float
) -> list[NodeFit]:
    """Per node type of a Ray cluster-launcher YAML: workers per node (by CPU and GPU per worker
    against the type's declared ``resources``), nodes needed and whether ``max_workers`` (the
    type's, capped by the cluster's) allows them."""
    try:
        data = yaml.safe_load(storage.read_text(cluster_yaml))
    except FileNotFoundError as e:
        raise ConfigError(f"--cluster {cluster_yaml}: no such file") from e
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise ConfigError(
            f"--cluster {cluster_yaml}: unreadable ({type(e).__name__}: {first})"
        ) from e
    types = data.get("available_node_types") if isinstance(data, dict) else None
    if not isinstance(types, dict) or not types:
        raise ConfigError(
            f"--cluster {cluster_yaml}: no available_node_types (not a Ray cluster-launcher config)"
        )
    assert isinstance(data, dict)
    cluster_max = int(_number(data.get("max_workers", 2**31 - 1), f"{cluster_yaml}: max_workers"))
    head = data.get("head_node_type")
    fits = []
    for name, spec in types.items():
        where = f"{cluster_yaml}: available_node_types.{name}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected a mapping")
        resources = spec.get("resources") or {}
        if not isinstance(resources, dict):
            raise ConfigError(f"{where}.resources: expected a mapping")
        cpu = _number(resources["CPU"], f"{where}.resources.CPU") if "CPU" in resources else None
        gpu = _number(resources.get("GPU", 0), f"{where}.resources.GPU")
        type_max = int(_number(spec.get("max_workers", cluster_max), f"{where}.max_workers"))
        max_nodes = min(type_max, cluster_max) + (1 if name == head else 0)
        per_node: int | None
        if cpu is None:
            per_node, note = None, "CPU not declared (Ray detects it from the instance)"
        else:
            limits = [math.floor(cpu / cpu_per_worker + 1e-9)]
            if gpu_per_worker > 0:
                limits.append(math.floor(gpu / gpu_per_worker + 1e-9))
            per_node = min(limits)
            note = ""
        nodes = math.ceil(workers / per_node) if per_node else None
        if per_node == 0:
            need = "GPU" if gpu_per_worker > 0 and gpu < gpu_per_worker else "CPU"
            note = f"cannot host a worker (not enough {need})"
        ok = nodes is not None and nodes <= max_nodes
        if nodes is not None and not ok:
            note = f"needs {nodes} nodes; max_workers allows {max_nodes}"
        fits.append(NodeFit(str(name), cpu, gpu, per_node, nodes, max_nodes, ok, note))
    return fits


# ---------------------------------------------------------------------------------------------
# The plan.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StagePlan:
    measured: Measured
    objects: int
    pixel_scale: float
    object_seconds: Range
    """Total object-seconds of the target (bootstrap)."""
    wall_s: Range


@dataclass(frozen=True)
class Plan:
    config: PlanConfig
    cpu_per_worker: float
    stages: list[StagePlan]
    wall_s: Range
    """All stages one after another."""
    biggest: str
    assumptions: list[str]
    warnings: list[str]
    cluster: list[NodeFit]

    def worker_hours(self, wall_s: Range) -> Range:
        return wall_s.scaled(self.config.workers / 3600.0)

    def gpu_hours(self, wall_s: Range) -> Range | None:
        if self.config.gpu_per_worker <= 0:
            return None
        return self.worker_hours(wall_s).scaled(self.config.gpu_per_worker)

    def cost(self, wall_s: Range) -> Range | None:
        price = self.config.price_per_hour
        if price is None:
            return None
        hours = self.gpu_hours(wall_s) or self.worker_hours(wall_s)
        return hours.scaled(price)


def _target_count(cfg: PlanConfig, m: Measured) -> int:
    by_dataset = {"gso": cfg.gso, "omni3d": cfg.omni3d}
    count = by_dataset.get(m.dataset or "") or cfg.objects
    if count is None:
        raise ConfigError(
            f"stage {m.stage} ({m.dataset or 'no evaluation dataset'}) has no target count: "
            "give --objects N" + (f" or --{m.dataset} N" if m.dataset else "")
        )
    return count


def _condition_warnings(cfg: PlanConfig, m: Measured, cpu: float) -> tuple[float, list[str]]:
    """The pixel scale applied to ``m`` and the warnings about target vs measured conditions."""
    warnings = []
    if cfg.backend is not None and m.backend is not None and cfg.backend != m.backend:
        warnings.append(
            f"{m.stage}: measured with backend {m.backend}, target {cfg.backend}: its speed is "
            "NOT accounted for (the measured seconds are used as they are)"
        )
    scale = 1.0
    if cfg.size is not None and m.size is not None and cfg.size != m.size:
        ratio = (cfg.size / m.size) ** 2
        if cfg.scale_by_pixels:
            scale = ratio
            warnings.append(
                f"{m.stage}: measured at {m.size} px, target {cfg.size} px: seconds scaled by "
                f"the pixel count ({cfg.size}/{m.size})^2 = {ratio:.3g} (--scale-by-pixels; an "
                "assumption: loading and setup do not grow with pixels)"
            )
        else:
            warnings.append(
                f"{m.stage}: measured at {m.size} px, target {cfg.size} px: NOT accounted for "
                f"(--scale-by-pixels scales by ({cfg.size}/{m.size})^2 = {ratio:.3g})"
            )
    if m.cpus_per_worker is not None and cfg.cpu_per_worker not in (None, m.cpus_per_worker):
        warnings.append(
            f"{m.stage}: measured with {m.cpus_per_worker:g} CPUs per worker, target "
            f"{cpu:g}: NOT accounted for"
        )
    n = int(m.seconds.size)
    if n < cfg.min_sample:
        warnings.append(
            f"{m.stage}: only {n} measured objects (< {cfg.min_sample}): the range is wide and "
            "slow outliers may be missing from the sample"
        )
    if m.untimed:
        warnings.append(
            f"{m.stage}: {m.untimed} rows without seconds (a lost worker's objects) are left "
            "out of the sample"
        )
    if m.config_note:
        warnings.append(
            f"{m.stage}: measured conditions unknown ({m.config_note}): target backend/size "
            "cannot be checked against them"
        )
    return scale, warnings


def _describe(m: Measured) -> str:
    parts = [
        f"{m.seconds.size} objects timed ({m.ok} ok, {m.failed} failed, {m.skipped} skipped)",
        f"median {np.median(m.seconds):.3g} s, mean {np.mean(m.seconds):.3g} s per object",
    ]
    conditions = [
        f"backend {m.backend}" if m.backend else "",
        f"layout {m.layout}" if m.layout else "",
        f"{m.views:g} views" if m.views is not None else "",
        f"{m.size} px" if m.size is not None else "",
        f"{m.cpus_per_worker:g} CPUs/worker" if m.cpus_per_worker is not None else "",
    ]
    if any(conditions):
        parts.append(", ".join(c for c in conditions if c))
    if m.overhead_s is not None:
        parts.append(f"fixed overhead {m.overhead_s:.1f} s (latest run's start-up, added once)")
    else:
        parts.append("fixed overhead not recorded (none added)")
    if m.timed_not_ok:
        share = m.timed_not_ok / m.seconds.size
        parts.append(
            f"failed/skipped rows resampled with the ok ones ({share:.1%}): their seconds are "
            "spent too; about that share of the target would not be ok, and retries are not "
            "included"
        )
    return f"{m.stage}: " + "; ".join(parts)


def make_plan(cfg: PlanConfig) -> Plan:
    """The plan for ``cfg`` (reads the stages and the cluster file; no Ray)."""
    check_plan_config(cfg)
    found = find_stages(cfg.from_)
    measured = [measure_stage(name, sdir) for name, sdir in found]
    for dataset in DATASETS:
        if getattr(cfg, dataset) is not None and not any(m.dataset == dataset for m in measured):
            names = ", ".join(m.stage for m in measured)
            raise ConfigError(
                f"--{dataset} given but no {dataset} stage under {cfg.from_} ({names})"
            )
    known_cpus = [m.cpus_per_worker for m in measured if m.cpus_per_worker is not None]
    cpu = cfg.cpu_per_worker or (max(known_cpus) if known_cpus else 1.0)
    warnings: list[str] = []
    stages: list[StagePlan] = []
    walls = np.zeros(cfg.n_boot)
    for i, m in enumerate(measured):
        count = _target_count(cfg, m)
        scale, notes = _condition_warnings(cfg, m, cpu)
        warnings += notes
        totals = bootstrap_totals(m.seconds, count, n_boot=cfg.n_boot, seed=(cfg.seed, i)) * scale
        wall = totals / cfg.workers + (m.overhead_s or 0.0)
        walls += wall
        stages.append(StagePlan(m, count, scale, Range.of(totals), Range.of(wall)))
    for option, value, recorded in (
        ("backend", cfg.backend, [m.backend for m in measured]),
        ("size", cfg.size, [m.size for m in measured]),
    ):
        if value is not None and not any(r is not None for r in recorded):
            warnings.append(
                f"--{option} {value}: no measured stage records a {option}; not checked"
            )
    biggest = max(stages, key=lambda s: s.wall_s.p50).measured.stage
    fits = cluster_fits(cfg.cluster, cfg.workers, cpu, cfg.gpu_per_worker) if cfg.cluster else []
    return Plan(
        config=cfg,
        cpu_per_worker=cpu,
        stages=stages,
        wall_s=Range.of(walls),
        biggest=biggest,
        assumptions=_assumptions(cfg, cpu, measured),
        warnings=warnings,
        cluster=fits,
    )


def _assumptions(cfg: PlanConfig, cpu: float, measured: list[Measured]) -> list[str]:
    lines = [
        f"{cfg.workers} workers x {cpu:g} CPUs"
        + (f" x {cfg.gpu_per_worker:g} GPUs" if cfg.gpu_per_worker > 0 else "")
        + "; each worker processes one object at a time (as the runner's actors do) with "
        "perfect load balance: wall = object-seconds / workers + fixed overhead",
        f"object-seconds: {cfg.n_boot} bootstrap replicates (seed {cfg.seed}); each resamples "
        "the measured objects, then draws the target's objects from that resample; p10-p90 "
        "covers the sample's uncertainty, not different hardware, backends or object mixes",
        "per-object seconds are used as measured (the measuring machine's speed and contention "
        "included)",
        "worker-hours = workers x wall hours (workers held for the whole run)",
    ]
    if len(measured) > 1:
        lines.append("stages run one after another: their walls add up")
    if cfg.price_per_hour is not None:
        if cfg.gpu_per_worker > 0:
            lines.append(
                f"cost = GPU-hours x {cfg.price_per_hour:g} (--price-per-hour read as per "
                f"GPU-hour since --gpu-per-worker {cfg.gpu_per_worker:g} > 0; GPU-hours = "
                "worker-hours x GPUs per worker)"
            )
        else:
            lines.append(f"cost = worker-hours x {cfg.price_per_hour:g} (price per worker-hour)")
    if any(m.seconds.size > MAX_BOOTSTRAP_VALUES for m in measured):
        lines.append(
            f"stages with more than {MAX_BOOTSTRAP_VALUES} distinct measured values are grouped "
            f"into {MAX_BOOTSTRAP_VALUES} equal-count groups (group means) for the bootstrap"
        )
    lines += [_describe(m) for m in measured]
    return lines


# ---------------------------------------------------------------------------------------------
# Output.
# ---------------------------------------------------------------------------------------------


DURATION_UNITS = ((120.0, 1.0, "s"), (2 * 3600.0, 60.0, "min"), (48 * 3600.0, 3600.0, "h"))


def format_duration(seconds: float, like: float | None = None) -> str:
    """``42 s``, ``12.5 min``, ``6.94 h``, ``3.2 d``: the unit that suits ``like`` (default:
    ``seconds`` itself), so that the ends of a range share their median's unit."""
    ref = seconds if like is None else like
    for below, divisor, unit in DURATION_UNITS:
        if ref < below:
            return f"{seconds / divisor:.3g} {unit}"
    return f"{seconds / 86400:.3g} d"


def _wall_range(r: Range) -> str:
    return f"{format_duration(r.p10, r.p50)} - {format_duration(r.p90, r.p50)}"


def plan_table(plan: Plan) -> Table:
    from rich.table import Table

    title = (
        f"plan: {plan.config.workers} workers, from {plan.config.from_} "
        f"(median, p10 - p90 over {plan.config.n_boot} bootstrap replicates)"
    )
    table = Table(title=title)
    gpu = plan.config.gpu_per_worker > 0
    cost = plan.config.price_per_hour is not None
    columns = ["stage", "objects", "measured", "s/object", "wall", "wall p10 - p90", "worker-h"]
    columns += ["GPU-h"] if gpu else []
    columns += ["cost", "cost p10 - p90"] if cost else []
    for col in columns:
        table.add_column(col, justify="left" if col == "stage" else "right")

    def hours(x: float) -> str:
        return f"{x:,.1f}"

    def money(x: float) -> str:
        return f"{x:,.2f}"

    def row(name: str, objects: str, measured: str, per: str, wall: Range) -> list[str]:
        cells = [name, objects, measured, per, format_duration(wall.p50)]
        cells += [_wall_range(wall), hours(plan.worker_hours(wall).p50)]
        gpu_hours = plan.gpu_hours(wall)
        cells += [hours(gpu_hours.p50)] if gpu_hours is not None else []
        c = plan.cost(wall)
        cells += [money(c.p50), f"{money(c.p10)} - {money(c.p90)}"] if c is not None else []
        return cells

    for s in plan.stages:
        m = s.measured
        per = f"{np.median(m.seconds) * s.pixel_scale:.3g}"
        timed = f"{m.seconds.size}" + (f" ({m.timed_not_ok} not ok)" if m.timed_not_ok else "")
        table.add_row(*row(m.stage, f"{s.objects:,}", timed, per, s.wall_s))
    if len(plan.stages) > 1:
        table.add_row(*row("total", "", "", "", plan.wall_s), style="bold")
    return table


def cluster_table(plan: Plan) -> Table:
    from rich.table import Table

    table = Table(title=f"cluster: {plan.config.cluster}")
    for col in ("node type", "CPU", "GPU", "workers/node", "nodes needed", "max nodes", "fits"):
        table.add_column(col, justify="left" if col == "node type" else "right")
    for f in plan.cluster:
        table.add_row(
            f.node_type,
            "?" if f.cpu is None else f"{f.cpu:g}",
            f"{f.gpu:g}",
            "?" if f.workers_per_node is None else str(f.workers_per_node),
            "-" if f.nodes is None else str(f.nodes),
            str(f.max_nodes),
            "yes" if f.fits else f"no: {f.note}" if f.note else "no",
        )
    return table


def cluster_summary(plan: Plan) -> str:
    """One line: the node type (fewest nodes) that hosts the target's workers, or none."""
    fitting = sorted((f for f in plan.cluster if f.fits), key=lambda f: f.nodes or 0)
    c = plan.config
    need = f"{c.workers} workers x ({plan.cpu_per_worker:g} CPU" + (
        f", {c.gpu_per_worker:g} GPU)" if c.gpu_per_worker > 0 else ")"
    )
    if not fitting:
        return f"{need}: no node type of {c.cluster} can host them within its max_workers"
    best = fitting[0]
    return f"{need}: {best.nodes} x {best.node_type} ({best.workers_per_node} workers per node)"


def print_plan(plan: Plan, console: Console) -> None:
    console.print(plan_table(plan))
    total = plan.wall_s
    share = max(s.wall_s.p50 for s in plan.stages) / total.p50 if total.p50 > 0 else 1.0
    console.print(
        f"wall {format_duration(total.p50)} (p10 - p90 {_wall_range(total)}); "
        f"biggest stage: {plan.biggest} ({share:.0%} of the median wall)"
    )
    if plan.cluster:
        console.print(cluster_table(plan))
        console.print(cluster_summary(plan))
    console.print("assumptions:")
    for line in plan.assumptions:
        console.print(f"  - {line}", markup=False, highlight=False)
    for line in plan.warnings:
        console.print(f"warning: {line}", style="yellow", markup=False, highlight=False)


def plan_json(plan: Plan) -> dict[str, Any]:
    """The plan as plain data (seconds, hours; every range as p10 / p50 / p90)."""

    def money(wall: Range) -> dict[str, Any]:
        gpu_hours = plan.gpu_hours(wall)
        cost = plan.cost(wall)
        return {
            "wall_s": asdict(wall),
            "worker_hours": asdict(plan.worker_hours(wall)),
            "gpu_hours": asdict(gpu_hours) if gpu_hours is not None else None,
            "cost": asdict(cost) if cost is not None else None,
        }

    c = plan.config
    stages = []
    for s in plan.stages:
        m = s.measured
        stages.append(
            {
                "stage": m.stage,
                "path": m.path,
                "dataset": m.dataset,
                "objects": s.objects,
                "measured": {
                    "timed": int(m.seconds.size),
                    "ok": m.ok,
                    "failed": m.failed,
                    "skipped": m.skipped,
                    "untimed": m.untimed,
                    "seconds_median": float(np.median(m.seconds)),
                    "seconds_mean": float(np.mean(m.seconds)),
                    "backend": m.backend,
                    "layout": m.layout,
                    "size": m.size,
                    "views": m.views,
                    "cpus_per_worker": m.cpus_per_worker,
                    "overhead_s": m.overhead_s,
                },
                "pixel_scale": s.pixel_scale,
                "object_seconds": asdict(s.object_seconds),
                **money(s.wall_s),
            }
        )
    return {
        "from": c.from_,
        "target": {
            "objects": c.objects,
            "gso": c.gso,
            "omni3d": c.omni3d,
            "workers": c.workers,
            "cpu_per_worker": plan.cpu_per_worker,
            "gpu_per_worker": c.gpu_per_worker,
            "price_per_hour": c.price_per_hour,
            "backend": c.backend,
            "size": c.size,
            "scale_by_pixels": c.scale_by_pixels,
        },
        "n_boot": c.n_boot,
        "seed": c.seed,
        "stages": stages,
        "total": money(plan.wall_s),
        "biggest_stage": plan.biggest,
        "assumptions": plan.assumptions,
        "warnings": plan.warnings,
        "cluster": (
            {
                "file": c.cluster,
                "node_types": [asdict(f) for f in plan.cluster],
                "summary": cluster_summary(plan),
            }
            if c.cluster
            else None
        ),
    }


def run_plan(cfg: PlanConfig) -> int:
    """``imesh plan``: print the plan (and write ``--json``); exit code 0."""
    from pipelines.summary import make_console

    plan = make_plan(cfg)
    print_plan(plan, make_console())
    if cfg.json:
        storage.atomic_write_text(cfg.json, json.dumps(plan_json(plan), indent=1) + "\n")
    return 0
