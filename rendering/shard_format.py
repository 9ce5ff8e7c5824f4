"""WebDataset tar shards of rendered objects: the format contract (writer and readers share it).

``imesh shards`` (``pipelines.shards``) packs a finished render stage into shards; the training
datasets read them. Both sides use this module, which is plain Python (no Ray, no pipelines).

**Shards.** ``shard-000000.tar``, ``shard-000001.tar``, ... (:data:`SHARD_PATTERN`) in one
folder (local or an fsspec URL). Each is a POSIX tar (``tarfile.PAX_FORMAT``: plain ustar
headers; a member name longer than 100 bytes or not ASCII gets a PAX ``path`` record) written
by :func:`write_shard`: every member a regular file with mtime 0, uid/gid 0, uname/gname ``""``
and mode ``0o644``, so the same input gives byte-identical tars. One **sample per object**;
objects are in ascending uid order (Python ``str`` order, i.e. by code point) across the whole
set: shard ``n`` holds the objects after those of shard ``n - 1``. A shard closes after
``--shard-size`` objects (default 256) or before its tar would exceed ``--max-bytes`` (a single
object larger than that gets a shard of its own); :func:`member_tar_bytes` and
:func:`shard_tar_bytes` give the exact tar size used for that decision.

**Keys.** A sample's key (WebDataset's ``__key__``) is the object's uid made safe by
:func:`encode_key`: ``%``, ``.``, ``/`` and every non-printable character become ``%XX`` (the
character's UTF-8 bytes, upper-case hex); everything else is kept (uids are NFC unicode letters,
digits, ``_``, ``-``, ``.``: see ``rendering.uids``). WebDataset splits a member name at the
first dot of its base name, so a key must hold no ``.`` (uids may) and no ``/``.
:func:`decode_key` inverts it exactly. Example: uid ``chair.v2`` -> key ``chair%2Ev2``.

**Members.** ``<key>.<file name>`` (:func:`member_name`; :func:`split_member` inverts it) for
each file of the object's render folder, bytes unchanged (PNGs are not re-encoded), members of
a sample in ascending file-name order. Which files: :func:`layout_members` (the layouts'
per-view files from ``rendering.output_layouts``, plus ``cameras.npz`` and ``render.json``):

- ``instantmesh32`` (``rendering_random_32views/<uid>/``): ``NNN.png``, ``NNN_depth.png``,
  ``NNN_depth16.png``, ``NNN_normal.png`` for NNN = 000 .. views-1 (32 by default),
  ``cameras.npz``, ``render.json``;
- ``zero123pp`` (``rendering_zero123plus/<uid>/``): ``000.png`` .. ``006.png``,
  ``cameras.npz``, ``render.json``.

The ``eval`` layout has sub-folders and is not sharded. The publish marker ``_SUCCESS.json`` of
an object folder is not a member.

**Index.** ``index.parquet`` beside the shards (:data:`INDEX_SCHEMA`): one row per member,
ordered by shard then offset: ``shard`` (file name), ``uid``, ``key``, ``member`` (the tar member
name), ``offset`` (byte offset of the member's data from the start of its tar: read ``size``
bytes there for random access without tar parsing), ``size``, ``sha256`` (hex, of the data).

**Completion.** ``_SUCCESS.json`` (:data:`SUCCESS_NAME`) is written last, only when every shard
of the set is published: counts (shards, objects, members, bytes), layout, the members of a
sample, the source render stage (URL, status table), the shard-size policy, each shard's size
and SHA-256, the config hash and provenance. A reader that finds no ``_SUCCESS.json`` is
looking at an unfinished (or partly failed) set. Shards are never visible half-written: each is
written under a temporary name (``<name>.tmp-<hex>``) and renamed into place.
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import BinaryIO, Final, cast

import pyarrow as pa

from rendering.output_layouts import VIEW_FILE_SUFFIXES, layout_spec, view_sets

SHARD_PATTERN = "shard-%06d.tar"
"""File name of shard ``n`` (``SHARD_PATTERN % n``)."""
SHARD_GLOB = "shard-*.tar"
INDEX_NAME = "index.parquet"
SUCCESS_NAME = "_SUCCESS.json"
SHARD_LAYOUTS: tuple[str, ...] = ("instantmesh32", "zero123pp")
"""Layouts whose object folders are flat, hence shardable."""
OBJECT_FILES: tuple[str, ...] = ("cameras.npz", "render.json")
"""Per-object files beside the per-view PNGs (``rendering.output_layouts``)."""

TAR_FORMAT: Final = tarfile.PAX_FORMAT
TAR_ENCODING = "utf-8"
MEMBER_MODE = 0o644
BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE

INDEX_SCHEMA = pa.schema(
    [
        pa.field("shard", pa.string(), nullable=False),
        pa.field("uid", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("member", pa.string(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("size", pa.int64(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
    ]
)

_ESCAPED = frozenset("%./")
_KEY_RE = re.compile(r"(?:[^%./]|%[0-9A-F]{2})+")


class ShardFormatError(ValueError):
    """A key, member name or layout that does not follow the shard format."""


def shard_name(index: int) -> str:
    """``shard-000042.tar`` for ``index`` 42."""
    if index < 0:
        raise ShardFormatError(f"shard index must be >= 0, got {index}")
    return SHARD_PATTERN % index


def encode_key(uid: str) -> str:
    """The WebDataset key of ``uid``: ``%``, ``.``, ``/`` and non-printable characters as
    ``%XX`` per UTF-8 byte (upper-case hex), everything else unchanged."""
    if not uid:
        raise ShardFormatError("an empty uid has no key")
    out = []
    for ch in uid:
        if ch in _ESCAPED or not ch.isprintable():
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass")))
        else:
            out.append(ch)
    return "".join(out)


def decode_key(key: str) -> str:
    """The uid behind ``key`` (inverse of :func:`encode_key`); a malformed key raises."""
    if not _KEY_RE.fullmatch(key):
        raise ShardFormatError(
            f"{key!r} is not a shard key (no '.', '/'; '%' only as %XX, upper-case hex)"
        )
    raw = bytearray()
    i = 0
    while i < len(key):
        if key[i] == "%":
            raw.append(int(key[i + 1 : i + 3], 16))
            i += 3
        else:
            raw += key[i].encode("utf-8", "surrogatepass")
            i += 1
    try:
        uid = raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as e:
        raise ShardFormatError(f"{key!r}: escapes are not UTF-8 ({e.reason})") from e
    if encode_key(uid) != key:
        raise ShardFormatError(f"{key!r} is not how encode_key writes {uid!r}")
    return uid


def member_name(key: str, file_name: str) -> str:
    """The tar member name of ``file_name`` in the sample ``key``: ``<key>.<file name>``."""
    if not _KEY_RE.fullmatch(key):
        raise ShardFormatError(f"{key!r} is not a shard key (see encode_key)")
    if not file_name or "/" in file_name:
        raise ShardFormatError(f"{file_name!r} is not a file name of an object folder")
    return f"{key}.{file_name}"


def split_member(name: str) -> tuple[str, str]:
    """``(key, file name)`` of a tar member name (inverse of :func:`member_name`)."""
    key, dot, file_name = name.partition(".")
    if not dot or not file_name or "/" in name or not _KEY_RE.fullmatch(key):
        raise ShardFormatError(f"{name!r} is not a shard member name (<key>.<file name>)")
    return key, file_name


def layout_members(layout: str, views: int = 32) -> tuple[str, ...]:
    """The file names every sample of ``layout`` holds, sorted (the tar's member order).

    ``views``: number of training views of ``instantmesh32`` (``imesh render --views``); the
    ``zero123pp`` layout always has its condition view and six targets."""
    if layout not in SHARD_LAYOUTS:
        raise ShardFormatError(
            f"layout {layout!r} cannot be sharded; choose one of {list(SHARD_LAYOUTS)}"
        )
    spec = layout_spec(layout, views=views)
    names = list(OBJECT_FILES)
    for vs in view_sets(spec, "layout-members"):  # stems do not depend on the uid
        names += [f"{s}{x}.png" for s in vs.file_names for x in VIEW_FILE_SUFFIXES[layout]]
    return tuple(sorted(names))


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = MEMBER_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def _header(name: str, size: int) -> bytes:
    return _tar_info(name, size).tobuf(TAR_FORMAT, TAR_ENCODING, "surrogateescape")


def member_tar_bytes(name: str, size: int) -> int:
    """Bytes a member of ``size`` data bytes takes in a shard: header(s) + padded data."""
    return len(_header(name, size)) + -(-size // BLOCK) * BLOCK


def shard_tar_bytes(members_bytes: int) -> int:
    """Size of a shard whose members take ``members_bytes`` (:func:`member_tar_bytes` summed):
    plus the two zero end blocks, padded to a whole tar record (10240 bytes)."""
    return -(-(members_bytes + 2 * BLOCK) // RECORD) * RECORD


@dataclass(frozen=True)
class MemberRecord:
    """Where one member's data lies in its shard (a row of the index, less the shard)."""

    uid: str
    key: str
    member: str
    offset: int
    size: int
    sha256: str


@dataclass(frozen=True)
class ShardRecord:
    """What :func:`write_shard` wrote."""

    members: list[MemberRecord]
    bytes: int
    sha256: str
    """SHA-256 (hex) of the whole tar."""


class _HashingWriter:
    """A write-only file object that forwards to ``sink`` and hashes and counts what passes."""

    def __init__(self, sink: BinaryIO) -> None:
        self.sink = sink
        self.digest = hashlib.sha256()
        self.written = 0

    def write(self, data: bytes) -> int:
        self.sink.write(data)
        self.digest.update(data)
        self.written += len(data)
        return len(data)

    def tell(self) -> int:
        return self.written


def write_shard(sink: BinaryIO, samples: Iterable[tuple[str, Mapping[str, bytes]]]) -> ShardRecord:
    """Write one shard to the binary file object ``sink`` (from its current position).

    ``samples``: ``(uid, {file name: bytes})`` per object, in the order they go into the tar
    (the stage passes ascending uids); files are written in ascending file-name order. The
    samples are consumed one at a time (a lazy iterable keeps one object in memory). Offsets in
    the returned records count from the start of the tar."""
    out = _HashingWriter(sink)
    records: list[MemberRecord] = []
    with tarfile.open(
        fileobj=cast(BinaryIO, out),
        mode="w",
        format=TAR_FORMAT,
        encoding=TAR_ENCODING,
        errors="surrogateescape",
    ) as tar:
        for uid, files in samples:
            key = encode_key(uid)
            for file_name in sorted(files):
                data = files[file_name]
                name = member_name(key, file_name)
                info = _tar_info(name, len(data))
                offset = tar.offset + len(_header(name, len(data)))
                tar.addfile(info, io.BytesIO(data))
                records.append(
                    MemberRecord(
                        uid=uid,
                        key=key,
                        member=name,
                        offset=offset,
                        size=len(data),
                        sha256=hashlib.sha256(data).hexdigest(),
                    )
                )
    return ShardRecord(members=records, bytes=out.written, sha256=out.digest.hexdigest())
