"""Evaluation-set selection (paper section 4) and its records.

- **GSO**: ``n`` (default 300) objects drawn at random from the name-sorted population with
  ``numpy.random.Generator(PCG64(seed))`` (``choice(..., replace=False)``), returned sorted by
  name. With fewer than ``n`` objects all are taken and the selection says so. NumPy does not
  promise identical streams across versions, so the durable record of a selection is its list
  file (:func:`write_selection_list`), which :func:`apply_selection_list` replays exactly.
- **OmniObject3D**: the first ``per_category`` (default 5) objects of each category, "first"
  being the natural sort of the object id (the lowest indices). The paper's 28 "common"
  categories were never published (InstantMesh issues #47 and #156 ask and are unanswered), so
  without an explicit list the default is :func:`default_omni3d_categories`: **the 28
  categories with the most objects, ties broken by category name (ascending)**, listed in name
  order. The release averages ~28 objects per category (~6k objects, 190-216 categories), so
  the 28 largest categories all hold 5 or more and the default gives 140 objects, not the
  paper's 130 ("some categories have fewer"): the paper's list must contain smaller
  categories. Pass the exact list when it is known. A category with fewer
  objects contributes all it has (noted).

A :class:`Selection` is a list of dataset objects carrying how it was made (``available``,
``requested``, ``notes``, per-category counts). :func:`evalset_manifest` turns it into the
manifest Parquet table of the pipeline (``uid``, ``source``, ``mesh_uri``, ``sha256`` plus
``name``, ``category``, ``texture_uri``, ``transforms_uri``, ``has_texture``, ``uid_error``:
why the object has no unique uid, so that its build fails).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import numpy as np
import pyarrow as pa

from evaluation.datasets import (
    DatasetError,
    EvalObject,
    GsoObject,
    Omni3dObject,
    UnsafeUidError,
    check_uid,
    file_sha256,
    natural_key,
    scan_gso,
    scan_omni3d,
)

Dataset = Literal["gso", "omni3d"]
DATASETS: tuple[Dataset, ...] = ("gso", "omni3d")
GSO_DEFAULT_N = 300
OMNI3D_DEFAULT_N_CATEGORIES = 28
OMNI3D_DEFAULT_PER_CATEGORY = 5
LIST_FORMAT = "imesh-evalset-list"
LIST_VERSION = 1

EVALSET_MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("mesh_uri", pa.string(), nullable=False),
        pa.field("sha256", pa.string()),
        pa.field("name", pa.string(), nullable=False),
        pa.field("category", pa.string()),
        pa.field("texture_uri", pa.string()),
        pa.field("transforms_uri", pa.string()),
        pa.field("has_texture", pa.bool_(), nullable=False),
        pa.field("uid_error", pa.string()),
    ]
)

ObjT = TypeVar("ObjT", bound=GsoObject | Omni3dObject)


class Selection(list[ObjT], Generic[ObjT]):
    """The selected objects (a plain list) plus how they were selected."""

    def __init__(
        self,
        items: Iterable[ObjT] = (),
        *,
        dataset: Dataset,
        available: int,
        requested: int,
        notes: Sequence[str] = (),
        categories: Sequence[str] | None = None,
    ) -> None:
        super().__init__(items)
        self.dataset: Dataset = dataset
        self.available = int(available)
        """Objects in the scanned population (all categories)."""
        self.requested = int(requested)
        """``n`` (GSO) or ``len(categories) * per_category`` (Omni3D)."""
        self.notes: list[str] = list(notes)
        self.categories: list[str] | None = list(categories) if categories is not None else None

    @property
    def short(self) -> bool:
        """True when fewer objects were selected than requested."""
        return len(self) < self.requested

    def per_category(self) -> dict[str, int]:
        counts = Counter(o.category or "" for o in self)
        return dict(sorted(counts.items()))

    def uids(self) -> list[str]:
        return [o.uid for o in self]


@dataclass
class EvalSetSpec:
    """How an evaluation set is chosen (written beside every selection list)."""

    dataset: Dataset
    """``gso`` or ``omni3d``."""
    root: str = ""
    """Dataset root: the GSO folder of ``<Name>/`` folders, or the OmniObject3D root (holding
    ``raw_scans/``) or its ``raw_scans`` folder."""
    seed: int = 0
    """GSO sampling seed (numpy PCG64)."""
    n: int = GSO_DEFAULT_N
    """GSO: number of objects to draw."""
    categories: list[str] | None = None
    """Omni3D: categories to use; None = the default rule (see module docstring)."""
    per_category: int = OMNI3D_DEFAULT_PER_CATEGORY
    """Omni3D: objects per category (the lowest indices)."""

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise DatasetError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if int(self.n) < 1:
            raise DatasetError(f"n must be >= 1, got {self.n}")
        if int(self.per_category) < 1:
            raise DatasetError(f"per_category must be >= 1, got {self.per_category}")
        if self.categories is not None:
            self.categories = [str(c) for c in self.categories]
            _no_duplicates(self.categories, "categories")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalSetSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DatasetError(f"unknown EvalSetSpec field(s): {', '.join(unknown)}")
        return cls(**dict(data))


def _no_duplicates(items: Sequence[str], what: str) -> None:
    dup = sorted(k for k, v in Counter(items).items() if v > 1)
    if dup:
        raise DatasetError(f"duplicated {what}: {', '.join(dup)}")


# --------------------------------------------------------------------------------------------
# selection


def select_gso(
    objects: Sequence[GsoObject], n: int = GSO_DEFAULT_N, seed: int = 0
) -> Selection[GsoObject]:
    """A seeded random sample of ``n`` GSO objects, sorted by name (module docstring)."""
    if n < 1:
        raise DatasetError(f"n must be >= 1, got {n}")
    pool = sorted(objects, key=lambda o: o.name)
    _no_duplicates([o.uid for o in pool], "GSO uids")
    notes: list[str] = []
    if len(pool) <= n:
        picked = pool
        if len(pool) < n:
            notes.append(f"only {len(pool)} GSO objects available, fewer than n={n}: took all")
    else:
        rng = np.random.Generator(np.random.PCG64(seed))
        idx = rng.choice(len(pool), size=n, replace=False)
        picked = sorted((pool[int(i)] for i in idx), key=lambda o: o.name)
    return Selection(picked, dataset="gso", available=len(pool), requested=n, notes=notes)


def omni3d_category_counts(objects: Iterable[Omni3dObject]) -> dict[str, int]:
    """Objects per category, sorted by category name."""
    return dict(sorted(Counter(o.category for o in objects).items()))


def default_omni3d_categories(
    objects: Iterable[Omni3dObject], k: int = OMNI3D_DEFAULT_N_CATEGORIES
) -> list[str]:
    """The ``k`` categories with the most objects (ties: category name ascending), returned
    in name order. Fewer than ``k`` categories: all of them."""
    counts = omni3d_category_counts(objects)
    ranked = sorted(counts, key=lambda c: (-counts[c], c))
    return sorted(ranked[:k])


def select_omni3d(
    objects: Sequence[Omni3dObject],
    categories: Sequence[str] | None = None,
    per_category: int = OMNI3D_DEFAULT_PER_CATEGORY,
) -> Selection[Omni3dObject]:
    """The first ``per_category`` objects (natural sort of the id) of each category.

    ``categories`` None uses :func:`default_omni3d_categories`; an explicit list keeps its
    order and must name existing categories (else :class:`DatasetError` listing what exists).
    """
    if per_category < 1:
        raise DatasetError(f"per_category must be >= 1, got {per_category}")
    _no_duplicates([o.uid for o in objects], "OmniObject3D uids")
    counts = omni3d_category_counts(objects)
    notes: list[str] = []
    if categories is None:
        cats = default_omni3d_categories(objects)
        notes.append(
            f"default categories: the {OMNI3D_DEFAULT_N_CATEGORIES} with the most objects "
            "(ties by name); the paper's list is unpublished"
        )
        if len(cats) < OMNI3D_DEFAULT_N_CATEGORIES:
            notes.append(
                f"only {len(cats)} categories available, fewer than "
                f"{OMNI3D_DEFAULT_N_CATEGORIES}: took all"
            )
    else:
        cats = [str(c) for c in categories]
        if not cats:
            raise DatasetError("categories must not be empty (use None for the default rule)")
        _no_duplicates(cats, "categories")
        missing = [c for c in cats if c not in counts]
        if missing:
            raise DatasetError(
                f"unknown OmniObject3D categor{'y' if len(missing) == 1 else 'ies'} "
                f"{', '.join(repr(c) for c in missing)}; available ({len(counts)}): "
                f"{', '.join(counts)}"
            )
    by_cat: dict[str, list[Omni3dObject]] = {c: [] for c in cats}
    for o in objects:
        if o.category in by_cat:
            by_cat[o.category].append(o)
    picked: list[Omni3dObject] = []
    for c in cats:
        members = sorted(by_cat[c], key=lambda o: natural_key(o.object_id))
        if len(members) < per_category:
            notes.append(f"category {c!r} has {len(members)} objects (< {per_category}): took all")
        picked += members[:per_category]
    return Selection(
        picked,
        dataset="omni3d",
        available=len(objects),
        requested=len(cats) * per_category,
        notes=notes,
        categories=cats,
    )


def scan(spec: EvalSetSpec) -> list[GsoObject] | list[Omni3dObject]:
    """Scan the dataset ``spec`` names."""
    if not spec.root:
        raise DatasetError(f"EvalSetSpec for {spec.dataset} has no root")
    if spec.dataset == "gso":
        return scan_gso(spec.root)
    return scan_omni3d(spec.root)


def select(
    spec: EvalSetSpec, objects: Sequence[EvalObject]
) -> Selection[GsoObject] | Selection[Omni3dObject]:
    """Apply ``spec``'s selection rule to scanned ``objects``."""
    if spec.dataset == "gso":
        return select_gso(_only(objects, GsoObject, "gso"), n=spec.n, seed=spec.seed)
    return select_omni3d(
        _only(objects, Omni3dObject, "omni3d"),
        categories=spec.categories,
        per_category=spec.per_category,
    )


def build_evalset(spec: EvalSetSpec) -> Selection[GsoObject] | Selection[Omni3dObject]:
    """Scan ``spec.root`` and select (:func:`scan` then :func:`select`)."""
    return select(spec, scan(spec))


def _only(objects: Sequence[EvalObject], cls: type[ObjT], dataset: str) -> list[ObjT]:
    wrong = [o.uid for o in objects if not isinstance(o, cls)]
    if wrong:
        raise DatasetError(
            f"expected {dataset} objects, got {len(wrong)} others (e.g. {wrong[0]!r})"
        )
    return [o for o in objects if isinstance(o, cls)]


# --------------------------------------------------------------------------------------------
# manifest


def evalset_manifest(selected: Sequence[EvalObject], dataset: Dataset) -> pa.Table:
    """Manifest table (:data:`EVALSET_MANIFEST_SCHEMA`) of the selected objects, in order.
    ``sha256`` is the OBJ file's digest (null when the file is missing)."""
    if dataset not in DATASETS:
        raise DatasetError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    cls: type[GsoObject] | type[Omni3dObject] = GsoObject if dataset == "gso" else Omni3dObject
    rows: dict[str, list[Any]] = {name: [] for name in EVALSET_MANIFEST_SCHEMA.names}
    uids = []
    for o in selected:
        if not isinstance(o, cls):
            raise DatasetError(f"object {o.uid!r} is not a {dataset} object")
        uids.append(check_uid(o.uid))
        mesh = Path(o.obj_path).absolute()
        rows["uid"].append(o.uid)
        rows["source"].append(dataset)
        rows["mesh_uri"].append(str(mesh))
        rows["sha256"].append(file_sha256(mesh) if mesh.is_file() else None)
        rows["name"].append(o.name)
        rows["category"].append(o.category)
        rows["texture_uri"].append(str(o.texture_path) if o.texture_path else None)
        rows["transforms_uri"].append(str(o.transforms_path) if o.transforms_path else None)
        rows["has_texture"].append(bool(o.has_texture))
        rows["uid_error"].append(o.uid_error)
    _no_duplicates(uids, "uids in the selection")
    return pa.table(rows, schema=EVALSET_MANIFEST_SCHEMA)


# --------------------------------------------------------------------------------------------
# selection lists


@dataclass
class SelectionList:
    """A selection read back from its list file."""

    dataset: Dataset
    uids: list[str]
    spec: EvalSetSpec
    counts: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    categories: list[str] | None = None


def write_selection_list(
    path: str | os.PathLike[str], selected: Sequence[EvalObject], spec: EvalSetSpec
) -> Path:
    """Write the selection as JSON (uids in order, the spec, counts, notes), atomically.

    ``selected`` may be a :class:`Selection` (its ``available`` / ``requested`` / ``notes``
    are recorded) or a plain list of objects.
    """
    uids = [check_uid(o.uid) for o in selected]
    _no_duplicates(uids, "uids in the selection")
    wrong = [o.uid for o in selected if o.source != spec.dataset]
    if wrong:
        raise DatasetError(f"objects {wrong[:3]} are not {spec.dataset} objects")
    per_cat = dict(sorted(Counter(o.category or "" for o in selected).items()))
    counts: dict[str, Any] = {"selected": len(uids), "per_category": per_cat}
    notes: list[str] = []
    categories: list[str] | None = spec.categories
    if isinstance(selected, Selection):
        counts["available"] = selected.available
        counts["requested"] = selected.requested
        notes = list(selected.notes)
        categories = selected.categories if selected.categories is not None else categories
    data = {
        "format": LIST_FORMAT,
        "version": LIST_VERSION,
        "dataset": spec.dataset,
        "spec": spec.to_dict(),
        "categories": categories,
        "counts": counts,
        "notes": notes,
        "uids": uids,
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def read_selection_list(path: str | os.PathLike[str]) -> SelectionList:
    """Read a file written by :func:`write_selection_list` (validated)."""
    where = str(path)
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"{where}: cannot read selection list ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict) or data.get("format") != LIST_FORMAT:
        raise DatasetError(f"{where}: not an evaluation-set list (format != {LIST_FORMAT!r})")
    if data.get("version") != LIST_VERSION:
        raise DatasetError(f"{where}: unsupported list version {data.get('version')!r}")
    uids = data.get("uids")
    if not isinstance(uids, list) or not uids:
        raise DatasetError(f"{where}: 'uids' must be a non-empty list")
    for u in uids:
        try:
            check_uid(u)
        except UnsafeUidError as e:
            raise DatasetError(f"{where}: {e}") from e
    _no_duplicates(uids, f"uids in {where}")
    spec = EvalSetSpec.from_dict(data.get("spec") or {})
    if data.get("dataset") != spec.dataset:
        raise DatasetError(f"{where}: dataset {data.get('dataset')!r} != spec {spec.dataset!r}")
    cats = data.get("categories")
    return SelectionList(
        dataset=spec.dataset,
        uids=list(uids),
        spec=spec,
        counts=dict(data.get("counts") or {}),
        notes=list(data.get("notes") or []),
        categories=list(cats) if cats is not None else None,
    )


def apply_selection_list(
    objects: Sequence[EvalObject], selection: SelectionList
) -> Selection[GsoObject] | Selection[Omni3dObject]:
    """The objects a list names, in the list's order (``--list FILE``); raises
    :class:`DatasetError` listing uids the scanned dataset lacks."""
    by_uid = {o.uid: o for o in objects if o.source == selection.dataset}
    missing = [u for u in selection.uids if u not in by_uid]
    if missing:
        shown = ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else "")
        raise DatasetError(
            f"{len(missing)} uid(s) of the selection list are not in the {selection.dataset} "
            f"dataset: {shown}"
        )
    picked = [by_uid[u] for u in selection.uids]
    note = "replayed from a selection list"
    if selection.dataset == "gso":
        return Selection(
            [o for o in picked if isinstance(o, GsoObject)],
            dataset="gso",
            available=len(by_uid),
            requested=len(picked),
            notes=[note, *selection.notes],
        )
    return Selection(
        [o for o in picked if isinstance(o, Omni3dObject)],
        dataset="omni3d",
        available=len(by_uid),
        requested=len(picked),
        notes=[note, *selection.notes],
        categories=selection.categories,
    )


__all__ = [
    "EVALSET_MANIFEST_SCHEMA",
    "EvalSetSpec",
    "Selection",
    "SelectionList",
    "apply_selection_list",
    "build_evalset",
    "default_omni3d_categories",
    "evalset_manifest",
    "omni3d_category_counts",
    "read_selection_list",
    "scan",
    "select",
    "select_gso",
    "select_omni3d",
    "write_selection_list",
]
