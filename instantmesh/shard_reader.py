"""Reading rendered objects for training: tar shards or object folders, split without duplicates.

The shard format (``imesh shards``) is defined in :mod:`rendering.shard_format`: plain tar files
``shard-NNNNNN.tar``, one sample per object, members ``<key>.<file name>`` holding the object
folder's files unchanged, ``index.parquet`` and ``_SUCCESS.json`` beside them. This module reads
that format **without** the ``webdataset`` package: :func:`iter_tar` streams one tar with
:mod:`tarfile` over an fsspec file (local paths, ``s3://``, ``memory://`` ...) in one forward
pass (tarfile's seekable mode, which reads member data straight from the file: its pure stream
mode ``r|`` copies through a 10 KiB buffer and ran at a third of the speed).

Pieces:

- :class:`TarSample` / :class:`FolderSample`: one object's files, read from a shard or from its
  render folder; ``read(name)`` raises a :class:`SampleError` that names the uid, the shard
  (or folder) and the member.
- :class:`Split` / :func:`current_split`: which share of the data this process reads: the
  (rank, DataLoader worker) pair, from explicit ``rank`` / ``world_size`` or from
  ``torch.distributed`` when it is initialised, and ``torch.utils.data.get_worker_info()``.
- :class:`ShardReader`: the samples of a shard set for one split. Shards are dealt
  round-robin over the ``world_size x num_workers`` splits (``split="shard"``): every shard is
  read by exactly one split, so the union over splits is every sample once. With fewer shards
  than splits that would leave splits idle, so ``split="auto"`` (default) switches to
  ``"sample"``: every split streams every shard and keeps every ``total``-th sample (no
  duplicates, no loss, balanced to one sample, at ``total`` times the read traffic).
- :class:`SampleDataset`: the ``torch.utils.data.IterableDataset`` both training datasets
  build on (``instantmesh.lrm_data``, ``instantmesh.zero123pp_data``): one source (a shard set
  or a layout folder), the split above, per-epoch shuffling, and the error policy:
  ``on_error="raise"`` (default) stops at the first bad object with a :class:`SampleError`;
  ``on_error="skip"`` leaves the object out (never substitutes another one), records a
  :class:`SkipRecord` and logs a summary line at the end of each pass; :attr:`SampleDataset.skipped`
  gathers the records of every DataLoader worker (they append to a per-dataset scratch folder).

Balance caveat: shard-level splitting gives each split whole shards, so splits can differ by up
to one shard's worth of samples (ranks then run different numbers of steps: keep the shard count
a multiple of ``world_size x num_workers``, or cap the steps per epoch, for DDP).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
import weakref
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import torch
from PIL import Image

from rendering.shard_format import (
    INDEX_NAME,
    SHARD_GLOB,
    SUCCESS_NAME,
    ShardFormatError,
    decode_key,
    split_member,
)
from rendering.urls import filesystem, join, parquet_from_bytes

logger = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
SplitMode = Literal["auto", "shard", "sample"]
ON_ERROR_CHOICES: tuple[str, ...] = ("raise", "skip")
SPLIT_CHOICES: tuple[str, ...] = ("auto", "shard", "sample")


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class SampleError(Exception):
    """One object could not be read. ``uid`` (``""`` when the shard broke before a key was
    known), ``where`` (shard URL or object folder), ``member`` (file name inside the object, or
    the tar member) and ``cause`` are attributes and all appear in the message.

    Built from a single string (what a DataLoader worker re-raises in the main process) it keeps
    that string as the message.
    """

    def __init__(
        self, uid: str, where: str | None = None, member: str | None = None, cause: str = ""
    ) -> None:
        if where is None and member is None and not cause:
            self.uid, self.where, self.member, self.cause = "", "", "", uid
            self.message = uid
        else:
            self.uid, self.where, self.member, self.cause = uid, where or "", member or "", cause
            who = f"object {uid!r}: " if uid else ""
            what = f"member {member!r} of " if member else ""
            self.message = f"{who}{what}{where}: {cause}"
        super().__init__(self.message)

    def __str__(self) -> str:  # OSError subclasses would otherwise print their errno fields
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.uid, self.where, self.member, self.cause))


class MissingMemberError(SampleError, FileNotFoundError):
    """A file the object must have is absent from its shard sample or folder."""


class CorruptMemberError(SampleError, ValueError):
    """A file is present but unreadable or wrong (truncated PNG, wrong mode/size, bad npz)."""


class ShardError(SampleError, OSError):
    """The shard itself is unreadable from some point on (missing, truncated, not a tar, or not
    in the shard format); the samples after that point are lost."""


# ---------------------------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------------------------


class Sample(Protocol):
    """One object's files, from a shard or a folder."""

    @property
    def uid(self) -> str: ...

    @property
    def where(self) -> str: ...

    def read(self, name: str) -> bytes: ...

    def names(self) -> list[str]: ...


@dataclass(frozen=True)
class TarSample:
    """One object read from a shard: ``members`` maps file names (``000.png``) to bytes."""

    key: str
    uid: str
    shard: str
    members: Mapping[str, bytes]
    position: int
    """0-based position of the sample in its shard."""

    @property
    def where(self) -> str:
        return self.shard

    def read(self, name: str) -> bytes:
        try:
            return self.members[name]
        except KeyError:
            raise MissingMemberError(
                self.uid, self.shard, name, "not in the shard sample"
            ) from None

    def names(self) -> list[str]:
        return sorted(self.members)


@dataclass(frozen=True)
class FolderSample:
    """One object read from its render folder ``<layout dir>/<uid>/`` (local)."""

    uid: str
    folder: Path

    @property
    def where(self) -> str:
        return str(self.folder)

    def read(self, name: str) -> bytes:
        path = self.folder / name
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise MissingMemberError(self.uid, self.where, name, "file not found") from None
        except OSError as e:
            raise CorruptMemberError(
                self.uid, self.where, name, f"unreadable ({type(e).__name__}: {e})"
            ) from e

    def names(self) -> list[str]:
        return sorted(p.name for p in self.folder.iterdir() if p.is_file())


def decode_png(sample: Sample, name: str, modes: Sequence[str]) -> np.ndarray:
    """Member ``name`` of ``sample`` decoded as a PNG in one of ``modes`` (PIL mode names):
    ``(H, W, C)`` uint8 for RGB/RGBA, ``(H, W)`` uint8 (L) or uint16 (I;16). A truncated or
    otherwise undecodable file, or another mode, raises :class:`CorruptMemberError`."""
    data = sample.read(name)
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "PNG":
                raise ValueError(f"format {im.format}, not PNG")
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise CorruptMemberError(
            sample.uid, sample.where, name, f"not a readable PNG ({type(e).__name__}: {e})"
        ) from e
    if mode not in modes:
        raise CorruptMemberError(
            sample.uid, sample.where, name, f"PNG mode {mode!r}, expected one of {list(modes)}"
        )
    return arr


def decode_npz(
    sample: Sample, name: str, keys: Sequence[str], optional: Sequence[str] = ()
) -> dict[str, np.ndarray]:
    """The arrays ``keys`` (and those of ``optional`` present) of the ``.npz`` member ``name``
    (no pickles); a missing key or a damaged archive raises :class:`CorruptMemberError`."""
    data = sample.read(name)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise KeyError(f"keys {missing} absent (has {sorted(npz.files)})")
            return {k: np.asarray(npz[k]) for k in [*keys, *optional] if k in npz.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise CorruptMemberError(
            sample.uid, sample.where, name, f"unreadable npz ({type(e).__name__}: {e})"
        ) from e


# ---------------------------------------------------------------------------------------------
# Shards
# ---------------------------------------------------------------------------------------------


def list_shards(source: str | os.PathLike[str] | Sequence[str]) -> list[str]:
    """The shard URLs of ``source``: a folder (local or URL) -> its ``shard-*.tar`` files in
    name order; a ``.tar`` URL -> itself; a list -> as given. A folder must hold the set's
    ``_SUCCESS.json`` (written last: without it the set is unfinished) and at least one shard."""
    if not isinstance(source, str | os.PathLike):
        urls = [str(u) for u in source]
        if not urls:
            raise FileNotFoundError("no shard URLs given")
        return urls
    url = os.fspath(source)
    if url.endswith(".tar"):
        return [url]
    fs, path = filesystem(url)
    if not fs.exists(join(path, SUCCESS_NAME)):
        raise FileNotFoundError(
            f"{url}: no {SUCCESS_NAME}; the shard set is unfinished (or not a shard folder)"
        )
    found = sorted(fs.glob(join(path, SHARD_GLOB)))
    if not found:
        raise FileNotFoundError(f"{url}: {SUCCESS_NAME} but no {SHARD_GLOB} files")
    names = [p.rsplit("/", 1)[-1] for p in found]
    return [join(url, n) for n in names]


def is_shard_source(source: str | os.PathLike[str] | Sequence[str]) -> bool:
    """True for a list of URLs, a ``.tar`` URL, a remote URL, or a local folder holding
    ``shard-*.tar`` files or a ``_SUCCESS.json`` of a shard set (``index.parquet`` beside it)."""
    if not isinstance(source, str | os.PathLike):
        return True
    url = os.fspath(source)
    if url.endswith(".tar"):
        return True
    fs, path = filesystem(url)
    if "file" not in ((fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)):
        return True
    p = Path(path)
    return p.is_dir() and (any(p.glob(SHARD_GLOB)) or (p / INDEX_NAME).is_file())


def read_success(source: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The shard set's ``_SUCCESS.json`` (None for a list or single-tar source)."""
    url = os.fspath(source)
    if url.endswith(".tar"):
        return None
    fs, path = filesystem(url)
    try:
        with fs.open(join(path, SUCCESS_NAME), "rb") as f:
            data: dict[str, Any] = json.loads(f.read())
    except FileNotFoundError:
        return None
    return data


def iter_tar(url: str, *, storage_options: Mapping[str, Any] | None = None) -> Iterator[TarSample]:
    """Stream the samples of one shard in file order (one forward pass over the file).

    Members are grouped by key (the member name up to its first dot); a member of a key seen
    earlier in the shard (non-contiguous sample), a non-file member, a name outside the format,
    or a tar that ends mid-member (truncated) raises :class:`ShardError` naming the shard and
    the sample being read. Tar end-of-archive blocks mark the end; a shard cut exactly between
    two members cannot be told from a shorter one here: :class:`ShardReader` checks the sample
    count against ``index.parquet`` for that."""
    import fsspec

    key: str | None = None
    uid = ""
    member = ""
    members: dict[str, bytes] = {}
    seen: set[str] = set()
    position = 0
    try:
        with (
            fsspec.open(url, "rb", **dict(storage_options or {})) as f,
            tarfile.open(fileobj=f, mode="r:") as tar,
        ):
            for info in tar:
                member = info.name
                if not info.isfile():
                    raise ShardError(uid, url, member, "tar member is not a regular file")
                try:
                    k, file_name = split_member(member)
                    new_uid = decode_key(k) if k != key else uid
                except ShardFormatError as e:
                    raise ShardError(uid, url, member, str(e)) from e
                if k != key:
                    if key is not None:
                        yield TarSample(key, uid, url, members, position)
                        position += 1
                    if k in seen:
                        raise ShardError(
                            new_uid, url, member, "members of this sample are not contiguous"
                        )
                    key, uid, members = k, new_uid, {}
                    seen.add(k)
                fobj = tar.extractfile(info)
                if fobj is None:  # pragma: no cover - isfile() was checked
                    raise ShardError(uid, url, member, "tar member has no data")
                members[file_name] = fobj.read()
            if key is not None:
                yield TarSample(key, uid, url, members, position)
    except tarfile.TarError as e:
        raise ShardError(uid, url, member, f"unreadable tar ({type(e).__name__}: {e})") from e
    except FileNotFoundError as e:
        raise ShardError("", url, None, "shard file not found") from e


def shard_sample_counts(source: str | os.PathLike[str]) -> tuple[dict[str, int], str] | None:
    """``({shard file name: samples}, where it was read)``: from ``_SUCCESS.json`` (its
    ``shards`` list) or else from ``index.parquet`` beside the shards; None when neither says."""
    url = os.fspath(source)
    if url.endswith(".tar"):
        return None
    marker = read_success(url) or {}
    listed = marker.get("shards")
    if isinstance(listed, list) and all(
        isinstance(s, dict) and "name" in s and "objects" in s for s in listed
    ):
        return {str(s["name"]): int(s["objects"]) for s in listed}, SUCCESS_NAME
    fs, path = filesystem(url)
    index = join(path, INDEX_NAME)
    if not fs.exists(index):
        return None
    with fs.open(index, "rb") as f:
        table = parquet_from_bytes(f.read(), columns=["shard", "key"])
    counts: dict[str, int] = {}
    pairs = set(zip(table["shard"].to_pylist(), table["key"].to_pylist(), strict=True))
    for shard, _ in pairs:
        counts[shard] = counts.get(shard, 0) + 1
    return counts, INDEX_NAME


@dataclass(frozen=True)
class Split:
    """This process's share: rank ``rank`` of ``world_size``, DataLoader worker ``worker`` of
    ``num_workers``. Split ``index`` of ``total`` (ranks major, workers minor)."""

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1

    def __post_init__(self) -> None:
        if not (self.world_size >= 1 and 0 <= self.rank < self.world_size):
            raise ValueError(f"need 0 <= rank < world_size, got {self.rank} / {self.world_size}")
        if not (self.num_workers >= 1 and 0 <= self.worker < self.num_workers):
            raise ValueError(f"need 0 <= worker < num_workers, got {self.worker}")

    @property
    def index(self) -> int:
        return self.rank * self.num_workers + self.worker

    @property
    def total(self) -> int:
        return self.world_size * self.num_workers

    def describe(self) -> str:
        return f"rank {self.rank}/{self.world_size}, worker {self.worker}/{self.num_workers}"


def distributed_rank() -> tuple[int, int] | None:
    """``(rank, world_size)`` of the initialised default ``torch.distributed`` group, or None."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()), int(dist.get_world_size())
    return None


def current_split(rank: int | None = None, world_size: int | None = None) -> Split:
    """The split of the calling process: explicit ``rank`` / ``world_size`` (both or neither),
    else ``torch.distributed`` when initialised, else rank 0 of 1; the DataLoader worker from
    ``torch.utils.data.get_worker_info()`` (worker 0 of 1 in the main process)."""
    if (rank is None) != (world_size is None):
        raise ValueError("pass both rank and world_size, or neither")
    if rank is None or world_size is None:
        rank, world_size = distributed_rank() or (0, 1)
    info = torch.utils.data.get_worker_info()
    worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return Split(int(rank), int(world_size), int(worker), int(num_workers))


def _epoch_rng(seed: int, epoch: int, purpose: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{purpose}|{int(seed)}|{int(epoch)}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _permuted(items: Sequence[str], shuffle: bool, seed: int, epoch: int) -> list[str]:
    """``items`` in a per-epoch order: the same on every rank and worker (same seed, epoch)."""
    if not shuffle:
        return list(items)
    order = _epoch_rng(seed, epoch, "order").permutation(len(items))
    return [items[i] for i in order]


class ShardReader:
    """The :class:`TarSample` s of a shard set that one split reads.

    ``shards``: a shard folder (local path or fsspec URL, holding ``_SUCCESS.json``), one
    ``.tar`` URL, or a list of URLs. ``rank`` / ``world_size``: explicit, or from
    ``torch.distributed`` (see :func:`current_split`); the DataLoader worker is read when
    iterating. ``split``: ``"shard"`` deals whole shards round-robin over the splits,
    ``"sample"`` has every split stream every shard and keep sample ``p`` of shard ``s`` when
    ``(p + s) % total == index``, ``"auto"`` is ``"shard"`` when there are at least as many
    shards as splits and ``"sample"`` otherwise. ``shuffle``: a new shard order every epoch
    (:meth:`set_epoch`; the same on all ranks for a given ``seed``). When the folder has
    ``index.parquet``, a shard that ends with fewer samples than the index lists raises (or is
    reported, see ``on_shard_error``) instead of passing as a shorter shard.
    """

    def __init__(
        self,
        shards: str | os.PathLike[str] | Sequence[str],
        *,
        rank: int | None = None,
        world_size: int | None = None,
        split: SplitMode = "auto",
        shuffle: bool = False,
        seed: int = 0,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        if split not in SPLIT_CHOICES:
            raise ValueError(f"split must be one of {list(SPLIT_CHOICES)}, got {split!r}")
        if (rank is None) != (world_size is None):
            raise ValueError("pass both rank and world_size, or neither")
        self.source = shards if isinstance(shards, str | os.PathLike) else list(shards)
        self.urls = list_shards(shards)
        folder = shards if isinstance(shards, str | os.PathLike) else None
        self.marker = (read_success(folder) if folder is not None else None) or {}
        counted = shard_sample_counts(folder) if folder is not None else None
        self.counts: dict[str, int] | None = counted[0] if counted else None
        """Samples per shard file name (None: unknown, e.g. for a list of URLs)."""
        self.counts_from = counted[1] if counted else ""
        members = self.marker.get("members")
        self.members: tuple[str, ...] = tuple(members) if isinstance(members, list) else ()
        """File names every sample must hold (``_SUCCESS.json`` ``members``; empty: unknown)."""
        self.rank, self.world_size = rank, world_size
        self.split = split
        self.shuffle = shuffle
        self.seed = int(seed)
        self.storage_options = dict(storage_options or {})
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def plan(self, split: Split) -> tuple[list[tuple[int, str]], bool]:
        """``([(shard number, url), ...], sample_level)`` for ``split`` this epoch."""
        number = {u: i for i, u in enumerate(self.urls)}
        numbered = [
            (number[u], u) for u in _permuted(self.urls, self.shuffle, self.seed, self.epoch)
        ]
        per_sample = self.split == "sample" or (
            self.split == "auto" and len(self.urls) < split.total
        )
        if per_sample:
            return numbered, True
        return numbered[split.index :: split.total], False

    def iter_samples(
        self,
        split: Split | None = None,
        on_shard_error: Callable[[ShardError], None] | None = None,
    ) -> Iterator[TarSample]:
        """This split's samples. A :class:`ShardError` is raised, or, with ``on_shard_error``,
        passed to it and the rest of that shard dropped (reading goes on with the next shard).
        In sample-level mode every split meets the same broken shard; only the split that owns
        the sample at the break reports it, so one break is one report."""
        split = split or current_split(self.rank, self.world_size)
        shards, per_sample = self.plan(split)
        for number, url in shards:
            seen, last = 0, ""
            try:
                for sample in iter_tar(url, storage_options=self.storage_options):
                    seen, last = seen + 1, sample.uid
                    if per_sample and (sample.position + number) % split.total != split.index:
                        continue
                    yield sample
                self._check_count(url, seen, last)
            except ShardError as e:
                if on_shard_error is None:
                    raise
                if not per_sample or (seen + number) % split.total == split.index:
                    on_shard_error(e)

    def check_members(self, sample: TarSample) -> None:
        """Raise :class:`MissingMemberError` when ``sample`` lacks a file the set's
        ``_SUCCESS.json`` lists for every sample (even one the dataset does not decode)."""
        missing = [m for m in self.members if m not in sample.members]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise MissingMemberError(
                sample.uid, sample.shard, missing[0], f"not in the shard sample{more}"
            )

    def _check_count(self, url: str, seen: int, last: str) -> None:
        if self.counts is None:
            return
        want = self.counts.get(url.rsplit("/", 1)[-1])
        if want is not None and seen != want:
            after = f" (the last is {last!r})" if last else ""
            raise ShardError(
                "",
                url,
                None,
                f"{seen} samples in the tar{after}, {self.counts_from} lists {want}: "
                "truncated or rewritten",
            )

    def __iter__(self) -> Iterator[TarSample]:
        return self.iter_samples()


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SkipRecord:
    """An object left out by ``on_error="skip"``, and why."""

    uid: str
    where: str
    member: str
    error: str
    """Exception type and message."""
    epoch: int
    rank: int
    worker: int

    @classmethod
    def from_error(cls, e: SampleError, epoch: int, split: Split) -> SkipRecord:
        return cls(
            e.uid, e.where, e.member, f"{type(e).__name__}: {e.cause}", epoch, split.rank,
            split.worker,
        )  # fmt: skip


def _remove_tree(path: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # forked DataLoader workers inherit the finalizer: not theirs
        shutil.rmtree(path, ignore_errors=True)


class SampleDataset(torch.utils.data.IterableDataset[dict[str, Any]]):
    """Objects of one render layout, from a shard set or from the layout's object folders.

    Subclasses set :attr:`layout` / :attr:`layout_dir` and implement :meth:`decode` (one
    sample -> one item dict). ``source``:

    - a shard set: a folder holding ``shard-*.tar`` + ``_SUCCESS.json`` (local or an fsspec
      URL), a ``.tar`` URL, or a list of shard URLs; its ``_SUCCESS.json`` must name the same
      layout;
    - object folders (local): the render output root (holding ``<layout_dir>/``) or the
      ``<layout_dir>`` folder itself; ``uids`` picks and orders them (default: every
      sub-folder holding :attr:`marker_file`, sorted).

    Iterating yields this (rank, worker) split's items (module docstring); object folders are
    dealt round-robin per object. ``shuffle``: a new object / shard order each epoch
    (:meth:`set_epoch`, identical on every rank for one ``seed``). Object folders also allow
    ``len(ds)`` and ``ds[i]`` (always loud: an explicit index has nothing to skip to).
    """

    layout: ClassVar[str] = ""
    layout_dir: ClassVar[str] = ""
    marker_file: ClassVar[str] = ""

    def __init__(
        self,
        source: str | os.PathLike[str] | Sequence[str],
        uids: Sequence[str] | None = None,
        *,
        on_error: OnError = "raise",
        rank: int | None = None,
        world_size: int | None = None,
        split: SplitMode = "auto",
        shuffle: bool = False,
        seed: int = 0,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of {list(ON_ERROR_CHOICES)}, got {on_error!r}")
        if (rank is None) != (world_size is None):
            raise ValueError("pass both rank and world_size, or neither")
        if isinstance(uids, str):
            raise TypeError("uids must be a sequence of object ids, not a single string")
        self.on_error: OnError = on_error
        self.rank, self.world_size = rank, world_size
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.epoch = 0
        self.reader: ShardReader | None = None
        self.image_root: Path | None = None
        self.uids: list[str] = []
        if is_shard_source(source):
            if uids is not None:
                raise ValueError("uids select object folders; a shard set is read whole")
            self.reader = ShardReader(
                source,
                rank=rank,
                world_size=world_size,
                split=split,
                shuffle=shuffle,
                seed=seed,
                storage_options=storage_options,
            )
            found = self.reader.marker.get("layout", self.layout)
            if found != self.layout:
                raise ValueError(f"{source} holds {found!r} shards, not {self.layout!r}")
        else:
            self.image_root = self._find_image_root(Path(os.fspath(source)))  # type: ignore[arg-type]
            self.uids = self._object_uids(uids)
        self.resume_skip: frozenset[str] = frozenset()
        """Objects left out, undecoded, by the next passes (:meth:`set_resume_skip`)."""
        self._skip_dir = tempfile.mkdtemp(prefix="imesh-skips-")
        weakref.finalize(self, _remove_tree, self._skip_dir, os.getpid())
        self._skipped: list[SkipRecord] = []

    # -- source -------------------------------------------------------------------------------

    @classmethod
    def _find_image_root(cls, root: Path) -> Path:
        if (root / cls.layout_dir).is_dir():
            return root / cls.layout_dir
        if root.name == cls.layout_dir and root.is_dir():
            return root
        raise FileNotFoundError(
            f"no {cls.layout_dir}/ folder under {root} (pass the render output root, the "
            f"{cls.layout_dir} folder itself, or a shard folder)"
        )

    def _object_uids(self, uids: Sequence[str] | None) -> list[str]:
        root = self.image_root
        assert root is not None
        if uids is None:
            return sorted(
                p.name for p in root.iterdir() if p.is_dir() and (p / self.marker_file).is_file()
            )
        chosen = [str(u) for u in uids]
        missing = [u for u in chosen if not (root / u).is_dir()]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise FileNotFoundError(
                f"{len(missing)} object folder(s) missing under {root}: {shown}"
            )
        return chosen

    @property
    def source_kind(self) -> Literal["shards", "folders"]:
        return "shards" if self.reader is not None else "folders"

    def folder_sample(self, index: int) -> FolderSample:
        if self.image_root is None:
            raise TypeError(f"{type(self).__name__} over shards has no random access")
        return FolderSample(self.uids[index], self.image_root / self.uids[index])

    # -- subclass hook ------------------------------------------------------------------------

    def decode(self, sample: Sample) -> dict[str, Any]:
        """One sample -> one item (raise :class:`SampleError` for a bad object)."""
        raise NotImplementedError

    # -- access -------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Select epoch ``epoch`` (the object / shard order when shuffling, and whatever the
        subclass draws per epoch). Call it before creating the epoch's DataLoader iterator
        (workers copy the dataset when the iterator starts; ``persistent_workers`` keep the
        epoch they started with)."""
        self.epoch = int(epoch)
        if self.reader is not None:
            self.reader.set_epoch(epoch)

    def set_resume_skip(self, uids: Iterable[str]) -> None:
        """Leave the objects ``uids`` out of the following passes without reading past their
        uid or decoding them: a trainer resuming mid-epoch passes the objects its checkpoint had
        already consumed this epoch (the splits and the order of the rest are unchanged, so each
        split continues where it stopped). An empty set (default) leaves nothing out."""
        self.resume_skip = frozenset(str(u) for u in uids)

    def __len__(self) -> int:
        """Number of objects over all ranks (object folders; the shard index for shards)."""
        if self.reader is None:
            return len(self.uids)
        counts = self.reader.counts
        if counts is None:
            raise TypeError("a shard source without index.parquet has no length")
        return sum(counts.values())

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.image_root is None:
            raise TypeError(f"{type(self).__name__} over shards has no random access")
        if not -len(self.uids) <= index < len(self.uids):
            raise IndexError(f"index {index} out of range for {len(self.uids)} objects")
        return self.decode(self.folder_sample(index % len(self.uids)))

    def _raw_samples(
        self, split: Split, on_shard_error: Callable[[ShardError], None]
    ) -> Iterator[Sample]:
        if self.reader is not None:
            yield from self.reader.iter_samples(split, on_shard_error)
            return
        order = _permuted(self.uids, self.shuffle, self.seed, self.epoch)
        root = self.image_root
        assert root is not None
        for uid in order[split.index :: split.total]:
            yield FolderSample(uid, root / uid)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        split = current_split(self.rank, self.world_size)
        done = 0
        skipped: list[SkipRecord] = []

        def skip(e: SampleError) -> None:
            record = SkipRecord.from_error(e, self.epoch, split)
            skipped.append(record)
            self._record_skip(record)
            logger.debug("skipped %s", e)

        shard_errors = None if self.on_error == "raise" else skip
        for sample in self._raw_samples(split, shard_errors):  # type: ignore[arg-type]
            if sample.uid in self.resume_skip:
                continue
            try:
                if self.reader is not None and isinstance(sample, TarSample):
                    self.reader.check_members(sample)
                item = self.decode(sample)
            except SampleError as e:
                if self.on_error == "raise":
                    raise
                skip(e)
                continue
            done += 1
            yield item
        self._log_pass(split, done, skipped)

    # -- skip report --------------------------------------------------------------------------

    def _record_skip(self, record: SkipRecord) -> None:
        if torch.utils.data.get_worker_info() is None:
            self._skipped.append(record)
            return
        path = os.path.join(self._skip_dir, f"worker-{os.getpid()}.jsonl")
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(dataclasses.asdict(record)) + "\n")

    def _log_pass(self, split: Split, done: int, skipped: list[SkipRecord]) -> None:
        head = f"{self.layout} epoch {self.epoch} ({split.describe()})"
        if not skipped:
            logger.info("%s: %d objects read, none skipped", head, done)
            return
        causes = "; ".join(f"{r.uid or '?'} ({r.where}, {r.member}): {r.error}" for r in skipped)
        logger.warning(
            "%s: skipped %d of %d objects: %s", head, len(skipped), done + len(skipped), causes
        )

    @property
    def skipped(self) -> list[SkipRecord]:
        """Every object skipped so far, in this process and in its DataLoader workers (in
        epoch, rank, worker order)."""
        records = list(self._skipped)
        if os.path.isdir(self._skip_dir):
            for name in sorted(os.listdir(self._skip_dir)):
                with open(os.path.join(self._skip_dir, name), encoding="utf-8") as f:
                    records += [SkipRecord(**json.loads(line)) for line in f if line.strip()]
        return sorted(records, key=lambda r: (r.epoch, r.rank, r.worker))

    def skip_summary(self, epoch: int | None = None) -> str:
        """One line per skipped object (of ``epoch``, default all), logged at WARNING too."""
        records = [r for r in self.skipped if epoch is None or r.epoch == epoch]
        scope = "all epochs" if epoch is None else f"epoch {epoch}"
        lines = [f"{self.layout}: {len(records)} object(s) skipped ({scope})"]
        lines += [f"  {r.uid or '?'}: {r.member} in {r.where}: {r.error}" for r in records]
        text = "\n".join(lines)
        if records:
            logger.warning("%s", text)
        return text

    def __getstate__(self) -> dict[str, Any]:
        """Pickled for spawned DataLoader workers: the rank is resolved here, in the main
        process (a spawned worker has no ``torch.distributed`` group of its own)."""
        state = dict(self.__dict__)
        if state["rank"] is None:
            resolved = distributed_rank()
            if resolved is not None:
                state["rank"], state["world_size"] = resolved
        return state
