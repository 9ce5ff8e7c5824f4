"""Readers for the evaluation datasets: Google Scanned Objects (GSO) and OmniObject3D.

Scanning lists objects without loading meshes (cheap on the ~1k GSO / ~6k Omni3D releases);
loading returns one ``trimesh.Trimesh`` **with** its texture and records what happened in
``mesh.metadata``. Every error is a :class:`DatasetError` naming the object.

Google Scanned Objects (``scan_gso``, ``load_gso_mesh``)
    ``<root>/<Name>/meshes/model.obj`` + ``model.mtl``; the MTL says ``map_Kd texture.png``
    but the image lives in ``<Name>/materials/textures/texture.png``. Loading uses a trimesh
    resolver that looks beside the OBJ **and** in ``../materials/textures/`` (never outside the
    object's folder, never copying files). ``metadata.pbtxt`` (protobuf text) is read with a
    tiny parser for ``name`` and the ``annotations { key: "category" value: ... }`` entry; a
    missing or malformed file is tolerated (category ``None``, a note). GSO models are Gazebo
    SDF models: Z up, metres (Gazebo's convention, the same as our world), so no axis change.
    The uid is the folder name ``<Name>``.

OmniObject3D (``scan_omni3d``, ``load_omni3d_mesh``)
    ``<root>/raw_scans/<category>/<object_id>/Scan/Scan.obj`` (+ ``Scan.mtl``, ``Scan.jpg``);
    ``root`` may be the dataset root (holding ``raw_scans/``) or the ``raw_scans`` folder.
    Object ids look like ``<category>_<NNN>`` and are the uids. Within a category objects are
    ordered by the **natural sort** of the id (``toy_train_2`` < ``toy_train_10``), so "the
    first 5 objects" are the 5 lowest indices. Benchmark-view cameras are found at (first hit
    wins, all three are layouts the official OmniObject3D repository documents or writes):

    1. ``<dataset>/blender_renders/<category>/<id>/render/transforms.json`` (release README),
    2. ``<dataset>/blender_renders/<category>/<id>/transforms.json`` (older render script),
    3. ``<dataset>/raw_scans/<category>/<id>/render/transforms.json`` (newer render script).

    **Axes**: the scans are stored **Y up**. The official render script imports ``Scan.obj``
    with Blender's default OBJ axes (forward -Z, up Y), i.e. ``(x, y, z) -> (x, -z, y)``, then
    scales it by ``0.99 / max |coordinate|`` (stored as ``frames[*].scale``), and the official
    mesh evaluation (``tools/mesh_eval.py``) applies the same ``(x, -z, y)`` map and scale to
    the raw scan to compare it with reconstructions in the render frame. ``load_omni3d_mesh``
    therefore converts to our Z-up world by default (``up_axis="y"``); pass ``up_axis="z"`` to
    keep the file's coordinates. :func:`omni3d_scan_to_render` gives the full 4x4 (axis change
    and scale) into the frame of the object's ``transforms.json`` cameras. Units of the raw
    scans are not documented; evaluation normalizes every mesh into [-1, 1]^3 anyway.
    Known release quirk (OmniObject3D issue #6): some ``Scan.mtl`` files lack the ``map_Kd``
    line; when the MTL names no texture but ``Scan.jpg`` sits beside the OBJ and the mesh has
    UVs, that image is used and a note is recorded.

Texture rule (both datasets): a GT mesh whose texture is missing or does not decode loads
untextured with ``mesh.metadata["has_texture"] = False`` and a note; it is not an error here
(the evaluation stage turns it into a status row with the cause).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import trimesh
from PIL import Image
from trimesh.resolvers import Resolver
from trimesh.visual.texture import TextureVisuals

from filtering.objaverse_cache import sha256_file
from rendering.mesh_io import MAX_MTL_BYTES, MeshLoadError, scene_to_mesh
from rendering.normalize import Y_UP_TO_Z_UP
from rendering.uids import UnsafeUidError, check_uid, uid_collisions, uid_from_name

log = logging.getLogger(__name__)

# Object ids are uids: one safe path component each (``rendering.uids``: the rule, the one check
# ``check_uid`` raising ``UnsafeUidError``, shared with the pipeline's storage). Folder names
# become uids through ``rendering.uids.uid_from_name`` (``Coffee Mug`` -> ``Coffee_Mug``).

GSO_OBJ = Path("meshes") / "model.obj"
GSO_TEXTURE_DIR = Path("materials") / "textures"
GSO_METADATA = "metadata.pbtxt"
OMNI3D_SCANS = "raw_scans"
OMNI3D_RENDERS = "blender_renders"
OMNI3D_OBJ = Path("Scan") / "Scan.obj"
OMNI3D_TEXTURE = "Scan.jpg"

UpAxis = Literal["y", "z"]
# Y-up scans are turned Z up by ``rendering.normalize.Y_UP_TO_Z_UP``, (x, y, z) -> (x, -z, y):
# +90 deg about +x, Blender's default OBJ import (forward -Z, up Y) and the map OmniObject3D's
# ``tools/mesh_eval.py`` applies to raw scans.

_MTLLIB_SCAN_BYTES = 1 << 16
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tga", ".tif", ".tiff", ".webp")


class DatasetError(ValueError):
    """An evaluation dataset (or one of its objects) that cannot be used; names the object."""


def _merge_uid_collisions(objects: list[Any], where: str) -> list[Any]:
    """Objects whose folder names give the same uid (``Coffee Mug`` / ``Coffee_Mug``, or equal
    up to case) become one object with ``uid_error`` naming every folder: it fails alone at
    build time (a status row), never the whole dataset, and no uid silently means one of them."""
    groups = uid_collisions([o.uid for o in objects])
    if not groups:
        return objects
    drop: set[int] = set()
    for uid, idx in groups.items():
        names = ", ".join(repr(objects[i].folder.name) for i in idx)
        message = (
            f"{where}: folders {names} all give the object id {uid!r} (equal once made "
            "path-safe, or up to case); rename them so that each has its own id"
        )
        objects[idx[0]] = dataclasses.replace(objects[idx[0]], uid=uid, uid_error=message)
        drop.update(idx[1:])
    return [o for i, o in enumerate(objects) if i not in drop]


def natural_key(text: str) -> tuple[Any, ...]:
    """Sort key comparing digit runs as numbers: ``a_2`` < ``a_10`` (ties: the raw string)."""
    parts = re.split(r"(\d+)", text)
    key = tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts))
    return (key, text)


# --------------------------------------------------------------------------------------------
# objects


@dataclass(frozen=True)
class GsoObject:
    """One Google Scanned Objects model (found by :func:`scan_gso`)."""

    uid: str
    name: str
    """Folder name (= uid)."""
    folder: Path
    obj_path: Path
    texture_path: Path | None
    """The diffuse texture the MTL names, resolved (quirk included); None when not found."""
    category: str | None = None
    metadata_name: str | None = None
    """``name`` from ``metadata.pbtxt`` (usually equal to the folder name)."""
    notes: tuple[str, ...] = ()
    uid_error: str | None = None
    """Why this object cannot get a unique uid (its build fails with this message)."""
    source: Literal["gso"] = "gso"

    @property
    def has_texture(self) -> bool:
        return self.texture_path is not None

    @property
    def transforms_path(self) -> Path | None:
        return None


@dataclass(frozen=True)
class Omni3dObject:
    """One OmniObject3D raw scan (found by :func:`scan_omni3d`)."""

    uid: str
    category: str
    object_id: str
    index: int | None
    """Trailing number of the id (``toy_train_007`` -> 7), None if the id has none."""
    folder: Path
    obj_path: Path
    texture_path: Path | None
    transforms_path: Path | None
    """Benchmark-view cameras (``transforms.json``) when the renders are present."""
    notes: tuple[str, ...] = ()
    uid_error: str | None = None
    """Why this object cannot get a unique uid (its build fails with this message)."""
    source: Literal["omni3d"] = "omni3d"

    @property
    def name(self) -> str:
        return self.object_id

    @property
    def has_texture(self) -> bool:
        return self.texture_path is not None


EvalObject = GsoObject | Omni3dObject


# --------------------------------------------------------------------------------------------
# protobuf text format (metadata.pbtxt), minimal


class PbtxtError(ValueError):
    pass


_PB_TOKEN = re.compile(
    r"""\s+|\#[^\n]*|(?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')"""
    r"""|(?P<punct>[{}<>:;,\[\]])|(?P<word>[^\s{}<>:;,\[\]"'#]+)"""
)
_PB_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "'": "'", "\\": "\\"}


def _pb_tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _PB_TOKEN.match(text, pos)
        if m is None:
            raise PbtxtError(f"unexpected character {text[pos]!r} at offset {pos}")
        pos = m.end()
        if m.lastgroup == "str":
            raw = m.group("str")[1:-1]
            value = re.sub(r"\\(.)", lambda e: _PB_ESCAPES.get(e.group(1), e.group(1)), raw)
            # adjacent string literals concatenate, as in protobuf text format
            if out and out[-1][0] == "str":
                out[-1] = ("str", out[-1][1] + value)
            else:
                out.append(("str", value))
        elif m.lastgroup in ("punct", "word"):
            out.append((m.lastgroup, m.group(m.lastgroup)))
    return out


def parse_pbtxt(text: str) -> dict[str, list[Any]]:
    """Parse protobuf text format into ``{field: [values...]}`` (every field may repeat);
    nested messages become dicts of the same shape, scalars stay strings (no schema).

    Iterative (an explicit stack of open messages and lists), so nesting depth is bounded by
    memory, never by Python's recursion limit: a deeply nested file parses or is a
    :class:`PbtxtError`, never a ``RecursionError``."""
    tokens = _pb_tokens(text)
    n = len(tokens)
    pos = 0
    root: dict[str, list[Any]] = {}
    # Frames: ("msg", fields, closing punct or None for the top level) or
    # ("list", the field's value list, field name).
    stack: list[tuple[str, Any, str | None]] = [("msg", root, None)]

    def value_into(target: list[Any], name: str, colon: bool) -> None:
        """Consume one value of field ``name``: a scalar is appended to ``target``; an opening
        ``{``/``<``/``[`` appends (or targets) a container and pushes its frame."""
        nonlocal pos
        if pos >= n:
            raise PbtxtError(f"field {name!r} has no value")
        kind, tok = tokens[pos]
        if kind == "punct" and tok in "{<":
            pos += 1
            child: dict[str, list[Any]] = {}
            target.append(child)
            stack.append(("msg", child, "}" if tok == "{" else ">"))
            return
        if kind == "punct" and tok == "[":
            pos += 1
            stack.append(("list", target, name))
            return
        if not colon:
            raise PbtxtError(f"field {name!r}: expected ':' or '{{'")
        if kind == "punct":
            raise PbtxtError(f"field {name!r}: unexpected {tok!r}")
        pos += 1
        target.append(tok)

    while True:
        frame, container, tag = stack[-1]
        if frame == "msg":
            if pos >= n:
                if tag is not None:
                    raise PbtxtError(f"missing {tag!r}")
                return root
            kind, tok = tokens[pos]
            if kind == "punct" and tok == tag:
                pos += 1
                stack.pop()
                continue
            if kind == "punct" and tok in ";,":
                pos += 1
                continue
            if kind != "word":
                raise PbtxtError(f"expected a field name, got {tok!r}")
            pos += 1
            colon = pos < n and tokens[pos] == ("punct", ":")
            if colon:
                pos += 1
            value_into(container.setdefault(tok, []), tok, colon)
        else:
            if pos >= n:
                raise PbtxtError(f"field {tag!r}: missing ']'")
            kind, tok = tokens[pos]
            if (kind, tok) == ("punct", "]"):
                pos += 1
                stack.pop()
                continue
            if (kind, tok) == ("punct", ","):
                pos += 1
                continue
            value_into(container, str(tag), True)


def _first_str(fields: dict[str, list[Any]], key: str) -> str | None:
    for v in fields.get(key, []):
        if isinstance(v, str):
            return v
    return None


def read_gso_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"name", "category", "annotations", "notes"}`` from a GSO ``metadata.pbtxt``.

    The category is the ``annotations`` entry with ``key: "category"``; as a fallback a
    ``categories { first: ... }`` message is read. Absence or a malformed file gives ``None``
    values and a note, never an error.
    """
    p = Path(path)
    out: dict[str, Any] = {"name": None, "category": None, "annotations": {}, "notes": []}
    if not p.is_file():
        out["notes"].append(f"{p.name} missing")
        return out
    try:
        fields = parse_pbtxt(p.read_text(encoding="utf-8", errors="replace"))
    except (OSError, PbtxtError) as e:
        out["notes"].append(f"{p.name} unreadable ({e})")
        return out
    out["name"] = _first_str(fields, "name")
    annotations: dict[str, str] = {}
    for entry in fields.get("annotations", []):
        if isinstance(entry, dict):
            key, value = _first_str(entry, "key"), _first_str(entry, "value")
            if key is not None and value is not None:
                annotations.setdefault(key, value)
    out["annotations"] = annotations
    category = annotations.get("category")
    if category is None:
        for entry in fields.get("categories", []):
            if isinstance(entry, dict) and _first_str(entry, "first"):
                category = _first_str(entry, "first")
                break
    out["category"] = category
    return out


# --------------------------------------------------------------------------------------------
# texture resolution


def _norm(path: str | os.PathLike[str]) -> Path:
    """Absolute, lexically normalized (``..`` folded, symlinks kept: datasets are often
    symlinked into place, and containment is checked on the names the MTL gives)."""
    return Path(os.path.normpath(Path(path).absolute()))


class SearchPathResolver(Resolver):
    """A read-only trimesh resolver that looks a name up in several folders, in order, and
    never outside ``root``. Names are tried as written and by their base name (MTL files
    written on Windows or with stale relative paths); ``../`` escapes from ``root`` are refused
    (checked on normalized names, symlinks are followed only when reading). ``found`` maps each requested name to
    the file that served it."""

    def __init__(self, dirs: Sequence[str | os.PathLike[str]], root: str | os.PathLike[str]):
        self.dirs = [_norm(d) for d in dirs]
        self.root = _norm(root)
        self.found: dict[str, Path] = {}

    def find(self, name: str) -> Path | None:
        clean = name.strip().strip('"').replace("\\", "/")
        candidates = dict.fromkeys([clean, clean.lstrip("/"), clean.rsplit("/", 1)[-1]])
        for folder in self.dirs:
            for cand in candidates:
                if not cand:
                    continue
                path = _norm(folder / cand)
                if path.is_relative_to(self.root) and path.is_file():
                    return path
        return None

    def get(self, key: str) -> bytes:
        path = self.find(key)
        if path is None:
            raise FileNotFoundError(f"{key!r} not found in {[str(d) for d in self.dirs]}")
        if path.suffix.lower() == ".mtl" and path.stat().st_size > MAX_MTL_BYTES:
            raise ValueError(f"material file {path} is over {MAX_MTL_BYTES} bytes (refused)")
        self.found[key] = path
        return path.read_bytes()

    def write(self, name: str, data: Any) -> None:
        raise PermissionError(f"dataset folders are read-only (refused to write {name!r})")

    def namespaced(self, namespace: str) -> SearchPathResolver:
        return SearchPathResolver([d / namespace for d in self.dirs], self.root)

    def keys(self) -> Iterator[str]:
        for folder in self.dirs:
            if folder.is_dir():
                for p in sorted(folder.iterdir()):
                    if p.is_file():
                        yield p.name


def _mtllib_names(obj_path: Path) -> list[str]:
    """``mtllib`` names from the head of an OBJ (they precede the geometry in practice)."""
    try:
        with open(obj_path, "rb") as f:
            head = f.read(_MTLLIB_SCAN_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return []
    names: list[str] = []
    for line in head.splitlines():
        s = line.strip()
        if s.lower().startswith("mtllib"):
            rest = s[6:].strip()
            if rest:
                names.append(rest)
    return names


def _map_kd_names(mtl_text: str) -> list[str]:
    names = []
    for line in mtl_text.splitlines():
        s = line.strip()
        if s.lower().startswith("map_kd"):
            rest = s[6:].strip()
            if rest.startswith("-"):  # options such as "-s 1 1 1 file.png": keep the file
                rest = rest.split()[-1]
            if rest:
                names.append(rest)
    return names


def _declared_texture(
    obj_path: Path, resolver: SearchPathResolver, default_mtl: str
) -> tuple[Path | None, list[str]]:
    """(resolved diffuse texture, notes) from the MTL(s) an OBJ references, without loading."""
    notes: list[str] = []
    mtl_names = _mtllib_names(obj_path) or [default_mtl]
    declared: list[str] = []
    for mtl in mtl_names:
        mtl_path = resolver.find(mtl)
        if mtl_path is None:
            notes.append(f"material file {mtl!r} not found")
            continue
        size = mtl_path.stat().st_size
        if size > MAX_MTL_BYTES:
            notes.append(f"material file {mtl!r} is {size} bytes (limit {MAX_MTL_BYTES}; not read)")
            continue
        declared += _map_kd_names(mtl_path.read_text(encoding="utf-8", errors="replace"))
    if not declared:
        notes.append("the material declares no texture map (map_Kd)")
        return None, notes
    for name in declared:
        path = resolver.find(name)
        if path is not None:
            return path, notes
    notes.append(f"texture {declared[0]!r} not found")
    return None, notes


def _gso_resolver(obj_path: Path, folder: Path) -> SearchPathResolver:
    return SearchPathResolver([obj_path.parent, folder / GSO_TEXTURE_DIR], root=folder)


# --------------------------------------------------------------------------------------------
# GSO


def scan_gso(root: str | os.PathLike[str]) -> list[GsoObject]:
    """Every GSO object folder under ``root`` (sorted by name).

    An object folder is ``<root>/<Name>/`` holding ``meshes/model.obj`` or ``metadata.pbtxt``
    (a folder with metadata but no OBJ is kept, with a note, so a partly extracted dataset
    fails per object at load time instead of silently changing the population). Raises
    :class:`DatasetError` when ``root`` is missing, holds no objects, or a name is not a
    path-safe uid.
    """
    base = Path(root)
    if not base.is_dir():
        raise DatasetError(f"GSO root {base} is not a directory")
    objects: list[GsoObject] = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        obj_path = folder / GSO_OBJ
        meta_path = folder / GSO_METADATA
        if not obj_path.is_file() and not meta_path.is_file():
            continue
        notes: list[str] = []
        meta = read_gso_metadata(meta_path)
        notes += meta["notes"]
        texture: Path | None = None
        if obj_path.is_file():
            texture, tex_notes = _declared_texture(
                obj_path, _gso_resolver(obj_path, folder), "model.mtl"
            )
            notes += tex_notes
        else:
            notes.append(f"{GSO_OBJ.as_posix()} missing")
        objects.append(
            GsoObject(
                uid=uid_from_name(folder.name),
                name=folder.name,
                folder=folder.absolute(),
                obj_path=obj_path.absolute(),
                texture_path=texture,
                category=meta["category"],
                metadata_name=meta["name"],
                notes=tuple(notes),
            )
        )
    if not objects:
        raise DatasetError(f"no GSO objects under {base} (expected <Name>/{GSO_OBJ.as_posix()})")
    objects.sort(key=lambda o: o.name)
    objects = _merge_uid_collisions(objects, f"GSO root {base}")
    return objects


def load_gso_mesh(obj: GsoObject) -> trimesh.Trimesh:
    """Load a GSO object's OBJ with its texture (quirk resolved); see module docstring.

    ``mesh.metadata`` gets ``uid``, ``source``, ``has_texture``, ``texture_uri`` (the image
    file that was used, or None) and ``load_notes``.
    """
    resolver = _gso_resolver(obj.obj_path, obj.folder)
    mesh = _load_obj(obj.obj_path, resolver, f"GSO object {obj.uid!r}")
    return _finish(mesh, obj.uid, "gso", resolver, fallback=None)


# --------------------------------------------------------------------------------------------
# OmniObject3D


def _omni3d_roots(root: Path) -> tuple[Path, Path]:
    """(dataset root, raw_scans folder) for a root that is either of them."""
    if (root / OMNI3D_SCANS).is_dir():
        return root, root / OMNI3D_SCANS
    return root.parent, root


def find_omni3d_transforms(
    dataset_root: str | os.PathLike[str], category: str, object_id: str
) -> Path | None:
    """The object's ``transforms.json`` in one of the known layouts (module docstring)."""
    base = Path(dataset_root)
    for cand in (
        base / OMNI3D_RENDERS / category / object_id / "render" / "transforms.json",
        base / OMNI3D_RENDERS / category / object_id / "transforms.json",
        base / OMNI3D_SCANS / category / object_id / "render" / "transforms.json",
    ):
        if cand.is_file():
            return cand.absolute()
    return None


def _omni3d_resolver(obj_path: Path) -> SearchPathResolver:
    return SearchPathResolver([obj_path.parent], root=obj_path.parent)


def scan_omni3d(root: str | os.PathLike[str]) -> list[Omni3dObject]:
    """Every OmniObject3D object under ``root`` (dataset root or its ``raw_scans`` folder),
    sorted by category name, then by the natural sort of the object id.

    Every folder ``raw_scans/<category>/<object_id>/`` of a category folder holding at least
    one ``Scan/Scan.obj`` is an object; one without ``Scan/Scan.obj`` is kept with a note (it fails at load time) so "the first 5 of a category" does not shift
    when a file is missing. Raises :class:`DatasetError` when nothing is found or an id is not
    a path-safe uid (or repeats across categories).
    """
    base = Path(root)
    if not base.is_dir():
        raise DatasetError(f"OmniObject3D root {base} is not a directory")
    dataset_root, scans = _omni3d_roots(base)
    objects: list[Omni3dObject] = []
    for cat_dir in sorted(p for p in scans.iterdir() if p.is_dir() and not p.name.startswith(".")):
        obj_dirs = [p for p in cat_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if not any((p / OMNI3D_OBJ).is_file() for p in obj_dirs):
            continue  # not a category folder (no scan at all)
        for obj_dir in obj_dirs:
            obj_path = obj_dir / OMNI3D_OBJ
            notes: list[str] = []
            texture: Path | None = None
            if obj_path.is_file():
                resolver = _omni3d_resolver(obj_path)
                texture, tex_notes = _declared_texture(obj_path, resolver, "Scan.mtl")
                notes += tex_notes
                fallback = obj_path.parent / OMNI3D_TEXTURE
                if texture is None and fallback.is_file():
                    texture = fallback.absolute()
                    notes.append(
                        f"using {OMNI3D_TEXTURE} beside the OBJ (the MTL texture is absent)"
                    )
            else:
                notes.append(f"{OMNI3D_OBJ.as_posix()} missing")
            m = re.search(r"(\d+)$", obj_dir.name)
            objects.append(
                Omni3dObject(
                    uid=uid_from_name(obj_dir.name),
                    category=cat_dir.name,
                    object_id=obj_dir.name,
                    index=int(m.group(1)) if m else None,
                    folder=obj_dir.absolute(),
                    obj_path=obj_path.absolute(),
                    texture_path=texture,
                    transforms_path=find_omni3d_transforms(
                        dataset_root, cat_dir.name, obj_dir.name
                    ),
                    notes=tuple(notes),
                )
            )
    if not objects:
        raise DatasetError(
            f"no OmniObject3D objects under {base} (expected "
            f"{OMNI3D_SCANS}/<category>/<object_id>/{OMNI3D_OBJ.as_posix()})"
        )
    objects.sort(key=lambda o: (o.category, natural_key(o.object_id)))
    objects = _merge_uid_collisions(objects, f"OmniObject3D root {base}")
    return objects


def load_omni3d_mesh(obj: Omni3dObject, up_axis: UpAxis = "y") -> trimesh.Trimesh:
    """Load ``Scan.obj`` with ``Scan.mtl`` / ``Scan.jpg``; same errors and metadata as
    :func:`load_gso_mesh`. ``up_axis`` is the file's up axis: ``"y"`` (default, the release's
    convention) rotates ``(x, y, z) -> (x, -z, y)`` into our Z-up world; ``"z"`` keeps the
    coordinates as stored. Scale is left as stored (see :func:`omni3d_scan_to_render`)."""
    resolver = _omni3d_resolver(obj.obj_path)
    mesh = _load_obj(obj.obj_path, resolver, f"OmniObject3D object {obj.uid!r}")
    mesh = _finish(mesh, obj.uid, "omni3d", resolver, fallback=obj.obj_path.parent / OMNI3D_TEXTURE)
    mesh.apply_transform(_up_transform(up_axis))
    mesh.metadata["up_axis_in_file"] = up_axis
    return mesh


def _up_transform(up_axis: str) -> np.ndarray:
    if up_axis == "y":
        return Y_UP_TO_Z_UP.copy()
    if up_axis == "z":
        return np.eye(4)
    raise DatasetError(f"up_axis must be 'y' or 'z', got {up_axis!r}")


def omni3d_render_scale(transforms_path: str | os.PathLike[str]) -> float:
    """The ``scale`` the official render script applied to the scan (``frames[0].scale``)."""
    where = str(transforms_path)
    try:
        data = json.loads(Path(transforms_path).read_text())
        scale = float(data["frames"][0]["scale"])
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise DatasetError(f"{where}: no usable frames[0].scale ({type(e).__name__}: {e})") from e
    if not (math.isfinite(scale) and scale > 0):
        raise DatasetError(f"{where}: scale must be positive and finite, got {scale}")
    return scale


def omni3d_scan_to_render(obj: Omni3dObject, up_axis: UpAxis = "y") -> np.ndarray:
    """4x4 from ``Scan.obj`` file coordinates to the frame of the object's ``transforms.json``
    cameras: the up-axis change, then the stored uniform ``scale`` (official render script).
    For a mesh from :func:`load_omni3d_mesh` (already Z up) only the scale remains:
    ``np.diag([s, s, s, 1])`` with ``s = omni3d_render_scale(obj.transforms_path)``."""
    if obj.transforms_path is None:
        raise DatasetError(f"OmniObject3D object {obj.uid!r}: no transforms.json found")
    s = omni3d_render_scale(obj.transforms_path)
    return np.diag([s, s, s, 1.0]) @ _up_transform(up_axis)


# --------------------------------------------------------------------------------------------
# loading helpers


def _load_obj(obj_path: Path, resolver: SearchPathResolver, where: str) -> trimesh.Trimesh:
    if not obj_path.is_file():
        raise DatasetError(f"{where}: mesh file {obj_path} not found")
    if obj_path.stat().st_size == 0:
        raise DatasetError(f"{where}: mesh file {obj_path} is empty")
    try:
        scene = trimesh.load(
            str(obj_path), file_type="obj", resolver=resolver, force="scene", process=False
        )
    except Exception as e:  # trimesh raises many exception types on malformed input
        raise DatasetError(f"{where}: cannot parse {obj_path} ({type(e).__name__}: {e})") from e
    if not isinstance(scene, trimesh.Scene):
        raise DatasetError(f"{where}: {obj_path} did not load as a scene")
    try:
        return scene_to_mesh(scene, where=f"{where}: {obj_path}")
    except MeshLoadError as e:
        raise DatasetError(str(e)) from e


def _material_image(mesh: trimesh.Trimesh) -> Image.Image | None:
    material = getattr(mesh.visual, "material", None)
    if material is None:
        return None
    image = getattr(material, "image", None)
    if image is None:
        image = getattr(material, "baseColorTexture", None)
    return image if isinstance(image, Image.Image) else None


def _decodes(image: Image.Image | None) -> bool:
    if image is None:
        return False
    try:
        image.load()
    except Exception:  # truncated / corrupt image data
        return False
    return image.size[0] > 0 and image.size[1] > 0


def _finish(
    mesh: trimesh.Trimesh,
    uid: str,
    source: str,
    resolver: SearchPathResolver,
    fallback: Path | None,
) -> trimesh.Trimesh:
    notes: list[str] = []
    image = _material_image(mesh)
    ok = _decodes(image)
    texture_uri: Path | None = None
    if ok:
        images = [p for p in resolver.found.values() if p.suffix.lower() in _IMAGE_SUFFIXES]
        texture_uri = images[0] if images else None
    elif image is not None:
        notes.append("texture image does not decode")
    uv = getattr(mesh.visual, "uv", None)
    if not ok and fallback is not None and fallback.is_file() and uv is not None:
        try:
            with Image.open(fallback) as im:
                fb = im.convert("RGB")
            mesh.visual = TextureVisuals(uv=uv, image=fb)
            ok, texture_uri = True, fallback.absolute()
            notes.append(f"MTL names no usable texture; used {fallback.name} beside the OBJ")
        except Exception as e:  # a corrupt fallback image
            notes.append(f"{fallback.name} does not decode ({type(e).__name__})")
    if not ok:
        if image is None:
            notes.append("no texture image resolved (loaded untextured)")
        log.warning("%s object %r loaded without texture: %s", source, uid, "; ".join(notes))
    mesh.metadata.update(
        {
            "uid": uid,
            "source": source,
            "has_texture": ok,
            "texture_uri": str(texture_uri) if texture_uri is not None else None,
            "load_notes": notes,
        }
    )
    return mesh


file_sha256 = sha256_file
"""SHA-256 hex digest of a file, streamed (the one implementation, shared with ingestion)."""


__all__ = [
    "Y_UP_TO_Z_UP",
    "DatasetError",
    "EvalObject",
    "GsoObject",
    "Omni3dObject",
    "SearchPathResolver",
    "UnsafeUidError",
    "check_uid",
    "file_sha256",
    "find_omni3d_transforms",
    "load_gso_mesh",
    "load_omni3d_mesh",
    "natural_key",
    "omni3d_render_scale",
    "omni3d_scan_to_render",
    "parse_pbtxt",
    "read_gso_metadata",
    "scan_gso",
    "scan_omni3d",
]
