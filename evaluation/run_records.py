"""Run records: the on-disk contract between the prediction/evaluation pipeline and the reports.

A *run* is one evaluation of one predictor (optionally one variant of it) on one or more
evaluation sets. Its directory (any fsspec URL: ``/local/dir``, ``s3://bucket/prefix``,
``memory://x``) holds::

    <run>/run.json                         run metadata (RUN_JSON fields below)
    <run>/metrics/image_metrics.parquet    one row per (run_id, predictor, dataset, uid, view_set, view)
    <run>/metrics/geometry_metrics.parquet one row per (run_id, predictor, dataset, uid)
    <run>/metrics/objects.parquet          one row per (run_id, predictor, dataset, uid)

These per-view / per-object rows are the only stored copy of the numbers; summary tables
(:mod:`evaluation.tables`), the HTML report (:mod:`evaluation.html_report`) and the nightly
comparison (:mod:`evaluation.compare`) are all derived from them.

``run.json`` (:class:`RunInfo`)
    ``run_id`` (str, required, non-empty; every Parquet row carries the same value),
    ``predictor`` (str, required: e.g. ``"instantmesh"``, ``"triposr"``), ``variant``
    (str or null: e.g. ``"mesh-large"``), ``datasets`` (list of str, e.g. ``["gso", "omni3d"]``),
    ``created_at`` (ISO-8601 str, UTC), ``config`` (dict: the resolved job config; runs written by ``imesh evaluate`` keep
    ``{"predict": {dataset: ...}, "evaluate": {dataset: ...}}``),
    ``versions`` (dict str -> str or null: ``python``, ``torch``, ``package``, ...),
    ``git_commit`` (str or null), ``lpips_backbone`` (str or null: ``"vgg"``, ``"alex"``, ...,
    ``"alex-random"`` for wiring tests), ``lpips_available`` (bool). Unknown keys are kept in
    :attr:`RunInfo.extra` and written back unchanged.

``metrics/image_metrics.parquet`` (:data:`IMAGE_METRICS_SCHEMA`)
    ``run_id``, ``predictor``, ``dataset`` (``"gso"`` | ``"omni3d"`` | any other name), ``uid``,
    ``view_set`` (``"orbit"`` | ``"benchmark"``), ``view`` (int32: index of the view in its view
    set, starting at 0), then one float64 column per **per-view** entry of the metric registry
    (:data:`evaluation.metric_registry.METRICS`, in its order): ``psnr`` (required; ``inf`` for
    identical images is legal), ``ssim`` (required), ``lpips`` (**null when LPIPS is
    unavailable**; never a made-up value), then ``pred_uri`` / ``gt_uri`` (str or null: URLs of
    the predicted render and the ground-truth view as image files, PNG preferred; used for
    thumbnails in the HTML report).

``metrics/geometry_metrics.parquet`` (:data:`GEOMETRY_METRICS_SCHEMA`)
    ``run_id``, ``predictor``, ``dataset``, ``uid``, one float64 column per **per-object**
    registry entry: ``chamfer``, ``fscore`` (required), ``chamfer_aligned``, ``fscore_aligned``
    (null unless evaluated with ``--align search``; a file without these optional columns
    reads as all null), then ``precision``, ``recall`` (float64, required) and
    ``fscore_threshold`` (float64, required; 0.2 in the paper protocol). Definitions:
    :mod:`evaluation.geometry`. The schemas are built by :func:`image_metrics_schema` /
    :func:`geometry_metrics_schema` from the registry, so a new registry entry is a new column.

``metrics/objects.parquet`` (:data:`OBJECTS_SCHEMA`)
    ``run_id``, ``predictor``, ``dataset``, ``uid``, ``status`` (``"ok"`` | ``"failed"``),
    ``error_type`` and ``error`` (str or null; set for failed objects). **Every object the run
    attempted has exactly one row here**, including those that failed before any metric was
    computed: this table is the denominator of every "ok/total" count in the reports.

Rules checked by :func:`validate_records` (on write and on read):

* required columns present (extra columns are allowed and preserved after the required ones),
  castable to the schema types, no nulls in non-nullable columns; a metric column a file
  lacks altogether reads as all null (nullable): the run was written before that registry
  entry existed (or without an optional one), so adding a metric leaves every stored run, a
  nightly baseline included, readable, with that metric not computed;
* no duplicated keys (the key columns listed above);
* ``view_set`` in :data:`VIEW_SETS`, ``status`` in :data:`OBJECT_STATUSES`, ``view >= 0``;
* every row's ``run_id`` equals ``run.json``'s ``run_id``;
* every (predictor, dataset, uid) that has metric rows has a row in ``objects.parquet``, and
  **failed objects have no metric rows** (write a failed object's partial results nowhere, or
  mark it ok: the reports average only ok objects and count the failed ones separately);
* when ``lpips_available`` is false, the ``lpips`` column is entirely null.

An ok object may lack geometry rows (e.g. an image-only run) or rows for a view set; the
reports then show it as *incomplete* for that table instead of silently dropping it.

Writing: :func:`write_run_records` validates, then writes each Parquet file and finally
``run.json`` atomically (temp file + rename; a single PUT on object stores), so a reader that
finds ``run.json`` finds complete tables. Reading: :func:`read_run` raises
:class:`RunRecordError` naming the missing or malformed file.

Building records in a pipeline (rows as dicts, e.g. collected from Ray tasks)::

    info = RunInfo.new(run_id="2024-06-01-nightly", predictor="instantmesh",
                       variant="mesh-large", datasets=["gso"], config=to_dict(cfg),
                       git_commit=git_commit(), lpips_backbone="vgg", lpips_available=True)
    records = RunRecords.from_rows(info, image_rows, geometry_rows, object_rows)
    write_run_records(run_uri, records)

This module is plain Python (pyarrow + fsspec); it never imports Ray or ``pipelines``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from evaluation.metric_registry import METRICS, Metric, metric_fields
from rendering.provenance import versions as software_versions
from rendering.urls import atomic_write_bytes as write_bytes_atomic
from rendering.urls import exists as _exists
from rendering.urls import join as join_url
from rendering.urls import parquet_from_bytes, read_bytes

__all__ = [
    "GEOMETRY_KEY",
    "GEOMETRY_METRICS_SCHEMA",
    "IMAGE_KEY",
    "IMAGE_METRICS_SCHEMA",
    "OBJECTS_KEY",
    "OBJECTS_SCHEMA",
    "OBJECT_STATUSES",
    "RUN_FILES",
    "VIEW_SETS",
    "EvaluationInputError",
    "RunInfo",
    "RunRecordError",
    "RunRecords",
    "geometry_metrics_schema",
    "geometry_metrics_table",
    "image_metrics_schema",
    "image_metrics_table",
    "join_url",
    "merge_run_records",
    "object_outcome",
    "objects_table",
    "read_bytes",
    "read_run",
    "validate_records",
    "write_bytes_atomic",
    "write_run_records",
]

VIEW_SETS: tuple[str, ...] = ("orbit", "benchmark")
"""Allowed ``view_set`` values: the 21 orbit views, and OmniObject3D's 16 benchmark views."""
OBJECT_STATUSES: tuple[str, ...] = ("ok", "failed")

_ID_FIELDS = [
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("predictor", pa.string(), nullable=False),
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("uid", pa.string(), nullable=False),
]


def image_metrics_schema(registry: Mapping[str, Metric] | None = None) -> pa.Schema:
    """``image_metrics.parquet``: the ids, ``view_set``, ``view``, one float64 column per
    per-view metric of the registry (in its order; nullable unless the entry is ``required``),
    then ``pred_uri`` and ``gt_uri``."""
    return pa.schema(
        [
            *_ID_FIELDS,
            pa.field("view_set", pa.string(), nullable=False),
            pa.field("view", pa.int32(), nullable=False),
            *metric_fields("view", registry),
            pa.field("pred_uri", pa.string(), nullable=True),
            pa.field("gt_uri", pa.string(), nullable=True),
        ]
    )


def geometry_metrics_schema(registry: Mapping[str, Metric] | None = None) -> pa.Schema:
    """``geometry_metrics.parquet``: the ids, one float64 column per per-object metric of the
    registry (in its order), then ``precision``, ``recall`` and ``fscore_threshold``."""
    return pa.schema(
        [
            *_ID_FIELDS,
            *metric_fields("object", registry),
            pa.field("precision", pa.float64(), nullable=False),
            pa.field("recall", pa.float64(), nullable=False),
            pa.field("fscore_threshold", pa.float64(), nullable=False),
        ]
    )


IMAGE_METRICS_SCHEMA = image_metrics_schema()
"""The image-metrics schema of the packaged registry (:func:`image_metrics_schema`)."""
GEOMETRY_METRICS_SCHEMA = geometry_metrics_schema()
"""The geometry-metrics schema of the packaged registry (:func:`geometry_metrics_schema`)."""
OBJECTS_SCHEMA = pa.schema(
    [
        *_ID_FIELDS,
        pa.field("status", pa.string(), nullable=False),
        pa.field("error_type", pa.string(), nullable=True),
        pa.field("error", pa.string(), nullable=True),
    ]
)

IMAGE_KEY: tuple[str, ...] = ("run_id", "predictor", "dataset", "uid", "view_set", "view")
GEOMETRY_KEY: tuple[str, ...] = ("run_id", "predictor", "dataset", "uid")
OBJECTS_KEY: tuple[str, ...] = ("run_id", "predictor", "dataset", "uid")

RUN_JSON = "run.json"
RUN_FILES: dict[str, str] = {
    "image_metrics": "metrics/image_metrics.parquet",
    "geometry_metrics": "metrics/geometry_metrics.parquet",
    "objects": "metrics/objects.parquet",
}
"""Table name -> path of its Parquet file inside a run directory."""


def _schemas() -> dict[str, tuple[pa.Schema, tuple[str, ...]]]:
    """Table name -> (schema, key columns), read from the registry at call time."""
    return {
        "image_metrics": (image_metrics_schema(), IMAGE_KEY),
        "geometry_metrics": (geometry_metrics_schema(), GEOMETRY_KEY),
        "objects": (OBJECTS_SCHEMA, OBJECTS_KEY),
    }


class EvaluationInputError(ValueError):
    """Bad evaluation input (run records, reference tables, thresholds): a usage error."""


class RunRecordError(EvaluationInputError):
    """A run directory that is missing, incomplete, or violates the run-records contract."""


# --------------------------------------------------------------------------- run.json


@dataclass
class RunInfo:
    """The content of ``run.json`` (see the module docstring for each field)."""

    run_id: str
    predictor: str
    variant: str | None = None
    datasets: list[str] = field(default_factory=list)
    created_at: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str | None] = field(default_factory=dict)
    git_commit: str | None = None
    lpips_backbone: str | None = None
    lpips_available: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    """Unknown ``run.json`` keys, preserved on a read/write round trip."""

    @classmethod
    def new(
        cls,
        run_id: str,
        predictor: str,
        *,
        variant: str | None = None,
        datasets: Sequence[str] = (),
        config: Mapping[str, Any] | None = None,
        git_commit: str | None = None,
        lpips_backbone: str | None = None,
        lpips_available: bool = False,
        versions: Mapping[str, str | None] | None = None,
    ) -> RunInfo:
        """A new run's metadata: ``created_at`` = now (UTC); ``versions`` pre-filled with
        ``python``, ``torch`` and ``package`` (:func:`rendering.provenance.versions`: read from
        installed distribution metadata, so nothing heavy is imported), updated with
        ``versions``."""
        vers = software_versions()
        vers.update(versions or {})
        return cls(
            run_id=run_id,
            predictor=predictor,
            variant=variant,
            datasets=list(datasets),
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            config=dict(config or {}),
            versions=vers,
            git_commit=git_commit,
            lpips_backbone=lpips_backbone,
            lpips_available=bool(lpips_available),
        )

    def to_json(self) -> str:
        data = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"
        }
        data.update(self.extra)
        return json.dumps(data, indent=2, sort_keys=False, default=str)

    @classmethod
    def from_json(cls, text: str, *, where: str = RUN_JSON) -> RunInfo:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise RunRecordError(f"{where}: not valid JSON ({e})") from e
        if not isinstance(data, dict):
            raise RunRecordError(f"{where}: expected a JSON object, got {type(data).__name__}")
        return cls.from_dict(data, where=where)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = RUN_JSON) -> RunInfo:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        missing = [k for k in ("run_id", "predictor") if k not in data]
        if missing:
            raise RunRecordError(f"{where}: missing required key(s) {', '.join(missing)}")
        kwargs = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        info = cls(**kwargs, extra=extra)
        info.validate(where)
        return info

    def validate(self, where: str = RUN_JSON) -> None:
        """Check field types (raises :class:`RunRecordError` naming the field)."""

        def bad(name: str, expected: str) -> RunRecordError:
            value = getattr(self, name)
            return RunRecordError(
                f"{where}: {name} must be {expected}, got {type(value).__name__} {value!r}"
            )

        if not isinstance(self.run_id, str) or not self.run_id:
            raise bad("run_id", "a non-empty string")
        if not isinstance(self.predictor, str) or not self.predictor:
            raise bad("predictor", "a non-empty string")
        if self.variant is not None and not isinstance(self.variant, str):
            raise bad("variant", "a string or null")
        if not isinstance(self.datasets, list) or not all(
            isinstance(d, str) for d in self.datasets
        ):
            raise bad("datasets", "a list of strings")
        if not isinstance(self.created_at, str):
            raise bad("created_at", "an ISO-8601 string")
        if not isinstance(self.config, dict):
            raise bad("config", "an object")
        if not isinstance(self.versions, dict):
            raise bad("versions", "an object")
        if self.git_commit is not None and not isinstance(self.git_commit, str):
            raise bad("git_commit", "a string or null")
        if self.lpips_backbone is not None and not isinstance(self.lpips_backbone, str):
            raise bad("lpips_backbone", "a string or null")
        if not isinstance(self.lpips_available, bool):
            raise bad("lpips_available", "true or false")

    @property
    def views_source(self) -> str | None:
        """Where a view-based predictor's six views came from (``generated`` or
        ``ground-truth``, from the predict configs), or None when not recorded."""
        predict = self.config.get("predict")
        if not isinstance(predict, Mapping):
            return None
        sources = {
            str(c["views"])
            for c in predict.values()
            if isinstance(c, Mapping) and c.get("views") is not None
        }
        if not sources:
            return None
        return "ground-truth" if "ground-truth" in sources else sorted(sources)[0]

    @property
    def label(self) -> str:
        """``predictor`` or ``predictor/variant``; a run of the LRM on views rendered from the
        ground truth says so (an upper bound, never the paper's single-image rows)."""
        name = f"{self.predictor}/{self.variant}" if self.variant else self.predictor
        if self.predictor == "instantmesh" and self.views_source == "ground-truth":
            name += ", GT views (upper bound)"
        return name

    @property
    def unavailable_metrics(self) -> frozenset[str]:
        """Metrics this run records as null whatever was computed: ``lpips`` unless
        ``lpips_available`` (a random trunk's numbers mean nothing)."""
        return frozenset() if self.lpips_available else frozenset({"lpips"})

    @property
    def lpips_usable(self) -> bool:
        """True when LPIPS numbers are real: available and not from a random trunk."""
        backbone = self.lpips_backbone or ""
        return self.lpips_available and "random" not in backbone


# --------------------------------------------------------------------------- tables


def _table_from_rows(rows: Iterable[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    rows = list(rows)
    if not rows:
        return schema.empty_table()
    extra = sorted({k for r in rows for k in r} - set(schema.names))
    if extra:
        # Extra columns are allowed; infer their types from the data.
        base = pa.Table.from_pylist(
            [{k: r.get(k) for k in schema.names} for r in rows], schema=schema
        )
        rest = pa.Table.from_pylist([{k: r.get(k) for k in extra} for r in rows])
        for name in extra:
            base = base.append_column(name, rest.column(name))
        return base
    return pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)


def image_metrics_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Build an image-metrics table from dict rows (missing nullable keys become null)."""
    return _table_from_rows(rows, image_metrics_schema())


def geometry_metrics_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Build a geometry-metrics table from dict rows."""
    return _table_from_rows(rows, geometry_metrics_schema())


def objects_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Build an objects (status) table from dict rows."""
    return _table_from_rows(rows, OBJECTS_SCHEMA)


@dataclass
class RunRecords:
    """One run: metadata plus its three tables (pyarrow Tables in the schemas above)."""

    info: RunInfo
    image_metrics: pa.Table
    geometry_metrics: pa.Table
    objects: pa.Table
    uri: str | None = None
    """Where the run was read from (``None`` for records built in memory)."""

    @property
    def run_id(self) -> str:
        return self.info.run_id

    @classmethod
    def from_rows(
        cls,
        info: RunInfo,
        image_rows: Iterable[Mapping[str, Any]] = (),
        geometry_rows: Iterable[Mapping[str, Any]] = (),
        object_rows: Iterable[Mapping[str, Any]] = (),
    ) -> RunRecords:
        """Build and validate records from dict rows. Rows without ``run_id`` / ``predictor``
        get ``info.run_id`` / ``info.predictor`` filled in."""

        def fill(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
            out = []
            for r in rows:
                d = dict(r)
                d.setdefault("run_id", info.run_id)
                d.setdefault("predictor", info.predictor)
                out.append(d)
            return out

        records = cls(
            info=info,
            image_metrics=image_metrics_table(fill(image_rows)),
            geometry_metrics=geometry_metrics_table(fill(geometry_rows)),
            objects=objects_table(fill(object_rows)),
        )
        return validate_records(records)


def _conform(table: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
    """Required columns first, cast to the schema types; extra columns kept after them."""
    if not isinstance(table, pa.Table):
        raise RunRecordError(f"{where}: expected a pyarrow Table, got {type(table).__name__}")
    absent: set[str] = set()
    for name in schema.names:
        metric = METRICS.get(name)
        if name not in table.column_names and metric is not None:
            # a run written before this metric was registered (or without an optional one):
            # all null, as where a run could not compute it, so adding a metric keeps every
            # stored run (a nightly baseline) readable and comparable on the other metrics
            table = table.append_column(name, pa.nulls(table.num_rows, pa.float64()))
            absent.add(name)
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise RunRecordError(f"{where}: missing required column(s) {', '.join(missing)}")
    columns = []
    fields = []
    for f in schema:
        if f.name in absent:
            f = f.with_nullable(True)
        col = table.column(f.name)
        if not col.type.equals(f.type):
            try:
                col = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise RunRecordError(
                    f"{where}: column {f.name} has type {col.type}, expected {f.type}"
                ) from e
        if not f.nullable and col.null_count:
            raise RunRecordError(f"{where}: column {f.name} has {col.null_count} null value(s)")
        columns.append(col)
        fields.append(f)
    extras = [n for n in table.column_names if n not in schema.names]
    fields += [table.schema.field(n) for n in extras]
    columns += [table.column(n) for n in extras]
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def _keys(table: pa.Table, cols: Sequence[str]) -> list[tuple[Any, ...]]:
    data = [table.column(c).to_pylist() for c in cols]
    return list(zip(*data, strict=True)) if data else []


def _check_unique(table: pa.Table, key: Sequence[str], where: str) -> None:
    keys = _keys(table, key)
    if len(set(keys)) != len(keys):
        seen: set[tuple[Any, ...]] = set()
        dups = []
        for k in keys:
            if k in seen and k not in dups:
                dups.append(k)
            seen.add(k)
        shown = "; ".join(str(k) for k in dups[:3])
        raise RunRecordError(
            f"{where}: {len(dups)} duplicated key(s) over ({', '.join(key)}), e.g. {shown}"
        )


def _check_values(table: pa.Table, column: str, allowed: Sequence[str], where: str) -> None:
    bad = sorted(set(table.column(column).to_pylist()) - set(allowed))
    if bad:
        raise RunRecordError(f"{where}: {column} value(s) {bad} not in {list(allowed)}")


def validate_records(records: RunRecords) -> RunRecords:
    """Check the contract (module docstring); return records with tables cast to the schemas.

    Raises :class:`RunRecordError` naming the table, the column and the problem.
    """
    where = records.uri or f"run {records.info.run_id!r}"
    records.info.validate(join_url(where, RUN_JSON) if records.uri else f"{where} run.json")
    tables = {}
    for name, (schema, key) in _schemas().items():
        loc = f"{where}: {RUN_FILES[name]}"
        table = _conform(getattr(records, name), schema, loc)
        _check_unique(table, key, loc)
        ids = set(table.column("run_id").to_pylist())
        if ids - {records.info.run_id}:
            raise RunRecordError(
                f"{loc}: run_id value(s) {sorted(ids - {records.info.run_id})} differ from "
                f"run.json run_id {records.info.run_id!r}"
            )
        tables[name] = table

    image, geometry, objects = (
        tables["image_metrics"],
        tables["geometry_metrics"],
        tables["objects"],
    )
    loc = f"{where}: {RUN_FILES['image_metrics']}"
    _check_values(image, "view_set", VIEW_SETS, loc)
    if image.num_rows and pc.min(image.column("view")).as_py() < 0:
        raise RunRecordError(f"{loc}: view indices must be >= 0")
    if not records.info.lpips_available and image.column("lpips").null_count != image.num_rows:
        raise RunRecordError(
            f"{loc}: run.json says lpips_available is false, but {image.num_rows - image.column('lpips').null_count} "
            "lpips value(s) are set (write null when LPIPS is unavailable)"
        )
    _check_values(objects, "status", OBJECT_STATUSES, f"{where}: {RUN_FILES['objects']}")

    status = dict(
        zip(
            _keys(objects, ("predictor", "dataset", "uid")),
            objects.column("status").to_pylist(),
            strict=True,
        )
    )
    for name in ("image_metrics", "geometry_metrics"):
        loc = f"{where}: {RUN_FILES[name]}"
        objs = set(_keys(tables[name], ("predictor", "dataset", "uid")))
        unknown = sorted(k for k in objs if k not in status)
        if unknown:
            raise RunRecordError(
                f"{loc}: {len(unknown)} object(s) have metric rows but no row in "
                f"{RUN_FILES['objects']}, e.g. {unknown[0]}"
            )
        failed = sorted(k for k in objs if status[k] != "ok")
        if failed:
            raise RunRecordError(
                f"{loc}: {len(failed)} failed object(s) have metric rows, e.g. {failed[0]} "
                "(failed objects must have no metric rows)"
            )
    return RunRecords(
        info=records.info,
        image_metrics=image,
        geometry_metrics=geometry,
        objects=objects,
        uri=records.uri,
    )


# --------------------------------------------------------------------------- read / write


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def write_run_records(run_uri: str, records: RunRecords) -> str:
    """Validate ``records`` and write them under ``run_uri`` (created if needed).

    Each Parquet file is written atomically, then ``run.json`` last, so a run directory with a
    ``run.json`` always has its complete tables. Existing files are replaced. Returns
    ``run_uri``.
    """
    valid = validate_records(records)
    for name, rel in RUN_FILES.items():
        write_bytes_atomic(join_url(run_uri, rel), _parquet_bytes(getattr(valid, name)))
    write_bytes_atomic(join_url(run_uri, RUN_JSON), valid.info.to_json().encode("utf-8"))
    return run_uri


def read_run(run_uri: str) -> RunRecords:
    """Read and validate the run at ``run_uri``.

    Raises :class:`RunRecordError` when the directory, ``run.json`` or a table is missing
    (naming the missing file) or when the contents violate the contract.
    """
    if not _exists(run_uri):
        raise RunRecordError(f"run directory not found: {run_uri}")
    meta_url = join_url(run_uri, RUN_JSON)
    if not _exists(meta_url):
        raise RunRecordError(
            f"{meta_url} not found: {run_uri} is not a run directory (or its run was not "
            "finished: run.json is written last)"
        )
    try:
        text = read_bytes(meta_url).decode("utf-8")
    except UnicodeDecodeError as e:
        raise RunRecordError(f"{meta_url}: not UTF-8 text") from e
    info = RunInfo.from_json(text, where=meta_url)
    tables = {}
    for name, rel in RUN_FILES.items():
        url = join_url(run_uri, rel)
        if not _exists(url):
            raise RunRecordError(f"{url} not found (run {info.run_id!r} is incomplete)")
        try:
            tables[name] = parquet_from_bytes(read_bytes(url))
        except (pa.ArrowInvalid, OSError) as e:
            raise RunRecordError(f"{url}: not a readable Parquet file ({e})") from e
    return validate_records(RunRecords(info=info, **tables, uri=run_uri))


# --------------------------------------------------------------------------- merging


def object_outcome(
    evaluate: Mapping[str, Any],
    predict: Mapping[str, Any] | None = None,
    gt: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An object's ``status`` / ``error_type`` / ``error`` in ``objects.parquet``, from its
    status rows (``status``, ``error_type``, ``error``) of the evaluate stage, the predict stage
    and the evaluation-set build (``gt``); None where a stage has no row for it.

    The evaluate row alone decides ok or failed (an ok evaluation scored a finished prediction,
    whatever a later predict attempt said). A failed object names the first cause along the
    chain: the GT object the evaluation set could not build (its error prefixed
    ``evaluation set: ``), else the prediction that failed, else the evaluation's own error.
    Pure: no I/O.
    """
    if evaluate["status"] == "ok":
        return {"status": "ok", "error_type": None, "error": None}
    if gt is not None and gt["status"] != "ok":
        error_type, error = gt["error_type"], f"evaluation set: {gt['error']}"
    elif predict is not None and predict["status"] != "ok":
        error_type, error = predict["error_type"], predict["error"]
    else:
        error_type, error = evaluate["error_type"], evaluate["error"]
    return {"status": "failed", "error_type": error_type, "error": error}


def merge_run_records(previous: RunRecords | None, new: RunRecords) -> RunRecords:
    """The records of a run directory once ``new`` (the datasets just evaluated) is added to
    ``previous`` (what the directory held; None when it held no run). Pure: no I/O.

    A run directory is one run built one dataset at a time, and the latest evaluation of a
    dataset wins:

    - the run keeps ``previous``'s ``run_id`` (the directory's identity);
    - every dataset of ``new.info.datasets`` replaces all that ``previous`` had for it: its rows
      (objects ``new`` did not attempt included: they are dropped) and its entry in each
      per-dataset config section; an object's earlier outcome never survives, whether it was
      ok or failed before and whichever it is now;
    - the datasets only ``previous`` has keep their rows and config entries;
    - ``datasets`` is the sorted union; a config section of ``new`` starts from ``previous``'s
      section of the same name when that one is per-dataset (its keys are datasets of
      ``previous``), and ``previous``'s other sections are dropped;
    - everything else in ``run.json`` (predictor, variant, created_at, versions, git_commit,
      LPIPS) is ``new``'s, and every row is labelled with the merged ``run_id`` and ``new``'s
      predictor.
    """
    if previous is None:
        return validate_records(new)
    replaced = set(new.info.datasets)
    config: dict[str, Any] = {}
    for key, section in new.info.config.items():
        earlier = previous.info.config.get(key)
        merged: dict[str, Any] = {}
        if isinstance(earlier, dict) and set(earlier) <= set(previous.info.datasets):
            merged.update(earlier)
        merged.update(section)
        config[key] = merged
    info = dataclasses.replace(
        new.info,
        run_id=previous.run_id,
        datasets=sorted(set(previous.info.datasets) | replaced),
        config=config,
    )

    def rows(name: str) -> list[dict[str, Any]]:
        kept = [r for r in getattr(previous, name).to_pylist() if r["dataset"] not in replaced]
        out = kept + getattr(new, name).to_pylist()
        for r in out:
            r["run_id"], r["predictor"] = info.run_id, info.predictor
        return out

    return RunRecords.from_rows(
        info, rows("image_metrics"), rows("geometry_metrics"), rows("objects")
    )
