"""Content fingerprints of the files a stage item reads (``Stage.input_fingerprint``).

The resume rule keys an item by its config hash **and** the content of its inputs: the mesh
file, the files it references (OBJ ``mtllib`` files and their ``map_*`` textures, glTF/GLB
external ``buffers[].uri`` / ``images[].uri``), a prediction file, a GT object. Replace any of
them and the next run redoes the item instead of reporting it "resumed" with the old output.

Rules (every function here is safe to call on anything):

- **never raises, never blocks**: a path is ``stat``-ed first and only a regular file is opened
  (``O_NONBLOCK``, and checked again on the open descriptor), so a FIFO, a device such as
  ``/dev/zero`` or a directory gives a fingerprint naming what it is (``not a regular file
  (fifo)``) and the stage's ``process`` reports the cause as the item's failed row;
- **streamed**: SHA-256 over 1 MiB blocks, never the whole file in memory;
- **cached** per process by ``(path, device, inode, size, mtime_ns, ctime_ns)``: the driver's
  resume check and the manifest listing hash a file once per run (``ctime`` changes on every
  replacement and cannot be set by users, so a cached digest is never stale in practice);
- **contained**: a referenced file that resolves outside the mesh's folder is not read (the
  loaders refuse it too); it is recorded as such;
- remote URLs (``s3://``) are fingerprinted by the object store's own key (``fs.ukey``: ETag,
  size, modification time), never downloaded.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from pipelines import storage

CHUNK = 1 << 20
MAX_SIDE_FILE_BYTES = 64 << 20
"""Largest MTL / glTF JSON / GLB JSON chunk parsed for references (larger ones: file hash only)."""
_CACHE_LIMIT = 200_000
_MTLLIB = re.compile(rb"(?m)^[ \t]*mtllib[ \t]+([^\r\n]*)")
_MTL_MAP = re.compile(r"(?im)^[ \t]*(?:map_\w+|bump|disp|decal|norm|refl)[ \t]+([^\r\n]*)")

_cache: dict[tuple[Any, ...], tuple[str, tuple[str, ...]]] = {}
_lock = threading.Lock()


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "special file"


def _problem(e: OSError) -> str:
    if isinstance(e, FileNotFoundError):
        return "missing"
    return f"unreadable ({errno.errorcode.get(e.errno or 0, type(e).__name__)})"


def _digest(path: Path) -> tuple[str, tuple[str, ...]]:
    """``("sha256:<hex>", mtllib names of an OBJ)`` of a regular file, or ``(why not, ())``."""
    try:
        st = os.stat(path)
    except OSError as e:
        return _problem(e), ()
    if not stat.S_ISREG(st.st_mode):
        return f"not a regular file ({_kind(st.st_mode)})", ()
    key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    want_mtllib = path.suffix.lower() == ".obj"
    h = hashlib.sha256()
    names: list[str] = []
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        return _problem(e), ()
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # replaced since the stat
            return "not a regular file (changed while opening)", ()
        tail = b""
        try:
            while block := f.read(CHUNK):
                h.update(block)
                if want_mtllib:
                    text = tail + block
                    cut = text.rfind(b"\n") + 1
                    names += [
                        m.group(1).decode("utf-8", "replace") for m in _MTLLIB.finditer(text[:cut])
                    ]
                    tail = text[cut:][-4096:]
        except OSError as e:
            return _problem(e), ()
        if want_mtllib and tail:
            names += [m.group(1).decode("utf-8", "replace") for m in _MTLLIB.finditer(tail)]
    result = (f"sha256:{h.hexdigest()}", tuple(n.strip() for n in names if n.strip()))
    with _lock:
        if len(_cache) >= _CACHE_LIMIT:
            _cache.clear()
        _cache[key] = result
    return result


def file_digest(uri: str | os.PathLike[str] | None) -> str:
    """``sha256:<hex>`` of a local regular file; otherwise a short text saying what it is
    (``missing``, ``not a regular file (fifo)``, ``unreadable (EACCES)``); a remote URL's
    store key. Never raises."""
    if uri is None or uri == "":
        return "none"
    text = os.fspath(uri)
    try:
        if "://" in text and not storage.is_local(text):
            fs, path = storage.filesystem(text)
            return f"ukey:{fs.ukey(path)}"
    except Exception as e:  # a fingerprint never raises: `process` reports the cause
        return f"unreadable ({type(e).__name__})"
    return _digest(Path(_local(text)))[0]


def sha256_hex(path: str | os.PathLike[str]) -> str | None:
    """The SHA-256 hex digest of a regular file (streamed, cached), None for anything else."""
    digest = _digest(Path(path))[0]
    return digest.removeprefix("sha256:") if digest.startswith("sha256:") else None


def _local(text: str) -> str:
    return text[len("file://") :] if text.startswith("file://") else text


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError, ValueError):
        return False


def _read_small(path: Path, limit: int = MAX_SIDE_FILE_BYTES) -> bytes | None:
    """Bytes of a regular file of at most ``limit`` bytes (else None), without blocking."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            return f.read(limit + 1)[:limit]
    except OSError:
        return None


def _gltf_uris(doc: Any) -> list[str]:
    out: list[str] = []
    if not isinstance(doc, dict):
        return out
    for key in ("buffers", "images"):
        for entry in doc.get(key) or []:
            uri = entry.get("uri") if isinstance(entry, dict) else None
            if isinstance(uri, str) and uri and not uri.startswith("data:"):
                out.append(unquote(uri))
    return out


def _glb_json(path: Path) -> Any:
    head = _read_small(path, MAX_SIDE_FILE_BYTES)
    if head is None or len(head) < 20 or head[:4] != b"glTF":
        return None
    length = int.from_bytes(head[12:16], "little")
    if head[16:20] != b"JSON":
        return None
    try:
        return json.loads(head[20 : 20 + length])
    except ValueError:
        return None


def referenced_files(path: Path, mtllibs: Iterable[str] = ()) -> list[tuple[str, Path]]:
    """``(name as written, path)`` of the files a mesh file references (module docstring);
    ``mtllibs``: the OBJ's ``mtllib`` names (collected while hashing it)."""
    refs: list[tuple[str, Path]] = []
    suffix = path.suffix.lower()
    if suffix == ".obj":
        for name in mtllibs:
            mtl = path.parent / name
            refs.append((name, mtl))
            if not _inside(mtl, path.parent):
                continue
            data = _read_small(mtl)
            if data is None:
                continue
            for m in _MTL_MAP.finditer(data.decode("utf-8", "replace")):
                tokens = m.group(1).split()
                if tokens:
                    refs.append((tokens[-1], mtl.parent / tokens[-1]))
    elif suffix in (".gltf", ".glb"):
        doc: Any = None
        if suffix == ".gltf":
            data = _read_small(path)
            try:
                doc = json.loads(data) if data is not None else None
            except ValueError:
                doc = None
        else:
            doc = _glb_json(path)
        refs += [(uri, path.parent / uri) for uri in _gltf_uris(doc)]
    return refs


def mesh_fingerprint(uri: str | None) -> dict[str, Any]:
    """``{"mesh": digest, "refs": {name: digest}}`` for a mesh file and what it references."""
    if not uri:
        return {"mesh": "none"}
    text = _local(str(uri))
    if "://" in text:
        return {"mesh": file_digest(text)}
    path = Path(text)
    digest, mtllibs = _digest(path)
    out: dict[str, Any] = {"mesh": digest}
    if not digest.startswith("sha256:"):
        return out
    refs: dict[str, str] = {}
    for name, ref in referenced_files(path, mtllibs):
        if not _inside(ref, path.parent):
            refs[name] = "outside the mesh's folder (not read)"
        else:
            refs[name] = _digest(ref)[0]
    if refs:
        out["refs"] = refs
    return out


def fingerprint(**parts: Any) -> str:
    """A stable text of named fingerprint parts (what ``Stage.input_fingerprint`` returns)."""
    return json.dumps(parts, sort_keys=True, default=str)


def row_mesh_inputs(row: dict[str, Any], config: Any) -> str:
    """Input fingerprint of stages that read the row's ``mesh_uri`` (inspect, filter)."""
    del config
    try:
        return fingerprint(mesh=mesh_fingerprint(row.get("mesh_uri")))
    except Exception as e:  # never raises
        return f"fingerprint failed: {type(e).__name__}: {e}"
