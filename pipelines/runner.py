"""The one generic way to map a stage over a manifest with Ray Data.

Layout written under the job's output root ``<out>`` for a stage named ``S``::

    <out>/S/config.yaml              resolved stage config + provenance (version, git commit)
    <out>/S/parts/part-<run>-<n>.parquet   status (+ result) rows of one shard, written atomically
    <out>/S/status.parquet           compiled: exactly one row per manifest item (latest attempt)
    <out>/S/results.parquet          compiled: result columns of the items whose status is ok
    <out>/<item_output>/<uid>/...    per-item files (stages with file outputs), marker last

The unit of work is a *shard* of manifest rows (``shard_size`` items). A worker processes the
items of a shard one by one, catching each item's exception as a ``failed`` row, and writes the
shard's rows as one Parquet part file, atomically, when the shard is finished. Progress is per
object all the same: each worker sends every finished item's status to a small inbox actor
that the driver drains for its progress display (``pipelines.progress``) and ``on_item``
callback; the shard's summary confirms them, so every object is reported exactly once.

Resume: at start, the existing part files are read; an item whose latest row is ``ok`` with the
current config hash is done and skipped. Everything else (never started, failed, interrupted,
config changed) is redone, with ``attempt`` counting previous tries. Stages whose items read
inputs from outside the manifest declare ``Stage.input_fingerprint``; it is folded into each
item's hash (:func:`item_hash`), so an item whose inputs changed is redone too. For file stages
a worker also skips an item whose published marker already carries the current item hash (the
job may have been killed after publishing but before the shard's part was written); such reused
items count as *resumed* in the report, like the items skipped by the driver. Killing the driver
at any point therefore loses nothing and, since the compiled tables keep one row per uid,
duplicates nothing. A run that ends removes what it no longer needs: scratch folders, the empty
``.staging/`` folder next to the published items and its ``.lock``.

Stages that follow each other per object (predict, then evaluate what was predicted) can run as
one job (:func:`run_stages`): each worker sets up every stage once and takes each object
through all of them before the next one, so no object waits for a second actor pool (process
start, imports, setup, cache warm-up) and a later stage reads a file just written by the same
process. Each stage keeps its own layout, part files, status and result tables, and resume
rules; a later stage that the driver found done for an object is re-checked in the worker after
the earlier stages ran (an earlier stage that redid the object changed its inputs).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import hashlib
import logging
import os
import pickle
import re
import shutil
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import storage
from pipelines.configs import config_hash, write_resolved_config
from pipelines.progress import StageProgress
from pipelines.schema import (
    STATUS_COLUMNS,
    STATUS_SCHEMA,
    read_parquet,
    validate_manifest,
    write_parquet,
)
from pipelines.stage import ItemContext, SkipItem, Stage

MAX_ERROR_CHARS = 2000
PROGRESS_POLL_S = 0.25
"""How often the driver drains the workers' per-object progress events (seconds)."""

ItemCallback = Callable[[str, str], None]
"""``on_item(uid, status)``: called once per object this run finished (``ok``, ``failed`` or
``skipped``), in the driver, as the object finishes."""

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RunOptions:
    """How a stage is executed (none of these change outputs, so none enter the config hash)."""

    workers: int = 0
    """Number of parallel workers (Ray actors). 0 = one per available CPU slot for the stage."""
    shard_size: int = 8
    """Items per shard: the unit of scheduling and of status-part writing."""
    progress: bool = True
    """Show per-object progress on stderr: a bar on a terminal, a line per 10 % in logs."""
    scratch_dir: str | None = None
    """Local scratch directory for per-item files before publishing (default: system temp)."""
    item_timeout_s: float = 1800.0
    """Per-item time limit in seconds (0 = none): an item with no result by then becomes a
    failed `ItemTimeout` row and the job goes on. Keep it above a stage's own limits (render
    --timeout-s, which kills and respawns the Blender worker cleanly)."""


@dataclasses.dataclass
class StageReport:
    """What a stage run did. ``counts`` covers every manifest item after this run."""

    stage: str
    out: str
    total: int
    skipped_done: int
    """Items resumed: done by an earlier run, either skipped by the driver (an ``ok`` status row
    with the current item hash) or found published by a worker (a marker with the current item
    hash, e.g. after a kill between publishing and writing the shard's status part)."""
    processed: int
    """Items this run computed (ok, failed or skipped)."""
    counts: dict[str, int]
    errors: list[tuple[str, int]]
    seconds: float
    status_uri: str
    results_uri: str

    @property
    def ok(self) -> int:
        return self.counts.get("ok", 0)

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0)


def stage_dir(out: str, stage: Stage | str) -> str:
    name = stage if isinstance(stage, str) else stage.name
    return storage.join(out, name)


def _result_schema_with_status(stage: Stage) -> pa.Schema:
    fields = list(STATUS_SCHEMA)
    fields += [f.with_nullable(True) for f in stage.result_schema if f.name != "uid"]
    return pa.schema(fields)


# ---------------------------------------------------------------------------------------------
# Worker side (runs inside Ray actors; also callable in-process for debugging).
# ---------------------------------------------------------------------------------------------


def item_hash(stage: Stage, chash: str, row: dict[str, Any], config: Any) -> str:
    """The hash an item's status row and marker carry: the config hash, combined with the
    item's input fingerprint for stages that declare one."""
    if stage.input_fingerprint is None:
        return chash
    fingerprint = stage.input_fingerprint(row, config)
    return hashlib.sha256(f"{chash}\0{fingerprint}".encode()).hexdigest()[:16]


class StageWorker:
    """Processes the items of one stage in a Ray actor: each item's status (+ result) row,
    resume checks, per-item timeout, validation and atomic publishing."""

    def __init__(
        self,
        stage: Stage,
        config: Any,
        out: str,
        run_id: str,
        scratch_dir: str | None,
        item_timeout_s: float = 0.0,
    ) -> None:
        self.stage = stage
        self.config = config
        self.out = out
        self.run_id = run_id
        self.scratch_root = scratch_dir
        self.item_timeout_s = float(item_timeout_s or 0.0)
        self.config_hash = config_hash(config)
        self.schema = _result_schema_with_status(stage)
        self.state = stage.setup(config) if stage.setup is not None else None
        self.abandoned = 0
        """Items whose thread outlived the item timeout (still running or blocked)."""
        self.reused = 0
        """Items found already published with the current item hash (not recomputed)."""

    def __del__(self) -> None:
        close = getattr(self.state, "close", None)
        if callable(close):
            close()

    def write_part(self, shard_id: int, rows: list[dict[str, Any]]) -> str:
        """Write one shard's rows of this stage as a part file (atomically); returns its URL."""
        part = storage.join(
            stage_dir(self.out, self.stage), "parts", f"part-{self.run_id}-{shard_id:06d}.parquet"
        )
        write_parquet(pa.Table.from_pylist(rows, schema=self.schema), part)
        return part

    def process_item(
        self, item: dict[str, Any], attempt: int, done_hash: str | None = None
    ) -> dict[str, Any] | None:
        """One item's status (+ result) row, within the per-item timeout; None when its item
        hash equals ``done_hash`` (the hash of its latest ``ok`` row: done, nothing to write).

        A Python thread cannot be killed, so the watchdog is here, in the actor: the item runs
        in its own daemon thread and the actor waits at most ``item_timeout_s``. On timeout the
        item is a failed ``ItemTimeout`` row, its thread is abandoned (flagged so that it never
        publishes; its scratch folder is removed) and the stage state (``Stage.setup``) is
        rebuilt, so no later item shares a backend with the stuck one; the job goes on.
        Stages with a child process (the Blender worker) enforce their own, tighter timeout by
        killing that process."""
        t0 = time.perf_counter()
        if not self.item_timeout_s:
            return self._process_item(item, attempt, t0, threading.Event(), {}, done_hash)
        cancelled = threading.Event()
        shared: dict[str, Any] = {}

        def target() -> None:
            try:
                shared["row"] = self._process_item(item, attempt, t0, cancelled, shared, done_hash)
            except BaseException as e:  # re-raised in the actor's thread below
                shared["error"] = e

        thread = threading.Thread(target=target, name=f"imesh-item-{item.get('uid')}", daemon=True)
        thread.start()
        thread.join(self.item_timeout_s)
        if thread.is_alive():
            return self._timed_out(item, attempt, t0, cancelled, shared)
        if "error" in shared:
            raise shared["error"]
        row: dict[str, Any] | None = shared["row"]
        return row

    def _timed_out(
        self,
        item: dict[str, Any],
        attempt: int,
        t0: float,
        cancelled: threading.Event,
        shared: dict[str, Any],
    ) -> dict[str, Any]:
        cancelled.set()
        self.abandoned += 1
        scratch = shared.get("scratch")
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        if self.stage.setup is not None:  # the stuck thread may still hold the old state
            old, self.state = self.state, self.stage.setup(self.config)
            close = getattr(old, "close", None)
            if callable(close):
                threading.Thread(target=close, daemon=True).start()
        uid = str(item.get("uid"))
        row = {
            "uid": uid,
            "stage": self.stage.name,
            "attempt": attempt,
            "config_hash": item_hash(self.stage, self.config_hash, item, self.config),
            "run_id": self.run_id,
            "status": "failed",
            "error_type": "ItemTimeout",
            "error": (
                f"{uid}: no result after {self.item_timeout_s:g} s (--run.item-timeout-s); "
                "abandoned (its thread cannot be killed and never publishes) and the worker's "
                f"stage state rebuilt; {self.abandoned} item(s) abandoned in this worker"
            ),
            "output_uri": None,
        }
        return self._finish(row, t0)

    def _process_item(
        self,
        item: dict[str, Any],
        attempt: int,
        t0: float,
        cancelled: threading.Event,
        shared: dict[str, Any],
        done_hash: str | None = None,
    ) -> dict[str, Any] | None:
        uid = str(item.get("uid"))
        ihash = item_hash(self.stage, self.config_hash, item, self.config)
        if ihash == done_hash:
            return None
        row: dict[str, Any] = {
            "uid": uid,
            "stage": self.stage.name,
            "attempt": attempt,
            "config_hash": ihash,
            "run_id": self.run_id,
            "error_type": None,
            "error": None,
            "output_uri": None,
        }
        scratch: Path | None = None
        try:
            storage.check_uid(uid)
            item_url = None
            if self.stage.item_output is not None:
                item_url = storage.join(self.out, self.stage.item_output, uid)
                marker = storage.read_marker(item_url)
                if marker is not None and marker.get("config_hash") == ihash:
                    row.update(status="ok", output_uri=item_url, seconds=marker.get("seconds"))
                    row.update(marker.get("result", {}))
                    if not cancelled.is_set():
                        self.reused += 1
                    return self._finish(row, t0, keep_seconds=True)
                scratch = Path(
                    tempfile.mkdtemp(prefix=f"imesh-{self.run_id}-{uid}-", dir=self.scratch_root)
                )
                shared["scratch"] = scratch
            ctx = ItemContext(uid, attempt, self.config, self.state, scratch)
            result = self.stage.process(item, ctx)
            self._check_result(result)
            if scratch is not None and item_url is not None:
                if self.stage.validate is not None:
                    self.stage.validate(scratch, result)
                seconds = time.perf_counter() - t0
                if cancelled.is_set():
                    raise TimeoutError(f"{uid}: finished after its item timeout; not published")
                storage.publish_dir(
                    scratch,
                    item_url,
                    {
                        "uid": uid,
                        "stage": self.stage.name,
                        "config_hash": ihash,
                        "run_id": self.run_id,
                        "attempt": attempt,
                        "seconds": seconds,
                        "result": result,
                    },
                )
                scratch = None
            row.update(result)
            row.update(status="ok", output_uri=item_url)
        except SkipItem as e:
            row.update(status="skipped", error_type="SkipItem", error=str(e)[:MAX_ERROR_CHARS])
        except Exception as e:
            fault = storage.storage_fault(e)
            if fault is not None:  # the machine's fault, not the item's: stop the job
                raise fault from e
            row.update(status="failed", error_type=type(e).__name__, error=_error_text(e))
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
        return self._finish(row, t0)

    def _check_result(self, result: Any) -> None:
        if not isinstance(result, dict):
            raise TypeError(
                f"stage {self.stage.name} returned {type(result).__name__}, expected a dict"
            )
        unknown = set(result) - set(self.stage.result_schema.names)
        if unknown:
            raise ValueError(
                f"stage {self.stage.name} returned undeclared result column(s) {sorted(unknown)}"
            )

    @staticmethod
    def _finish(row: dict[str, Any], t0: float, keep_seconds: bool = False) -> dict[str, Any]:
        if not keep_seconds or row.get("seconds") is None:
            row["seconds"] = time.perf_counter() - t0
        row["finished_at"] = dt.datetime.now(dt.UTC)
        return row


Step = tuple[Stage, Any]
"""A stage and its config."""
ItemPlan = tuple[int, str | None]
"""Per stage of an item: its attempt number, and the item hash of its latest ``ok`` row when
the driver found that stage done for it (the worker then skips the stage if the hash still
holds once the earlier stages ran), else None."""


class ShardWorker:
    """Processes shards of manifest rows through one or more stages (:class:`StageWorker`
    each, set up once); one instance per Ray actor. Each item goes through every stage in order
    before the next item starts, so a later stage reads what an earlier one just published, in
    the same warm process. Each stage writes its own part file per shard."""

    def __init__(
        self,
        steps: list[Step],
        out: str,
        run_id: str,
        scratch_dir: str | None,
        item_timeout_s: float = 0.0,
    ) -> None:
        self.workers = [
            StageWorker(stage, config, out, run_id, scratch_dir, item_timeout_s)
            for stage, config in steps
        ]
        self.inbox: Any = None
        """Ray actor handle receiving ``(uid, status)`` per finished item (driver progress)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shard_ids, items, counts, faults = [], [], [], []
        for shard_id, payload in zip(batch["shard"], batch["payload"], strict=True):
            reused_before = [w.reused for w in self.workers]
            rows: list[list[dict[str, Any]]] = [[] for _ in self.workers]
            passed = [0] * len(self.workers)
            finished = []
            try:
                for item, plans in pickle.loads(payload):
                    finished.append((item["uid"], self._run_item(item, plans, rows, passed)))
                for worker, stage_rows in zip(self.workers, rows, strict=True):
                    if stage_rows:
                        worker.write_part(int(shard_id), stage_rows)
            except Exception as e:
                # A full / read-only disk: returned as data, since Ray's exception wrapping
                # loses the cause across processes; the driver stops the job naming it.
                fault = storage.storage_fault(e)
                if fault is None:
                    raise
                finished, rows = [], [[] for _ in self.workers]
                faults.append(str(fault))
            else:
                faults.append("")
            shard_ids.append(int(shard_id))
            items.append(pickle.dumps(finished))
            reused = [w.reused - n for w, n in zip(self.workers, reused_before, strict=True)]
            # per stage: (rows computed this run, items resumed: skipped or found published)
            counts.append(
                pickle.dumps(
                    [
                        (len(r) - n, n + skipped) if finished else (0, 0)
                        for r, n, skipped in zip(rows, reused, passed, strict=True)
                    ]
                )
            )
        return {
            "shard": np.array(shard_ids, dtype=np.int64),
            "items": np.array(items, dtype=object),
            "counts": np.array(counts, dtype=object),
            "fault": np.array(faults, dtype=object),
        }

    def _run_item(
        self,
        item: dict[str, Any],
        plans: list[ItemPlan],
        rows: list[list[dict[str, Any]]],
        passed: list[int],
    ) -> str:
        """``item`` through every stage (its rows appended to ``rows``, stages found done
        counted in ``passed``); returns its status (the worst of its stages': failed, skipped,
        ok), also sent to the driver's progress inbox (fire and forget: the shard's summary
        confirms it if the message comes late)."""
        statuses = set()
        for k, (worker, (attempt, done_hash)) in enumerate(zip(self.workers, plans, strict=True)):
            row = worker.process_item(item, attempt, done_hash)
            if row is None:
                passed[k] += 1
                continue
            rows[k].append(row)
            statuses.add(row["status"])
        status = next((s for s in ("failed", "skipped") if s in statuses), "ok")
        if self.inbox is not None:
            self.inbox.put.remote(item["uid"], status)
        return status


def _bound_worker(
    steps: list[Step],
    out: str,
    run_id: str,
    scratch_dir: str | None,
    item_timeout_s: float = 0.0,
    inbox: Any = None,
) -> type[ShardWorker]:
    """A ShardWorker subclass with its arguments bound (shipped with the class definition,
    so actor restarts never depend on constructor arguments held in the object store)."""

    class BoundShardWorker(ShardWorker):
        def __init__(self) -> None:
            super().__init__(steps, out, run_id, scratch_dir, item_timeout_s)
            self.inbox = inbox

    return BoundShardWorker


class ProgressInbox:
    """Ray actor (one per stage run): the workers' per-object ``(uid, status)`` events, until
    the driver takes them."""

    def __init__(self) -> None:
        self._events: list[tuple[str, str]] = []

    def put(self, uid: str, status: str) -> None:
        self._events.append((uid, status))

    def take(self) -> list[tuple[str, str]]:
        events, self._events = self._events, []
        return events


def _error_text(e: BaseException) -> str:
    msg = str(e) or repr(e)
    tb = traceback.extract_tb(e.__traceback__)
    where = f" [at {Path(tb[-1].filename).name}:{tb[-1].lineno}]" if tb else ""
    return (msg + where)[:MAX_ERROR_CHARS]


# ---------------------------------------------------------------------------------------------
# Driver side.
# ---------------------------------------------------------------------------------------------


def read_parts(out: str, stage: Stage) -> pa.Table:
    """All status(+result) rows ever written for ``stage`` under ``out`` (empty if none)."""
    schema = _result_schema_with_status(stage)
    tables = []
    for url in storage.list_files(storage.join(stage_dir(out, stage), "parts"), ".parquet"):
        t = read_parquet(url)
        tables.append(t.select([n for n in schema.names if n in t.column_names]))
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables, promote_options="default")


def latest_rows(parts: pa.Table, uids: Iterable[str] | None = None) -> pa.Table:
    """One row per uid: the most recent attempt (ties broken by finish time)."""
    if parts.num_rows == 0:
        return parts
    if uids is not None:
        parts = parts.filter(pc.is_in(parts["uid"], value_set=pa.array(list(uids), pa.string())))
    order = pc.sort_indices(
        parts,
        sort_keys=[("uid", "ascending"), ("attempt", "descending"), ("finished_at", "descending")],
    )
    parts = parts.take(order)
    uid_col = parts["uid"].to_pylist()
    keep = [i for i, u in enumerate(uid_col) if i == 0 or uid_col[i - 1] != u]
    return parts.take(pa.array(keep, pa.int64()))


def _shards(rows: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


def _workers_for(num_cpus: float, num_gpus: float, requested: int) -> int:
    """Workers for actors of ``num_cpus`` / ``num_gpus`` each: ``requested``, else as many as
    the cluster's free resources hold."""
    if requested > 0:
        return requested
    import ray

    cpus = float(ray.available_resources().get("CPU", 1.0))
    if num_gpus > 0:
        gpus = float(ray.available_resources().get("GPU", 0.0))
        return max(1, int(gpus // num_gpus))
    return max(1, int(cpus // max(num_cpus, 1e-6)))


class StageLocked(RuntimeError):
    """Another run of the same stage is writing to the same output root."""


@contextlib.contextmanager
def stage_lock(sdir: str) -> Iterator[None]:
    """Exclusive lock on ``<stage dir>/.lock`` for local output roots (``fcntl.flock``; released
    by the OS if the process dies, so a killed run never leaves a stale lock). Two concurrent
    runs on the same output root would otherwise race to publish the same items; the second
    one fails at once with :class:`StageLocked` naming the holder. Remote roots (S3) have no
    lock: run one job per output prefix there.

    The holder removes the lock file when it leaves, while still holding the lock. A run that
    opened the file just before may then lock the removed file: after locking, the file at the
    path is checked to be the one locked (same inode), else it is opened afresh, so two runs
    never both hold "the" lock."""
    if not storage.is_local(sdir):
        yield
        return
    import fcntl
    import json
    import socket

    _, local_dir = storage.filesystem(sdir)  # a file:// URL -> its plain local path
    path = Path(local_dir) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fh = open(path, "a+")  # noqa: SIM115 (held open until the lock is released)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown process"
            fh.close()
            raise StageLocked(
                f"{sdir} is being written by another run ({holder}); wait for it or use another --out"
            ) from None
        except BaseException:
            fh.close()
            raise
        if _same_file(fh.fileno(), path):
            break
        fh.close()  # locked a lock file its holder had just removed: try the current one
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                }
            )
        )
        fh.flush()
        yield
    finally:
        path.unlink(missing_ok=True)  # still locked: nobody else can be using it
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def run_stage(
    stage: Stage,
    config: Any,
    manifest: pa.Table,
    out: str,
    options: RunOptions | None = None,
    on_item: ItemCallback | None = None,
) -> StageReport:
    """Run ``stage`` over every row of ``manifest``, resuming from earlier runs under ``out``.

    Requires Ray to be initialised (see ``pipelines.ray_session``). Per-item failures never fail
    the job: they are status rows. Returns a ``StageReport``; the compiled tables are at
    ``report.status_uri`` and ``report.results_uri``. ``on_item(uid, status)`` is called in
    this process once per object the run finishes (not for those skipped as done), as it
    finishes; the progress display (``options.progress``) advances with it.
    """
    (report,) = run_stages([(stage, config)], manifest, out, options, on_item)
    return report


def run_stages(
    steps: list[Step],
    manifest: pa.Table,
    out: str,
    options: RunOptions | None = None,
    on_item: ItemCallback | None = None,
) -> list[StageReport]:
    """Run several stages over ``manifest`` as one job: each object goes through every stage
    in order (``(stage, config)`` pairs) in the same worker before the next object starts,
    so a later stage reads what an earlier one published for it, and each worker process
    starts, imports and sets up once for all of them.

    Each stage keeps everything :func:`run_stage` gives it: its config file, lock, part files,
    status and result tables, published items and resume rules; a stage of an object that
    the driver finds done is skipped in the worker only if its item hash still holds after the
    earlier stages ran (an earlier stage that redid the object changes a later one's inputs).
    Returns one report per stage (their ``seconds`` are the whole job's). ``on_item(uid,
    status)`` is called once per object, with the worst of its stages' statuses.
    """
    options = options or RunOptions()
    sdirs = [stage_dir(out, stage) for stage, _ in steps]
    try:
        with contextlib.ExitStack() as locks:
            for sdir in sdirs:
                storage.makedirs(storage.join(sdir, "parts"))
                locks.enter_context(stage_lock(sdir))
            return _run_stages_locked(steps, manifest, out, options, on_item)
    except storage.StorageFault:
        raise
    except Exception as e:
        # A full / read-only output root is named as such (exit 2), however deep Ray wrapped it.
        fault = storage.storage_fault(e, sdirs[0])
        if fault is None:
            raise
        raise fault from e


def _clean_run_leftovers(
    stage: Stage, out: str, run_id: str, uids: Iterable[str], scratch_dir: str | None
) -> None:
    """Remove what an aborted or finished run may leave: this run's local scratch folders and
    staging copies of its items (``<item_output>/.staging/<uid>.<hex>``; we hold the lock)."""
    root = Path(scratch_dir or tempfile.gettempdir())
    for leftover in root.glob(f"imesh-{run_id}-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if stage.item_output is None:
        return
    staging = storage.join(out, stage.item_output, storage.STAGING_DIR)
    if not storage.exists(staging):
        return
    fs, path = storage.filesystem(staging)
    wanted = set(uids)
    for name in fs.ls(path, detail=False):
        base = name.rstrip("/").rsplit("/", 1)[-1]
        if base.rsplit(".", 1)[0] in wanted:
            fs.rm(name, recursive=True)
    with contextlib.suppress(OSError):
        if not fs.ls(path, detail=False):
            fs.rmdir(path)


@dataclasses.dataclass
class _StagePlan:
    """What the driver found for one stage before a run."""

    chash: str
    done: dict[str, str]
    """uid -> item hash of the objects done (latest row ok with the current item hash)."""
    tries: collections.Counter[str]
    """uid -> rows ever written (attempts so far)."""


def _plan(
    stage: Stage, config: Any, out: str, rows_by_uid: dict[str, dict[str, Any]]
) -> _StagePlan:
    write_resolved_config(config, storage.join(stage_dir(out, stage), "config.yaml"))
    chash = config_hash(config)
    history = read_parts(out, stage)
    latest = latest_rows(history, list(rows_by_uid))
    done = {}
    for u, s, h in zip(
        latest["uid"].to_pylist(),
        latest["status"].to_pylist(),
        latest["config_hash"].to_pylist(),
        strict=True,
    ):
        if s == "ok" and h == item_hash(stage, chash, rows_by_uid[u], config):
            done[u] = h
    return _StagePlan(chash, done, collections.Counter(history["uid"].to_pylist()))


def _run_stages_locked(
    steps: list[Step],
    manifest: pa.Table,
    out: str,
    options: RunOptions,
    on_item: ItemCallback | None,
) -> list[StageReport]:
    t0 = time.perf_counter()
    manifest = validate_manifest(manifest)
    rows_by_uid = {row["uid"]: row for row in manifest.to_pylist()}
    plans = [_plan(stage, config, out, rows_by_uid) for stage, config in steps]
    todo = [
        (row, [(p.tries[row["uid"]] + 1, p.done.get(row["uid"])) for p in plans])
        for row in rows_by_uid.values()
        if any(row["uid"] not in p.done for p in plans)
    ]
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    shards = list(_shards(todo, max(1, options.shard_size)))
    returned: set[int] = set()
    todo_uids = [row["uid"] for row, _ in todo]
    desc = " + ".join(stage.name for stage, _ in steps)
    feed = _ItemFeed(StageProgress(desc, len(todo), enabled=options.progress), on_item)
    try:
        computed = _map_shards(steps, out, options, run_id, shards, returned, feed)
        lost = [item for i, s in enumerate(shards) if i not in returned for item in s]
        for k, ((stage, _), plan) in enumerate(zip(steps, plans, strict=True)):
            # a stage the driver found done writes no row; the others lost their worker
            stage_lost = [(row, p[k][0]) for row, p in lost if p[k][1] is None]
            if stage_lost:
                _write_lost_rows(stage, plan.chash, out, run_id, stage_lost)
                computed[k] += len(stage_lost)
        for row, _ in lost:
            feed.report(row["uid"], "failed")
    except BaseException as e:
        feed.progress.close()
        for stage, _ in steps:
            _clean_run_leftovers(stage, out, run_id, todo_uids, options.scratch_dir)
        fault = storage.storage_fault(e, storage.join(out, steps[0][0].item_output or desc))
        if fault is not None and fault is not e:
            raise fault from e
        raise
    feed.progress.close()
    for stage, _ in steps:
        _clean_run_leftovers(stage, out, run_id, todo_uids, options.scratch_dir)
    return [
        compile_stage(
            stage,
            manifest,
            out,
            skipped_done=len(rows_by_uid) - processed,
            processed=processed,
            t0=t0,
        )
        for (stage, _), processed in zip(steps, computed, strict=True)
    ]


class _ItemFeed:
    """Reports each object of a run once, whichever comes first: the worker's progress event or
    its shard's summary. Called from the driver's main thread and its progress poller."""

    def __init__(self, progress: StageProgress, on_item: ItemCallback | None) -> None:
        self.progress = progress
        self.on_item = on_item
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    @property
    def wanted(self) -> bool:
        """Whether anybody looks at per-object events (else no inbox actor is started)."""
        return self.progress.enabled or self.on_item is not None

    def report(self, uid: str, status: str) -> None:
        with self._lock:
            if uid in self._seen:
                return
            self._seen.add(uid)
            self.progress.advance(status)
            if self.on_item is not None:
                self.on_item(uid, status)


def _poll_inbox(inbox: Any, feed: _ItemFeed, stop: threading.Event) -> None:
    """Driver thread: hand the workers' events to ``feed`` until ``stop`` is set."""
    import ray

    while not stop.wait(PROGRESS_POLL_S):
        try:
            events = ray.get(inbox.take.remote(), timeout=10 * PROGRESS_POLL_S + 10)
        except (ray.exceptions.RayError, TimeoutError) as e:
            # Only the display's timeliness depends on the inbox: the shard summaries still
            # report every object.
            log.warning("per-object progress stopped (%s); progress moves per shard", e)
            return
        for uid, status in events:
            feed.report(uid, status)


def _map_shards(
    steps: list[Step],
    out: str,
    options: RunOptions,
    run_id: str,
    shards: list[list[Any]],
    returned: set[int],
    feed: _ItemFeed,
) -> list[int]:
    """Run the shards on a Ray Data actor pool; ``returned`` collects the finished shard ids,
    ``feed`` gets every finished object. Returns, per stage, how many items the workers
    computed (not found done or published)."""
    import ray
    import ray.data

    computed = [0] * len(steps)
    if not shards:
        return computed
    ds = ray.data.from_items(
        [{"shard": i, "payload": pickle.dumps(s)} for i, s in enumerate(shards)],
        override_num_blocks=len(shards),
    )
    num_cpus = max(stage.num_cpus for stage, _ in steps)
    num_gpus = max(stage.num_gpus for stage, _ in steps)
    workers = min(_workers_for(num_cpus, num_gpus, options.workers), len(shards))
    # Per-object events only matter when a shard holds several objects and someone looks.
    per_object = feed.wanted and any(len(s) > 1 for s in shards)
    inbox: Any = ray.remote(num_cpus=0)(ProgressInbox).remote() if per_object else None
    mapped = ds.map_batches(
        _bound_worker(steps, out, run_id, options.scratch_dir, options.item_timeout_s, inbox),
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=num_cpus,
        num_gpus=num_gpus or None,
    )
    stop = threading.Event()
    poller = None
    if inbox is not None:
        poller = threading.Thread(
            target=_poll_inbox, args=(inbox, feed, stop), name="imesh-progress", daemon=True
        )
        poller.start()
    try:
        for summary in mapped.iter_rows():
            if summary["fault"]:
                raise storage.StorageFault(str(summary["fault"]))
            returned.add(int(summary["shard"]))
            for k, (n_computed, _) in enumerate(pickle.loads(summary["counts"])):
                computed[k] += n_computed
            for uid, status in pickle.loads(summary["items"]):
                feed.report(uid, status)
    finally:
        stop.set()
        if poller is not None:
            poller.join()
        if inbox is not None:
            ray.kill(inbox)
    return computed


def _write_lost_rows(
    stage: Stage, chash: str, out: str, run_id: str, items: list[tuple[dict[str, Any], int]]
) -> None:
    """Items whose worker died without returning their shard: record them as failed."""
    now = dt.datetime.now(dt.UTC)
    rows = [
        {
            "uid": item["uid"],
            "stage": stage.name,
            "status": "failed",
            "error_type": "WorkerLost",
            "error": "the worker processing this item's shard died (crash, OOM or node loss)",
            "seconds": None,
            "attempt": attempt,
            "output_uri": None,
            "config_hash": chash,
            "run_id": run_id,
            "finished_at": now,
        }
        for item, attempt in items
    ]
    url = storage.join(stage_dir(out, stage), "parts", f"part-{run_id}-lost.parquet")
    write_parquet(pa.Table.from_pylist(rows, schema=_result_schema_with_status(stage)), url)


def error_histogram(status: pa.Table, top: int = 10) -> list[tuple[str, int]]:
    """Failed rows bucketed by error type and the start of the message, most frequent first."""
    failed = status.filter(pc.equal(status["status"], "failed"))
    keys = [
        f"{t}: {_bucket(m)}"
        for t, m in zip(failed["error_type"].to_pylist(), failed["error"].to_pylist(), strict=True)
    ]
    return collections.Counter(keys).most_common(top)


_PATHLIKE = re.compile(r"(\S*/\S+|\b[0-9a-f]{32}\b)")


def _bucket(message: str | None) -> str:
    """An error message with paths and uids masked, so equal causes fall in one bucket."""
    first = (message or "").splitlines()[0] if message else ""
    masked = _PATHLIKE.sub("<path>", first)
    return masked if len(masked) <= 100 else masked[:99] + "…"


def compile_stage(
    stage: Stage,
    manifest: pa.Table,
    out: str,
    *,
    skipped_done: int = 0,
    processed: int = 0,
    t0: float | None = None,
) -> StageReport:
    """Compile ``status.parquet`` (one row per manifest uid) and ``results.parquet``."""
    sdir = stage_dir(out, stage)
    uids = manifest["uid"].to_pylist()
    latest = latest_rows(read_parts(out, stage), uids)
    status = latest.select(list(STATUS_COLUMNS))
    status_uri = storage.join(sdir, "status.parquet")
    results_uri = storage.join(sdir, "results.parquet")
    write_parquet(status, status_uri)
    ok = latest.filter(pc.equal(latest["status"], "ok"))
    result_cols = ["uid"] + [n for n in stage.result_schema.names if n != "uid"]
    write_parquet(ok.select(result_cols), results_uri)
    counts = collections.Counter(status["status"].to_pylist())
    missing = len(set(uids) - set(status["uid"].to_pylist()))
    if missing:
        counts["missing"] = missing
    return StageReport(
        stage=stage.name,
        out=out,
        total=len(uids),
        skipped_done=skipped_done,
        processed=processed,
        counts=dict(counts),
        errors=error_histogram(status),
        seconds=time.perf_counter() - t0 if t0 is not None else 0.0,
        status_uri=status_uri,
        results_uri=results_uri,
    )
