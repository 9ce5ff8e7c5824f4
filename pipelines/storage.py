"""fsspec-backed storage: one code path for local directories and object stores (``s3://``).

Every output location in the project is a URL string. Local paths (``/data/out``) and remote
URLs (``s3://bucket/prefix``, ``memory://x`` in tests) go through the same functions here.

Atomic publish protocol (used for every item that a job writes):

1. the item's files are produced in a local scratch directory;
2. they are validated there (by the stage);
3. they are copied to a *staging* location next to the final one (``<parent>/.staging/...``);
4. any leftover partial final directory (from a killed run: no marker) is removed;
5. staging is moved to the final location;
6. the completion marker ``_SUCCESS.json`` is written **last**, itself atomically.

A reader treats an item as done only when its marker exists. Killing a job at any point
therefore leaves either no marker (the item is redone on the next run) or a complete item.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rendering.uids import UnsafeUidError as UnsafeUidError  # the one uid check (re-exported)
from rendering.uids import check_uid as check_uid
from rendering.urls import atomic_write_bytes, filesystem, is_local_fs, join, read_bytes
from rendering.urls import exists as exists  # the job layer's names for the shared helpers
from rendering.urls import is_local as is_local

MARKER_NAME = "_SUCCESS.json"
STAGING_DIR = ".staging"

# uids become path components: check_uid (rendering.uids) keeps them to a conservative alphabet
# so that no uid can escape the output root (no separators, no "..", no leading dot, bounded
# length).


def makedirs(url: str) -> None:
    fs, path = filesystem(url)
    fs.makedirs(path, exist_ok=True)


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def atomic_write_text(url: str, text: str) -> None:
    atomic_write_bytes(url, text.encode("utf-8"))


def list_files(url: str, suffix: str = "") -> list[str]:
    """Full URLs of the files directly under ``url`` whose names end with ``suffix`` (sorted)."""
    fs, path = filesystem(url)
    if not fs.exists(path):
        return []
    local = is_local_fs(fs)
    out = []
    for name in fs.ls(path, detail=False):
        base = name.rstrip("/").rsplit("/", 1)[-1]
        if base.endswith(suffix) and not base.startswith(".") and ".tmp-" not in base:
            out.append(name if local else fs.unstrip_protocol(name))
    return sorted(out)


def marker_url(item_url: str) -> str:
    return join(item_url, MARKER_NAME)


def read_marker(item_url: str) -> dict[str, Any] | None:
    """The completion marker of a published item, or ``None`` if the item is not complete."""
    url = marker_url(item_url)
    fs, path = filesystem(url)
    if not fs.exists(path):
        return None
    try:
        payload: dict[str, Any] = json.loads(read_text(url))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # a marker that does not parse does not count as done
    return payload


class StorageFault(RuntimeError):
    """A fault of the machine, not of an item: the output or scratch storage is full, over
    quota or read-only. It stops the job (exit 2) naming the device, the path and, when known,
    the bytes needed; re-running after fixing it resumes."""


MACHINE_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
}
"""OSError numbers that are faults of the storage, never of one item."""


def current_umask() -> int:
    """The process umask, read without changing it (``/proc``; a set-and-restore fallback)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(root: str | Path) -> None:
    """Give ``root`` and everything under it the modes that the umask gives new files and
    folders (``tempfile`` creates 0700/0600: published outputs on shared storage must be
    readable by the other users and jobs that the umask admits)."""
    mask = current_umask()
    root = Path(root)
    os.chmod(root, 0o777 & ~mask)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o777 & ~mask)
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if not os.path.islink(p):
                execute = st.st_mode & 0o111
                os.chmod(p, (0o666 | (0o111 if execute else 0)) & ~mask)


def _mount_of(path: str) -> tuple[str, str, str]:
    """(mount point, device, filesystem type) of the local ``path`` (best effort)."""
    p = os.path.abspath(path)
    while not os.path.exists(p) and p != os.path.dirname(p):
        p = os.path.dirname(p)
    p = os.path.realpath(p)
    best = ("/", "?", "?")
    try:
        with open("/proc/self/mounts") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mnt = fields[1].replace("\\040", " ")
                inside = p == mnt or p.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best[0]):
                    best = (mnt, fields[0], fields[2])
    except OSError:
        pass
    return best


def _size_text(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def storage_fault(
    error: BaseException, path: str | os.PathLike[str] | None = None, needed: int | None = None
) -> StorageFault | None:
    """A :class:`StorageFault` for ``error`` when it (or an exception it wraps: ``__cause__``,
    ``__context__``, Ray's ``cause``) is one already, or an ``OSError`` whose errno is a fault
    of the storage (full, over quota, read-only); ``None`` for anything else."""
    seen: set[int] = set()
    todo: list[BaseException] = [error]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, StorageFault):
            inner = getattr(e, "cause", None)  # Ray's wrapper class subclasses the original
            if type(e) is not StorageFault and isinstance(inner, StorageFault):
                todo.append(inner)
                continue
            return e if type(e) is StorageFault else StorageFault(str(e).strip().splitlines()[-1])
        if isinstance(e, OSError) and e.errno in MACHINE_ERRNOS:
            return _describe_fault(e, path, needed)
        for inner in (getattr(e, "cause", None), e.__cause__, e.__context__):
            if isinstance(inner, BaseException):
                todo.append(inner)
    return None


def _describe_fault(e: OSError, path: Any, needed: int | None) -> StorageFault:
    where = str(e.filename or path or "?")
    reason = MACHINE_ERRNOS.get(e.errno or 0, "storage fault")
    if "://" in where:
        return StorageFault(f"{reason} writing {where}")
    mount, device, fstype = _mount_of(where)
    detail = f"filesystem {mount} ({fstype} on {device}"
    if e.errno != errno.EROFS:
        try:
            free: int | None = shutil.disk_usage(mount).free
        except OSError:
            free = None
        if free is not None:
            detail += f", {_size_text(free)} free"
        if needed is not None:
            detail += f", {_size_text(needed)} needed"
    detail += ")"
    advice = (
        "choose a writable output root (--out)"
        if e.errno == errno.EROFS
        else "free space and re-run the same command to resume"
    )
    return StorageFault(f"{reason} writing {where}: {detail}; {advice}")


def clean_staging(url: str) -> None:
    """Remove the ``.staging/`` leftovers under the item folder ``url`` (call only while no
    other run writes there, i.e. under the stage lock)."""
    remove(join(url, STAGING_DIR))


def publish_dir(local_dir: str | Path, final_url: str, marker: Mapping[str, Any]) -> None:
    """Publish a validated local directory to ``final_url`` atomically (marker written last).

    ``local_dir`` is consumed (moved or deleted). If ``final_url`` holds a previous partial
    attempt (no marker) it is replaced; a complete previous attempt is replaced as well, since
    the caller decided to redo the item.
    """
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise FileNotFoundError(f"nothing to publish: {local_dir} is not a directory")
    fs, final_path = filesystem(final_url)
    parent, name = final_path.rstrip("/").rsplit("/", 1)
    staging = f"{parent}/{STAGING_DIR}/{name}.{uuid.uuid4().hex}"
    fs.makedirs(f"{parent}/{STAGING_DIR}", exist_ok=True)
    files = {
        str(p.relative_to(local_dir)): p.stat().st_size
        for p in sorted(local_dir.rglob("*"))
        if p.is_file()
    }
    local = is_local_fs(fs)
    try:
        if local:
            honour_umask(local_dir)
            needed = sum(files.values())
            if os.stat(local_dir).st_dev != os.stat(parent).st_dev:
                free = shutil.disk_usage(parent).free
                if needed > free:  # refuse before copying: no half-written staging folder
                    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), final_path)
                    fault = storage_fault(full, needed=needed)
                    assert fault is not None
                    raise fault
            shutil.move(str(local_dir), staging)
        else:
            fs.put(str(local_dir), staging, recursive=True)
            shutil.rmtree(local_dir, ignore_errors=True)
    except BaseException as e:
        # Never leave a partial copy (0-byte files of a full disk) in the staging folder.
        if fs.exists(staging):
            fs.rm(staging, recursive=True)
        fault = storage_fault(e, final_path, sum(files.values()))
        if fault is not None and fault is not e:
            raise fault from e
        raise
    if fs.exists(final_path):
        fs.rm(final_path, recursive=True)
    if local:
        os.replace(staging, final_path)
    else:
        fs.mv(staging, final_path, recursive=True)
    payload = {**dict(marker), "files": files}
    atomic_write_text(marker_url(final_url), json.dumps(payload, sort_keys=True, default=str))


def remove(url: str) -> None:
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def local_path(url: str, scratch_dir: str | Path | None = None) -> tuple[Path, bool]:
    """A local filesystem path with the content of ``url``.

    Local URLs are returned as they are; remote ones are downloaded into ``scratch_dir`` (or the
    system temp dir). Returns ``(path, is_temporary)``; the caller deletes temporary copies.
    """
    fs, path = filesystem(url)
    if is_local_fs(fs):
        return Path(path), False
    import tempfile

    suffix = Path(path).suffix
    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=str(scratch_dir) if scratch_dir else None)
    os.close(fd)
    fs.get(path, tmp)
    return Path(tmp), True
