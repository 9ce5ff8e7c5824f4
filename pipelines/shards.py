"""``imesh shards``: a finished render stage -> WebDataset tar shards, resumable, on Ray.

Input: the output root of ``imesh render`` (``--from`` / ``--renders``) and its layout: the
objects whose latest status row in ``render-<layout>/status.parquet`` is ``ok``, read from
``<layout dir>/<uid>/``. Output (``--out``, a local folder or an fsspec URL such as
``s3://bucket/shards``), in the format of ``rendering.shard_format`` (read its docstring: keys,
members, index, completion)::

    shard-000000.tar ...            one sample per object, ascending uid, --shard-size objects
                                    per shard (or fewer: --max-bytes)
    index.parquet                   one row per member: shard, uid, key, member, offset, size,
                                    sha256
    _SUCCESS.json                   written last, only when every shard is published
    shards-<layout>/status.parquet  one status row per shard (uid = shard stem, shard-000000),
                                    results.parquet (bytes, sha256, members), config.yaml

The unit of work is a shard: one item of the generic runner (``pipelines.runner``), which runs
them on a Ray Data actor pool like every stage, records a status row per shard and resumes. A
shard is written under a temporary name (``shard-000000.tar.tmp-<hex>``) and renamed into
place only when complete, so a killed run never leaves a partial tar under a final name; the
next run rewrites only the shards without an ``ok`` row. A shard's item hash covers its objects'
render rows (uid, render hash, render run), so re-rendered objects get their shards rewritten. A
shard whose ``ok`` tar is missing or of another size is recorded as failed (``ShardMissing``)
and rewritten. An object folder that lacks a member fails its shard's row, naming the uid and
the member; the other shards go on, and no ``_SUCCESS.json`` is written until it is fixed.

Bad input (no render output root, no status table for the layout, no ``ok`` object) is a
one-line error (exit 2) before Ray starts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import pyarrow as pa
import pyarrow.compute as pc
import tyro
import yaml
from fsspec import AbstractFileSystem

from pipelines import storage
from pipelines.configs import NO_HASH, ConfigError, config_hash, provenance, registry_choices
from pipelines.runner import (
    RunOptions,
    StageReport,
    latest_rows,
    read_parts,
    run_stage,
    stage_dir,
    stage_lock,
)
from pipelines.schema import STATUS_SCHEMA, manifest_from_rows, read_parquet, write_parquet
from pipelines.stage import ItemContext, Stage
from rendering.output_layouts import LAYOUT_DIRS
from rendering.shard_format import (
    INDEX_NAME,
    INDEX_SCHEMA,
    SHARD_LAYOUTS,
    SHARD_PATTERN,
    SUCCESS_NAME,
    ShardRecord,
    encode_key,
    layout_members,
    member_name,
    member_tar_bytes,
    shard_name,
    shard_tar_bytes,
    write_shard,
)

if TYPE_CHECKING:
    ShardLayout = str
else:
    ShardLayout = registry_choices(SHARD_LAYOUTS)

LIST_THREADS = 16
"""Threads listing object folders for --max-bytes planning (one listing per object)."""


@dataclass
class ShardsConfig:
    """Pack a finished render stage into WebDataset tar shards (resumable, on Ray)."""

    renders: Annotated[str, tyro.conf.arg(aliases=("--from",))]
    """Render output root (the `--out` of `imesh render`; also `--from`): its `ok` objects of
    `--layout` are sharded, read from `<layout dir>/<uid>/`."""
    out: str
    """Output folder or URL: receives `shard-NNNNNN.tar`, `index.parquet`, `_SUCCESS.json` and
    the stage's `shards-<layout>/` status tables."""
    layout: ShardLayout = "instantmesh32"
    """Render layout to shard (flat object folders only): instantmesh32 or zero123pp."""
    shard_size: int = 256
    """Objects per shard (the last shard holds the rest)."""
    max_bytes: int = 0
    """Close a shard before its tar would exceed this many bytes (0: no limit; an object
    larger than this gets a shard of its own)."""
    run: RunOptions = field(default_factory=lambda: RunOptions(shard_size=1), metadata=NO_HASH)
    """Execution settings (workers, progress, scratch). `--run.shard-size` counts tar shards
    per scheduling unit (keep 1: a tar shard is already a large unit)."""
    address: str | None = field(default=None, metadata=NO_HASH)
    """Ray cluster address; default: RAY_ADDRESS if set, else a local embedded Ray."""


@dataclass(frozen=True)
class ShardPlan:
    """Which objects go into which shard (a function of the render status and the policy)."""

    objects_url: str
    """``<renders>/<layout dir>``: the object folders."""
    status_uri: str
    """The render stage's status table that selected the objects."""
    members: tuple[str, ...]
    """File names of every sample (``rendering.shard_format.layout_members``)."""
    shards: list[list[str]]
    """uids per shard, shard 0 first (ascending uids throughout)."""
    digests: list[str]
    """Per shard: hash of its objects' render rows and the members (the item fingerprint)."""
    render_rows: int
    """Rows in the render status table (ok or not)."""

    @property
    def n_objects(self) -> int:
        return sum(len(s) for s in self.shards)


@dataclass
class ShardsResult:
    """What a shards run did (``report``: the stage report, one item per shard)."""

    report: StageReport
    plan: ShardPlan
    out: str
    index_uri: str
    complete: bool
    """Every shard published (``_SUCCESS.json`` written)."""
    objects: int
    """Objects in the published shards."""
    bytes: int
    """Bytes of the published shards."""


class ShardInputError(ValueError):
    """An object folder that does not hold what its layout's samples need."""


RESULT_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("n_objects", pa.int32()),
        ("n_members", pa.int32()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        (
            "members",
            pa.list_(
                pa.struct([(f.name, f.type) for f in INDEX_SCHEMA if f.name != "shard"]),
            ),
        ),
    ]
)


# ---------------------------------------------------------------------------------------------
# Planning (driver, before Ray).
# ---------------------------------------------------------------------------------------------


def render_stage_name(layout: str) -> str:
    return f"render-{layout}"


def _render_views(stage_url: str) -> int:
    """``views`` of the render stage's resolved config (the number of training views)."""
    url = storage.join(stage_url, "config.yaml")
    if not storage.exists(url):
        return 32
    data = yaml.safe_load(storage.read_text(url)) or {}
    return int(data.get("views", 32)) if isinstance(data, dict) else 32


def _object_bytes(fs: AbstractFileSystem, root: str, uid: str, members: Sequence[str]) -> int:
    """Tar bytes of ``uid``'s sample from its folder listing (missing members count 0)."""
    sizes = {
        str(e["name"]).rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0)
        for e in fs.ls(f"{root}/{uid}", detail=True)
    }
    key = encode_key(uid)
    return sum(member_tar_bytes(member_name(key, m), sizes.get(m, 0)) for m in members)


def _partition(
    uids: list[str], sizes: list[int] | None, shard_size: int, max_bytes: int
) -> list[list[str]]:
    shards: list[list[str]] = []
    current: list[str] = []
    current_bytes = 0
    for i, uid in enumerate(uids):
        size = sizes[i] if sizes is not None else 0
        full = len(current) >= shard_size
        too_big = max_bytes > 0 and shard_tar_bytes(current_bytes + size) > max_bytes
        if current and (full or too_big):
            shards.append(current)
            current, current_bytes = [], 0
        current.append(uid)
        current_bytes += size
    if current:
        shards.append(current)
    return shards


def local_paths(cfg: ShardsConfig) -> ShardsConfig:
    """``cfg`` with ``file://`` URLs as plain paths (the stage lock and ``os.replace`` take
    paths; the same folder then gets the same config hash however it is spelled)."""

    def plain(url: str) -> str:
        return storage.filesystem(url)[1] if storage.is_local(url) else url

    return dataclasses.replace(cfg, renders=plain(cfg.renders), out=plain(cfg.out))


def check_shards_config(cfg: ShardsConfig) -> ShardPlan:
    """Everything checkable without Ray: the layout, the policy and the render stage (its
    status table and ``ok`` objects); returns the plan. Raises :class:`ConfigError`."""
    cfg = local_paths(cfg)
    if cfg.layout not in SHARD_LAYOUTS:
        raise ConfigError(
            f"--layout {cfg.layout!r} cannot be sharded; choose one of {list(SHARD_LAYOUTS)}"
        )
    if cfg.shard_size < 1:
        raise ConfigError(f"--shard-size must be >= 1, got {cfg.shard_size}")
    if cfg.max_bytes < 0:
        raise ConfigError(f"--max-bytes must be >= 0 (0: no limit), got {cfg.max_bytes}")
    if not storage.exists(cfg.renders):
        raise ConfigError(f"--from {cfg.renders}: no such render output root")
    stage_url = storage.join(cfg.renders, render_stage_name(cfg.layout))
    status_uri = storage.join(stage_url, "status.parquet")
    if not storage.exists(status_uri):
        fs, root = storage.filesystem(cfg.renders)
        others = sorted(
            p.rsplit("/", 2)[-2] for p in fs.glob(f"{root.rstrip('/')}/render-*/status.parquet")
        )
        hint = f" (it holds {', '.join(others)}: pass the matching --layout)" if others else ""
        raise ConfigError(
            f"--from {cfg.renders}: no {render_stage_name(cfg.layout)}/status.parquet, not a "
            f"finished `imesh render --layout {cfg.layout}` output root{hint}"
        )
    status = read_parquet(status_uri)
    if not {"uid", "status"} <= set(status.column_names):
        raise ConfigError(f"{status_uri} is not a stage status table (no uid/status columns)")
    ok = status.filter(pc.equal(status["status"], "ok"))
    if ok.num_rows == 0:
        counts = ", ".join(
            f"{n} {s}" for s, n in sorted(_count(status["status"].to_pylist()).items())
        )
        raise ConfigError(
            f"--from {cfg.renders}: no ok objects in {status_uri} ({counts or 'no rows'}); "
            f"nothing to shard"
        )
    members = layout_members(cfg.layout, views=_render_views(stage_url))
    objects_url = storage.join(cfg.renders, LAYOUT_DIRS[cfg.layout])
    rows = sorted(
        ok.select(
            [c for c in ("uid", "config_hash", "run_id") if c in ok.column_names]
        ).to_pylist(),
        key=lambda r: r["uid"],
    )
    uids = [r["uid"] for r in rows]
    sizes = None
    if cfg.max_bytes > 0:
        fs, root = storage.filesystem(objects_url)
        with ThreadPoolExecutor(LIST_THREADS) as pool:
            sizes = list(pool.map(lambda u: _object_bytes(fs, root, u, members), uids))
    shards = _partition(uids, sizes, cfg.shard_size, cfg.max_bytes)
    by_uid = {r["uid"]: r for r in rows}
    digests = [
        hashlib.sha256(
            json.dumps(
                {
                    "members": members,
                    "objects": [
                        [u, by_uid[u].get("config_hash"), by_uid[u].get("run_id")] for u in s
                    ],
                },
                sort_keys=True,
            ).encode()
        ).hexdigest()[:16]
        for s in shards
    ]
    return ShardPlan(objects_url, status_uri, members, shards, digests, status.num_rows)


def _count(values: list[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return out


# ---------------------------------------------------------------------------------------------
# Worker side: one shard per item.
# ---------------------------------------------------------------------------------------------


def read_object(
    fs: AbstractFileSystem, root: str, uid: str, members: Sequence[str]
) -> dict[str, bytes]:
    """The bytes of ``uid``'s members (one object in memory at a time)."""
    return {m: bytes(fs.cat_file(f"{root}/{uid}/{m}")) for m in members}


def check_objects(
    fs: AbstractFileSystem, root: str, uids: Sequence[str], members: Sequence[str]
) -> None:
    """Raise :class:`ShardInputError` naming the first object (uid) that lacks a member."""
    for uid in uids:
        folder = f"{root}/{uid}"
        if not fs.isdir(folder):
            raise ShardInputError(f"object {uid}: no folder {fs.unstrip_protocol(folder)}")
        present = {str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)}
        missing = [m for m in members if m not in present]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise ShardInputError(
                f"object {uid}: missing member {missing[0]}{more} in {fs.unstrip_protocol(folder)}"
            )


def publish_shard(
    url: str,
    samples: Iterator[tuple[str, dict[str, bytes]]],
    scratch_dir: str | None = None,
) -> ShardRecord:
    """Write a shard to ``url`` atomically: to ``<url>.tmp-<hex>`` (remote: a local scratch
    file first, then uploaded under that name), renamed to ``url`` only when complete. A
    failure removes the temporary file and leaves ``url`` as it was."""
    fs, path = storage.filesystem(url)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if storage.is_local(url):
        if parent:
            os.makedirs(parent, exist_ok=True)
        try:
            with open(tmp, "wb") as fh:
                record = write_shard(fh, samples)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return record
    fd, local = tempfile.mkstemp(prefix="imesh-shard-", suffix=".tar", dir=scratch_dir)
    try:
        with os.fdopen(fd, "wb") as fh:
            record = write_shard(fh, samples)
        if parent:
            fs.makedirs(parent, exist_ok=True)
        fs.put_file(local, tmp)
        fs.mv(tmp, path)
    finally:
        os.unlink(local)
        if fs.exists(tmp):
            fs.rm(tmp)
    return record


def shard_item(row: dict[str, Any], ctx: ItemContext) -> dict[str, Any]:
    """Write one shard: check every object's members, then stream the objects into the tar."""
    cfg: ShardsConfig = ctx.config
    fs, root = storage.filesystem(row["objects_url"])
    uids: list[str] = list(row["objects"])
    members: list[str] = list(row["members"])
    check_objects(fs, root, uids, members)
    samples = ((uid, read_object(fs, root, uid, members)) for uid in uids)
    record = publish_shard(row["shard_uri"], samples, cfg.run.scratch_dir)
    return {
        "shard": row["shard_uri"].rstrip("/").rsplit("/", 1)[-1],
        "n_objects": len(uids),
        "n_members": len(record.members),
        "bytes": record.bytes,
        "sha256": record.sha256,
        "members": [dataclasses.asdict(m) for m in record.members],
    }


def shard_inputs(row: dict[str, Any], cfg: ShardsConfig) -> str:
    """The shard's objects and their render rows (computed by the plan)."""
    del cfg
    return str(row.get("objects_digest"))


def shards_stage(layout: str) -> Stage:
    return Stage(
        name=f"shards-{layout}",
        process=shard_item,
        result_schema=RESULT_SCHEMA,
        input_fingerprint=shard_inputs,
    )


# ---------------------------------------------------------------------------------------------
# Driver.
# ---------------------------------------------------------------------------------------------


def _listing(url: str) -> dict[str, int]:
    """File name -> size of the files directly under ``url`` (empty if it does not exist)."""
    fs, path = storage.filesystem(url)
    if not fs.exists(path):
        return {}
    return {
        str(e["name"]).rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0)
        for e in fs.ls(path, detail=True)
        if e.get("type") != "directory"
    }


def _clean_output(cfg: ShardsConfig, n_shards: int) -> None:
    """Before a run (under the lock): drop the completion marker, temporary files of killed
    runs and shards beyond the plan (left by an earlier, larger plan)."""
    fs, path = storage.filesystem(cfg.out)
    planned = {shard_name(i) for i in range(n_shards)}
    for name in _listing(cfg.out):
        stale_shard = name.startswith("shard-") and name.endswith(".tar") and name not in planned
        if name == SUCCESS_NAME or ".tar.tmp-" in name or stale_shard:
            fs.rm(f"{path.rstrip('/')}/{name}")


def _invalidate_missing(cfg: ShardsConfig, stage: Stage, names: Sequence[str]) -> int:
    """Record a failed ``ShardMissing`` row for each planned shard whose latest row is ``ok``
    but whose tar is gone or of another size, so the runner rewrites it. Returns the count."""
    latest = latest_rows(read_parts(cfg.out, stage), [n.removesuffix(".tar") for n in names])
    if latest.num_rows == 0:
        return 0
    on_disk = _listing(cfg.out)
    now = dt.datetime.now(dt.UTC)
    run_id = now.strftime("%Y%m%dT%H%M%S") + "-check"
    rows = []
    for r in latest.to_pylist():
        name = f"{r['uid']}.tar"
        if r["status"] != "ok" or on_disk.get(name) == r.get("bytes"):
            continue
        found = "missing" if name not in on_disk else f"{on_disk[name]} bytes"
        rows.append(
            {
                "uid": r["uid"],
                "stage": stage.name,
                "status": "failed",
                "error_type": "ShardMissing",
                "error": f"{name}: published shard is {found}, its ok row says {r.get('bytes')} "
                "bytes; rewritten",
                "seconds": None,
                "attempt": int(r["attempt"]) + 1,
                "output_uri": None,
                "config_hash": r["config_hash"],
                "run_id": run_id,
                "finished_at": now,
            }
        )
    if rows:
        url = storage.join(stage_dir(cfg.out, stage), "parts", f"part-{run_id}-missing.parquet")
        write_parquet(pa.Table.from_pylist(rows, schema=STATUS_SCHEMA), url)
    return len(rows)


def _manifest(cfg: ShardsConfig, plan: ShardPlan) -> pa.Table:
    rows = []
    for i, (uids, digest) in enumerate(zip(plan.shards, plan.digests, strict=True)):
        url = storage.join(cfg.out, shard_name(i))
        rows.append(
            {
                "uid": shard_name(i).removesuffix(".tar"),
                "source": "synthetic",  # made by this pipeline, not taken from a dataset
                "mesh_uri": url,
                "sha256": None,
                "shard_uri": url,
                "objects_url": plan.objects_url,
                "objects": uids,
                "members": list(plan.members),
                "objects_digest": digest,
            }
        )
    return manifest_from_rows(rows)


def run_shards(cfg: ShardsConfig, plan: ShardPlan | None = None) -> ShardsResult:
    """Write (or resume) the shards of ``cfg`` (Ray must be initialised; ``ray_session``).
    ``plan``: what :func:`check_shards_config` returned (computed again otherwise)."""
    cfg = local_paths(cfg)
    plan = plan if plan is not None else check_shards_config(cfg)
    stage = shards_stage(cfg.layout)
    names = [shard_name(i) for i in range(len(plan.shards))]
    storage.makedirs(cfg.out)
    with stage_lock(cfg.out):
        _clean_output(cfg, len(names))
        _invalidate_missing(cfg, stage, names)
        report = run_stage(stage, cfg, _manifest(cfg, plan), cfg.out, cfg.run)
        results = read_parquet(report.results_uri).to_pylist()
        results.sort(key=lambda r: r["shard"])
        index = [
            {"shard": r["shard"], **m}
            for r in results
            for m in sorted(r["members"], key=lambda m: m["offset"])
        ]
        index_uri = storage.join(cfg.out, INDEX_NAME)
        write_parquet(pa.Table.from_pylist(index, schema=INDEX_SCHEMA), index_uri)
        complete = len(results) == len(names)
        if complete:
            _write_success(cfg, plan, results)
    return ShardsResult(
        report=report,
        plan=plan,
        out=cfg.out,
        index_uri=index_uri,
        complete=complete,
        objects=sum(int(r["n_objects"]) for r in results),
        bytes=sum(int(r["bytes"]) for r in results),
    )


def _write_success(cfg: ShardsConfig, plan: ShardPlan, results: list[dict[str, Any]]) -> None:
    payload = {
        "format": "webdataset tar shards (rendering.shard_format)",
        "layout": cfg.layout,
        "shard_pattern": SHARD_PATTERN,
        "members": list(plan.members),
        "counts": {
            "shards": len(results),
            "objects": sum(int(r["n_objects"]) for r in results),
            "members": sum(int(r["n_members"]) for r in results),
            "bytes": sum(int(r["bytes"]) for r in results),
            "render_rows": plan.render_rows,
        },
        "source": {
            "renders": cfg.renders,
            "objects": plan.objects_url,
            "status": plan.status_uri,
            "stage": render_stage_name(cfg.layout),
        },
        "policy": {"shard_size": cfg.shard_size, "max_bytes": cfg.max_bytes or None},
        "shards": [
            {
                "name": r["shard"],
                "objects": r["n_objects"],
                "bytes": r["bytes"],
                "sha256": r["sha256"],
            }
            for r in results
        ],
        "config_hash": config_hash(cfg),
        "provenance": provenance(),
    }
    storage.atomic_write_text(
        storage.join(cfg.out, SUCCESS_NAME), json.dumps(payload, indent=1, sort_keys=True)
    )


def main_shards(cfg: ShardsConfig) -> int:
    """``imesh shards``: check the input (exit 2 before Ray), run, print what was written."""
    from pipelines.ray_session import ray_session
    from pipelines.summary import errors_table, make_console, stage_table

    plan = check_shards_config(cfg)
    with ray_session(cfg.address):
        result = run_shards(cfg, plan)
    console = make_console()
    console.print(stage_table([result.report]))
    if result.report.errors:
        console.print(errors_table(result.report.errors))
    state = (
        "complete (_SUCCESS.json written)"
        if result.complete
        else f"{len(plan.shards) - result.report.ok} shard(s) not written: "
        f"imesh status {stage_dir(cfg.out, shards_stage(cfg.layout))}"
    )
    console.print(
        f"shards: {result.report.ok} of {len(plan.shards)} tar shards, {result.objects} objects, "
        f"{result.bytes / 1e6:.1f} MB -> {cfg.out}/shard-*.tar  index: {result.index_uri}  {state}"
    )
    return 0
