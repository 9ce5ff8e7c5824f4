"""The Objaverse (v1) local cache: reading it through the ``objaverse`` package, and writing one.

Layout (what ``objaverse`` 0.1.x downloads to, by default under ``~/.objaverse``)::

    <cache_root>/hf-objaverse-v1/object-paths.json.gz      {uid: "glbs/000-023/<uid>.glb"}
    <cache_root>/hf-objaverse-v1/metadata/000-023.json.gz  {uid: Sketchfab annotation dict}
    <cache_root>/hf-objaverse-v1/glbs/000-023/<uid>.glb
    <cache_root>/hf-objaverse-v1/lvis-annotations.json.gz  {category: [uid, ...]}

Reading goes through the package's own functions (``objaverse.load_uids``,
``load_annotations``, ``load_lvis_annotations``, ``load_objects``) pointed at ``cache_root``.
Those functions download whatever is missing; to keep ingestion offline-safe we check which
files are present first and only ask the package for what is there. Missing pieces are reported
per object (``metadata_error``, ``glb_present``), never silently dropped.

Writing (``write_cache``) produces the same layout from in-memory objects; the fixtures and the
tests use it to build a fake cache that the real reader then loads.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VERSIONED_DIR = "hf-objaverse-v1"
OBJECT_PATHS = "object-paths.json.gz"
LVIS_FILE = "lvis-annotations.json.gz"


class CacheError(FileNotFoundError):
    """The cache root does not hold an Objaverse cache (names what is missing)."""


def default_cache_root() -> Path:
    return Path(os.path.expanduser("~")) / ".objaverse"


def shard_of(object_path: str) -> str:
    """``glbs/000-023/<uid>.glb`` -> ``000-023``."""
    parts = object_path.split("/")
    if len(parts) != 3 or parts[0] != "glbs":
        raise ValueError(f"unexpected Objaverse object path {object_path!r}")
    return parts[1]


@contextmanager
def objaverse_root(cache_root: str | os.PathLike[str]) -> Iterator[Any]:
    """Point the ``objaverse`` package at ``cache_root`` for the duration of the block."""
    import objaverse

    versioned = str(Path(cache_root) / VERSIONED_DIR)
    previous = objaverse._VERSIONED_PATH
    objaverse._VERSIONED_PATH = versioned
    try:
        yield objaverse
    finally:
        objaverse._VERSIONED_PATH = previous


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tag_names(annotation: Mapping[str, Any] | None) -> list[str]:
    if not annotation:
        return []
    return [str(t.get("name", "")) for t in annotation.get("tags") or [] if isinstance(t, dict)]


def _corrupt_shards(versioned: Path, shards: set[str]) -> dict[str, str]:
    """Shards whose file is not gzip-compressed JSON of an object, with the cause."""
    bad: dict[str, str] = {}
    for shard in sorted(shards):
        path = versioned / "metadata" / f"{shard}.json.gz"
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, dict):
                raise ValueError(f"top level is {type(data).__name__}, not an object")
        except (ValueError, OSError, EOFError) as e:
            bad[shard] = f"{type(e).__name__}: {e}"
    return bad


def read_cache(
    cache_root: str | os.PathLike[str], *, compute_sha256: bool = True
) -> list[dict[str, Any]]:
    """One manifest row per uid listed in the cache's ``object-paths.json.gz``.

    Columns: ``uid``, ``source`` (= "objaverse"), ``mesh_uri`` (local GLB path, where the
    package stores it), ``sha256`` (of the GLB, if present and requested), ``glb_present``,
    ``shard``, ``name``, ``tags`` (list of tag names), ``license``, ``face_count``,
    ``vertex_count`` (from the metadata), ``lvis_category`` (or null), ``metadata_error``
    (why metadata is missing, or null).
    """
    root = Path(cache_root)
    versioned = root / VERSIONED_DIR
    if not (versioned / OBJECT_PATHS).is_file():
        raise CacheError(
            f"{versioned / OBJECT_PATHS} not found: {root} is not an Objaverse cache root "
            "(expected the layout objaverse.load_uids() creates under ~/.objaverse)"
        )
    with objaverse_root(root) as ov:
        object_paths: dict[str, str] = ov._load_object_paths()
        uids = list(object_paths)
        shards = {uid: shard_of(p) for uid, p in object_paths.items()}
        present_shards = {
            s for s in set(shards.values()) if (versioned / "metadata" / f"{s}.json.gz").is_file()
        }
        annotations: dict[str, Any] = {}
        corrupt: dict[str, str] = {}
        with_meta = [u for u in uids if shards[u] in present_shards]
        if with_meta:
            try:
                annotations = ov.load_annotations(with_meta)
            except (ValueError, OSError, EOFError):
                # Find the unreadable shard(s) (only on failure: reading every shard twice
                # would double ingestion), treat them like missing shards, load the rest.
                corrupt = _corrupt_shards(versioned, present_shards)
                present_shards -= set(corrupt)
                with_meta = [u for u in uids if shards[u] in present_shards]
                annotations = ov.load_annotations(with_meta) if with_meta else {}
        lvis: dict[str, list[str]] = (
            ov.load_lvis_annotations() if (versioned / LVIS_FILE).is_file() else {}
        )
        on_disk = [u for u in uids if (versioned / object_paths[u]).is_file()]
        local_paths: dict[str, str] = ov.load_objects(on_disk) if on_disk else {}
    category = {uid: cat for cat, members in lvis.items() for uid in members}
    rows = []
    for uid in uids:
        ann = annotations.get(uid)
        path = local_paths.get(uid, str(versioned / object_paths[uid]))
        if shards[uid] in corrupt:
            meta_error = (
                f"metadata shard {shards[uid]}.json.gz is unreadable ({corrupt[shards[uid]]})"
            )
        elif shards[uid] not in present_shards:
            meta_error = f"metadata shard {shards[uid]}.json.gz missing from the cache"
        elif ann is None:
            meta_error = f"uid not found in metadata shard {shards[uid]}.json.gz"
        else:
            meta_error = None
        present = uid in local_paths
        rows.append(
            {
                "uid": uid,
                "source": "objaverse",
                "mesh_uri": path,
                "sha256": sha256_file(path) if present and compute_sha256 else None,
                "glb_present": present,
                "shard": shards[uid],
                "name": ann.get("name") if ann else None,
                "tags": tag_names(ann),
                "license": ann.get("license") if ann else None,
                "face_count": ann.get("faceCount") if ann else None,
                "vertex_count": ann.get("vertexCount") if ann else None,
                "lvis_category": category.get(uid),
                "metadata_error": meta_error,
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------
# Writing a cache (fixtures, tests).
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheObject:
    uid: str
    glb: bytes
    annotation: Mapping[str, Any]
    shard: str = "000-000"
    lvis_category: str | None = None


def sketchfab_annotation(
    uid: str,
    name: str,
    tags: Sequence[str],
    *,
    face_count: int,
    vertex_count: int,
    license: str = "by",
    description: str = "",
) -> dict[str, Any]:
    """An annotation dict with the fields and nesting of Objaverse v1 metadata shards."""
    return {
        "uri": f"https://api.sketchfab.com/v3/models/{uid}",
        "uid": uid,
        "name": name,
        "staffpickedAt": None,
        "viewCount": 0,
        "likeCount": 0,
        "animationCount": 0,
        "viewerUrl": f"https://sketchfab.com/3d-models/{uid}",
        "embedUrl": f"https://sketchfab.com/models/{uid}/embed",
        "commentCount": 0,
        "isDownloadable": True,
        "publishedAt": "2021-01-01T00:00:00.000000",
        "tags": [
            {"uid": hashlib.md5(t.encode()).hexdigest(), "name": t, "slug": t.replace(" ", "-")}
            for t in tags
        ],
        "categories": [],
        "thumbnails": {"images": []},
        "user": {"uid": "0" * 32, "username": "fixture", "displayName": "fixture"},
        "description": description,
        "faceCount": face_count,
        "createdAt": "2021-01-01T00:00:00.000000",
        "vertexCount": vertex_count,
        "isAgeRestricted": False,
        "archives": {},
        "license": license,
    }


def _write_json_gz(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps(data, sort_keys=True).encode()
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(payload)


def write_cache(cache_root: str | os.PathLike[str], objects: Sequence[CacheObject]) -> None:
    """Write ``objects`` as an Objaverse v1 cache under ``cache_root`` (deterministic bytes)."""
    versioned = Path(cache_root) / VERSIONED_DIR
    paths: dict[str, str] = {}
    shards: dict[str, dict[str, Any]] = {}
    lvis: dict[str, list[str]] = {}
    for obj in objects:
        rel = f"glbs/{obj.shard}/{obj.uid}.glb"
        paths[obj.uid] = rel
        target = versioned / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(obj.glb)
        shards.setdefault(obj.shard, {})[obj.uid] = dict(obj.annotation)
        if obj.lvis_category:
            lvis.setdefault(obj.lvis_category, []).append(obj.uid)
    _write_json_gz(versioned / OBJECT_PATHS, paths)
    for shard, data in shards.items():
        _write_json_gz(versioned / "metadata" / f"{shard}.json.gz", data)
    _write_json_gz(versioned / LVIS_FILE, lvis)
