"""File and URL helpers over fsspec: one code path for local paths and object-store URLs.

Every location the project reads or writes is a URL string: a local path (``/data/out``) or a
``scheme://`` URL (``s3://bucket/prefix``, ``memory://x`` in tests). These few functions are the
only implementation of joining, probing, reading and atomically writing such URLs; the job
layer's storage module (publish protocol, markers) and the run records of the evaluation
library both use them. They live here, in the lowest library package, because the libraries
never import the job layer, and ``rendering`` is the package every other one already builds on.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

import fsspec
from fsspec import AbstractFileSystem

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "atomic_write_bytes",
    "exists",
    "filesystem",
    "is_local",
    "is_local_fs",
    "join",
    "parquet_from_bytes",
    "read_bytes",
]


def filesystem(url: str) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem of ``url`` and the path inside it."""
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def is_local_fs(fs: AbstractFileSystem) -> bool:
    """True when ``fs`` is the local filesystem (rename is ``os.replace`` there)."""
    proto = fs.protocol
    return "file" in ((proto,) if isinstance(proto, str) else tuple(proto))


def is_local(url: str) -> bool:
    """True when ``url`` is a local path (or a ``file://`` URL)."""
    return is_local_fs(filesystem(url)[0])


def join(base: str, *parts: str) -> str:
    """Join URL/path components with '/' (local paths and ``scheme://`` URLs alike); empty
    parts and the slashes around each part are dropped."""
    out = base.rstrip("/")
    for part in parts:
        part = part.strip("/")
        if part:
            out = f"{out}/{part}"
    return out


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return bool(fs.exists(path))


def read_bytes(url: str) -> bytes:
    """The content of the file at ``url`` (FileNotFoundError when absent)."""
    fs, path = filesystem(url)
    with fs.open(path, "rb") as f:
        data: bytes = f.read()
    return data


def parquet_from_bytes(data: bytes, columns: Sequence[str] | None = None) -> pa.Table:
    """A Parquet file's bytes -> its table (``columns``: only these), decoded from Arrow memory.

    Every Parquet read of the project goes through here, never through a Python file object,
    ``BytesIO`` or ``bytes`` handed to pyarrow: such a read can leave a reader on one of Arrow's
    pool threads that drops its Python buffer only after ``read_table`` returned, and when the
    interpreter is exiting by then the process aborts ("terminate called without an active
    exception", exit 134 instead of the command's own code; apache/arrow#34314). Measured with
    pyarrow 23 on a 6-row manifest: 14 of 20 scripts that read it from a file object and exit
    aborted, 0 of 20 reading it from a copy in an Arrow buffer (which holds no Python object).
    """
    import pyarrow as pa  # here: the other helpers are imported where pyarrow is not needed
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    sink.write(data)
    return pq.read_table(pa.BufferReader(sink.getvalue()), columns=columns)


def atomic_write_bytes(url: str, data: bytes) -> None:
    """Write ``data`` to ``url`` so that readers see either nothing or the whole file.

    The bytes go to a uniquely named temporary sibling first and are then renamed into place
    (an ``os.replace`` locally; a single object PUT/copy on object stores). Parent folders are
    created.
    """
    fs, path = filesystem(url)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    try:
        if is_local_fs(fs):
            os.replace(tmp, path)
        else:
            fs.mv(tmp, path)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)
