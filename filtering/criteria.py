"""The Objaverse filter criteria (InstantMesh, arXiv 2404.07191, section 3; docs/protocol.md
"Training-data filter") as plain functions, and their registry.

Each criterion answers pass/fail plus a reason. Reason *names* are the registry's keys
(:data:`FILTER_CRITERIA`); a reason *string* returned by a check starts with its name, then
``": "`` and a human-readable detail (``"no_texture: /x/a.glb: ..."``); ``reason_name`` recovers
the name. A passing check returns ``None`` as its reason.

Rules (the exact definitions live in each function's docstring):

- ``lowpoly`` (metadata): a tag or the name contains the token *low*, optional separators, *poly*
  starting at a word boundary (see ``is_lowpoly``).
- ``no_caption`` (metadata): no Cap3D caption, or one that is empty after ``str.strip()``.
- ``no_texture`` (file): the mesh must have at least one base-colour texture image and every
  declared one must decode; vertex colours and flat colour factors are not textures.
- ``multiple_parts`` (file): more than one group of connected components after grouping parts
  whose bounding boxes overlap or nearly touch (see ``multiple_parts_check``).
- ``tiny_in_view`` (coverage): some view's alpha coverage is below 10% (see ``coverage_check``).
- ``unreadable`` (file, a gate): the file cannot be loaded as a triangle mesh.

**Registry** (:data:`FILTER_CRITERIA`, bottom of this module): one :class:`Criterion` entry per
criterion holding its name, its stage in the cascade (:data:`CASCADE_STAGES`: metadata ->
files -> coverage), a one-line description (funnel report, ``imesh filter --help``) and its
check function. The filter (``pipelines.filter``), the decision table and funnel
(``filtering.funnel``) and the metadata pass (``filtering.metadata_pass``) read the cascade from
it. Adding a criterion is its check function plus one entry; what a check receives and returns
depends on its stage (see :data:`CASCADE_STAGES`).

No Ray here: ``pipelines/`` maps these over datasets; ``filtering.metadata_pass`` runs the
metadata criteria vectorised over a whole table.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse
import scipy.sparse.csgraph
import trimesh

from rendering.mesh_io import (
    WELD_DECIMALS,
    MeshLoadError,
    base_color_textures,
    load_scene,
    scene_to_mesh,
)

NO_TEXTURE = "no_texture"
TINY_IN_VIEW = "tiny_in_view"
MULTIPLE_PARTS = "multiple_parts"
NO_CAPTION = "no_caption"
LOWPOLY = "lowpoly"
UNREADABLE = "unreadable"

COVERAGE_THRESHOLD = 0.10
"""Minimum alpha coverage of every rendered view (paper: objects under 10% of the image)."""

CAMEL_BOUNDARY = r"([a-z])([A-Z])"
CAMEL_REPLACEMENT = r"\1 \2"
"""``SimpleLowPoly`` -> ``Simple Low Poly``: an ASCII lower->upper transition is a word boundary.
The same pattern/replacement is valid for Python ``re`` and RE2 (pyarrow), so the per-row and
vectorised forms agree."""

LOWPOLY_PATTERN = r"(^|[^a-zA-Z0-9])[lL][oO][wW][ \t_.\-]*[pP][oO][lL][yY]"
"""The lowpoly token, written without flags or look-arounds so that Python ``re`` and RE2
(``pyarrow.compute.match_substring_regex``) give identical answers: a word boundary (start of
text or a character that is not an ASCII letter or digit), then ``low``, any run of separators
(space, tab, ``_``, ``-``, ``.``), then ``poly``, ASCII letters in any case. Nothing is
required after ``poly``: ``lowpolyart``, ``low-polygon`` and ``LowPolyModel`` match."""

_LOWPOLY_RE = re.compile(LOWPOLY_PATTERN)
_CAMEL_RE = re.compile(CAMEL_BOUNDARY)


class Check(NamedTuple):
    """Outcome of one criterion: ``ok`` and, when not ok, a reason string (``None`` if ok)."""

    ok: bool
    reason: str | None


class PartsCheck(NamedTuple):
    """Outcome of ``multiple_parts_check``: ``n_parts`` is the number of object groups."""

    ok: bool
    n_parts: int
    reason: str | None


def reason_name(reason: str) -> str:
    """The reason name a reason string starts with (``"no_texture: ..."`` -> ``"no_texture"``);
    ``ValueError`` unless it is a registered criterion (:data:`FILTER_CRITERIA`)."""
    name = reason.split(":", 1)[0].strip()
    if name not in FILTER_CRITERIA:
        raise ValueError(
            f"{reason!r} does not start with a reason name (one of {tuple(FILTER_CRITERIA)})"
        )
    return name


# ---------------------------------------------------------------------------------------------
# Metadata criteria.
# ---------------------------------------------------------------------------------------------


def lowpoly_text(text: str | None) -> bool:
    """Whether one string (a tag or a name) carries the lowpoly token.

    Rule: insert a space at every ASCII lower->upper case transition (``CAMEL_BOUNDARY``), then
    search ``LOWPOLY_PATTERN``. Matches: ``lowpoly``, ``low_poly``, ``low-poly``, ``low poly``,
    ``low  poly``, ``low.poly``, ``LowPoly``, ``LOW_POLY``, ``SimpleLowPoly``, ``lowpolyart``,
    ``low-polygon``. Does not match: ``yellowpolygon``, ``YellowPoly``, ``slowpoly``,
    ``highpoly``, ``poly low``, ``low resolution poly``, ``3dlowpoly`` (``low`` must start a
    word; a digit or letter before it means it does not).
    """
    if not text:
        return False
    return _LOWPOLY_RE.search(_CAMEL_RE.sub(CAMEL_REPLACEMENT, text)) is not None


def is_lowpoly(name: str | None, tags: Iterable[str | None] | None) -> bool:
    """``lowpoly`` criterion: true if the name or any single tag carries the lowpoly token.

    Tags are matched one at a time (never joined), so the tags ``["low", "poly"]`` do not match.
    ``None`` names/tags count as empty.
    """
    return lowpoly_text(name) or any(lowpoly_text(t) for t in tags or ())


def has_caption(uid: str, captions: Mapping[str, str | None]) -> bool:
    """``no_caption`` criterion (inverted): ``uid`` has a caption that is non-empty after
    ``str.strip()`` (Unicode whitespace)."""
    caption = captions.get(uid)
    return caption is not None and caption.strip() != ""


# Vectorised forms over pyarrow columns: the same rules, evaluated column-wise (no Python code
# per row); ``filtering.metadata_pass`` runs them over a whole annotation table.


def _as_array(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return column


def lowpoly_strings(strings: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Vectorised ``lowpoly_text``: a boolean numpy mask (nulls -> False)."""
    split = pc.replace_substring_regex(strings, CAMEL_BOUNDARY, CAMEL_REPLACEMENT)
    matched = pc.fill_null(pc.match_substring_regex(split, LOWPOLY_PATTERN), False)
    return np.asarray(_as_array(matched).to_numpy(zero_copy_only=False), dtype=bool)


def lowpoly_column(
    names: pa.Array | pa.ChunkedArray, tags: pa.Array | pa.ChunkedArray
) -> np.ndarray:
    """Vectorised ``is_lowpoly`` over aligned ``names`` and ``tags`` (list) columns: the tags
    list column is flattened once, the regex (RE2, same pattern) runs over all tags and names,
    and matches are scattered back to rows with ``list_parent_indices``."""
    out = lowpoly_strings(names)
    tag_lists = _as_array(tags)
    if len(tag_lists) == 0:
        return out
    if not (pa.types.is_list(tag_lists.type) or pa.types.is_large_list(tag_lists.type)):
        raise TypeError(f"tags must be a list<string> column, got {tag_lists.type}")
    flat = pc.list_flatten(tag_lists)  # null lists contribute no values
    if len(flat):
        parents = np.asarray(pc.list_parent_indices(tag_lists).to_numpy(), dtype=np.int64)
        out[parents[lowpoly_strings(flat)]] = True
    return out


def no_caption_column(captions: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Vectorised ``not has_caption``: null, or empty after trimming Unicode whitespace
    (``utf8_trim_whitespace`` trims exactly what ``str.strip()`` strips)."""
    length = pc.utf8_length(pc.utf8_trim_whitespace(captions))
    missing = pc.fill_null(pc.equal(length, 0), True)
    return np.asarray(_as_array(missing).to_numpy(zero_copy_only=False), dtype=bool)


# ---------------------------------------------------------------------------------------------
# File criteria.
# ---------------------------------------------------------------------------------------------


def texture_check_scene(scene: trimesh.Scene, where: str) -> Check:
    """``no_texture`` on a loaded scene; ``where`` (the file) is named in the reason.

    Rule: count the base-colour texture images referenced by the geometries' materials
    (``rendering.mesh_io.base_color_textures``: PBR ``baseColorTexture`` or a simple material's
    ``image``) and how many of them decode. Pass iff at least one is declared and all declared
    ones decode. Vertex colours and flat colour factors are not textures. An image that the
    glTF loader could not even open is dropped by trimesh, so it counts as absent.
    """
    declared, decoded = base_color_textures(scene)
    if declared == 0:
        return Check(
            False,
            f"{NO_TEXTURE}: {where}: no base-colour texture image "
            "(vertex colours and flat colour factors do not count)",
        )
    if decoded < declared:
        return Check(
            False,
            f"{NO_TEXTURE}: {where}: {declared - decoded} of {declared} base-colour texture "
            "image(s) fail to decode",
        )
    return Check(True, None)


def texture_check(glb_path: str | os.PathLike[str]) -> Check:
    """``no_texture`` criterion for a mesh file (rule: ``texture_check_scene``).

    A file that cannot be loaded gives ``unreadable`` (the reason carries the loader's message,
    which names the file).
    """
    try:
        scene = load_scene(glb_path)
    except MeshLoadError as e:
        return Check(False, f"{UNREADABLE}: {e}")
    return texture_check_scene(scene, str(glb_path))


def component_labels(
    mesh: trimesh.Trimesh, decimals: int = WELD_DECIMALS
) -> tuple[int, np.ndarray]:
    """``(n_components, face_labels)`` of the position-welded mesh.

    Vertices whose coordinates agree to ``decimals`` decimals are one vertex (as in
    ``rendering.mesh_io.connected_components``); two faces are in one component iff they are
    linked by a chain of faces sharing welded vertices. Labels are ``0..n-1`` per face.
    """
    faces = np.asarray(mesh.faces)
    if len(faces) == 0:
        return 0, np.zeros(0, dtype=np.int64)
    rounded = np.round(np.asarray(mesh.vertices), decimals)
    _, inverse = np.unique(rounded, axis=0, return_inverse=True)
    welded = inverse.reshape(-1)[faces]
    n = int(welded.max()) + 1
    edges = np.concatenate([welded[:, [0, 1]], welded[:, [1, 2]]])
    graph = scipy.sparse.coo_matrix(
        (np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n)
    )
    _, vertex_labels = scipy.sparse.csgraph.connected_components(graph, directed=False)
    _, face_labels = np.unique(vertex_labels[welded[:, 0]], return_inverse=True)
    face_labels = face_labels.reshape(-1)
    return int(face_labels.max()) + 1, face_labels


def _box_groups(lo: np.ndarray, hi: np.ndarray, gap: float, chunk_pairs: int = 1 << 22) -> int:
    """Groups of axis-aligned boxes linked by a Euclidean box-to-box distance <= ``gap``."""
    k = len(lo)
    if k <= 1:
        return k
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    step = max(1, chunk_pairs // k)
    for start in range(
        0, k, step
    ):  # chunks of boxes, each against all: O(k^2) work, bounded memory
        a_lo, a_hi = lo[start : start + step, None, :], hi[start : start + step, None, :]
        sep = np.maximum(0.0, np.maximum(lo[None] - a_hi, a_lo - hi[None]))
        i, j = np.nonzero(np.sum(sep * sep, axis=2) <= gap * gap)
        rows.append(i + start)
        cols.append(j)
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = scipy.sparse.coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(k, k))
    n_groups, _ = scipy.sparse.csgraph.connected_components(graph, directed=False)
    return int(n_groups)


def multiple_parts_check(
    mesh: trimesh.Trimesh, gap_ratio: float = 0.05, min_part_ratio: float = 0.01
) -> PartsCheck:
    """``multiple_parts`` criterion: is the mesh one object or several separate ones?

    Rule, with ``D`` the diagonal of the whole mesh's axis-aligned bounding box (AABB):

    1. Split the mesh into connected components after welding vertices by position
       (``component_labels``; UV/normal seams do not split a part).
    2. Ignore tiny components: those whose own AABB diagonal is < ``min_part_ratio * D``
       (specks, dust, stray triangles) and those with zero surface area (degenerate faces).
       If nothing is left, the largest component (by AABB diagonal) is kept.
    3. Link two remaining components when the Euclidean distance between their AABBs is
       <= ``gap_ratio * D`` (overlapping, interpenetrating, nested or touching boxes have
       distance 0). Linked components form one group (transitively).
    4. Pass iff there is at most one group; ``n_parts`` is the number of groups (0 only for a
       mesh without faces, which ``rendering.mesh_io`` loading already rejects).

    AABB proximity errs towards "one object": parts that interpenetrate or sit inside another
    part's box are never counted as separate, only parts with a visible gap are.
    """
    n_comp, labels = component_labels(mesh)
    if n_comp <= 1:
        return PartsCheck(True, n_comp, None)
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces)
    corner = vertices[faces]  # (F, 3, 3)
    face_lo, face_hi = corner.min(axis=1), corner.max(axis=1)
    lo = np.full((n_comp, 3), np.inf)
    hi = np.full((n_comp, 3), -np.inf)
    np.minimum.at(lo, labels, face_lo)
    np.maximum.at(hi, labels, face_hi)
    area = np.bincount(labels, weights=np.asarray(mesh.area_faces), minlength=n_comp)
    whole = float(np.linalg.norm(np.ptp(corner.reshape(-1, 3), axis=0)))
    diag = np.linalg.norm(hi - lo, axis=1)
    keep = (diag >= min_part_ratio * whole) & (area > 0.0)
    if not keep.any():
        keep[int(np.argmax(diag))] = True
    n_groups = _box_groups(lo[keep], hi[keep], gap_ratio * whole)
    if n_groups <= 1:
        return PartsCheck(True, n_groups, None)
    return PartsCheck(
        False,
        n_groups,
        f"{MULTIPLE_PARTS}: {n_groups} separate groups of parts ({n_comp} connected components, "
        f"{int(keep.sum())} above {min_part_ratio:g} of the bbox diagonal, "
        f"gap > {gap_ratio:g} x diagonal {whole:.4g})",
    )


def coverage_check(coverages: Sequence[float], threshold: float = COVERAGE_THRESHOLD) -> Check:
    """``tiny_in_view`` criterion over per-view alpha coverage fractions (rendered elsewhere).

    Rule: fail iff any view's coverage (fraction of pixels with alpha > 0, in [0, 1]) is
    strictly below ``threshold``; the reason names the smallest coverage and its view index.
    Raises ``ValueError`` for no views or a value that is not a finite number in [0, 1]
    (a missing render must not pass silently).
    """
    values = np.asarray(coverages, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("coverage_check needs at least one view's coverage")
    if not np.isfinite(values).all() or (values < 0).any() or (values > 1).any():
        raise ValueError(f"coverages must be finite fractions in [0, 1], got {values.tolist()}")
    view = int(np.argmin(values))
    lowest = float(values[view])
    if lowest < threshold:
        return Check(
            False,
            f"{TINY_IN_VIEW}: min coverage {lowest:.4f} in view {view} < {threshold:g}",
        )
    return Check(True, None)


def geometry_only_mesh(scene: trimesh.Scene, where: str = "mesh") -> trimesh.Trimesh:
    """The scene flattened to one world-space mesh without visuals (positions and faces only).

    Same validation as ``rendering.mesh_io.scene_to_mesh`` (no triangles, non-finite vertices
    -> ``MeshLoadError``), but materials are dropped first, so a texture image that does not
    decode (which makes trimesh's visual merge raise) cannot stop the geometric criteria.
    """
    bare = {
        name: trimesh.Trimesh(geom.vertices, geom.faces, process=False)
        for name, geom in scene.geometry.items()
        if isinstance(geom, trimesh.Trimesh)
    }
    return scene_to_mesh(trimesh.Scene(geometry=bare, graph=scene.graph.copy()), where=where)


def file_checks(
    path: str | os.PathLike[str], gap_ratio: float = 0.05, min_part_ratio: float = 0.01
) -> list[str]:
    """Reason strings of the file criteria (the registry's ``files`` stage) for one mesh file,
    loading it once (:class:`MeshFile`).

    ``[]`` if the file passes them all; ``["unreadable: ..."]`` alone if it cannot be loaded as a
    triangle mesh (``unreadable`` is a gate: nothing else is checked). A texture that fails to
    decode gives ``no_texture`` only; the geometry is still checked (``geometry_only_mesh``).
    """
    params = CriterionParams(gap_ratio=gap_ratio, min_part_ratio=min_part_ratio)
    return object_reasons("files", MeshFile(path), params)


class MeshFile:
    """One mesh file as the ``files`` criteria see it: loaded on first use, at most once.

    ``scene`` is the file as loaded (materials kept, for ``no_texture``); ``mesh`` is its
    world-space geometry without visuals (``geometry_only_mesh``). Both raise
    ``MeshLoadError`` when the file cannot be loaded as a triangle mesh (``unreadable``).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = path
        self.where = str(path)
        self._loaded: tuple[trimesh.Scene, trimesh.Trimesh] | None = None
        self._error: MeshLoadError | None = None

    def load(self) -> tuple[trimesh.Scene, trimesh.Trimesh]:
        """``(scene, mesh)``, loading the file on the first call."""
        if self._loaded is None and self._error is None:
            try:
                scene = load_scene(self.path)
                self._loaded = (scene, geometry_only_mesh(scene, where=self.where))
            except MeshLoadError as e:
                self._error = e
        if self._error is not None:
            raise self._error
        assert self._loaded is not None
        return self._loaded

    @property
    def scene(self) -> trimesh.Scene:
        return self.load()[0]

    @property
    def mesh(self) -> trimesh.Trimesh:
        return self.load()[1]


# ---------------------------------------------------------------------------------------------
# The registry: one entry per criterion.
# ---------------------------------------------------------------------------------------------

CascadeStage = Literal["metadata", "files", "coverage"]

CASCADE_STAGES: tuple[CascadeStage, ...] = ("metadata", "files", "coverage")
"""The cascade's stages in the order they run, and what a check of each stage gets and gives:

- ``metadata``: ``check(table, params) -> numpy bool mask`` (True = the row fails) over the
  whole annotation table (``uid``, ``name``, ``tags``, ``caption``; the entry's ``columns`` say
  which it reads). Runs in the driver, vectorised (~1 M rows/s).
- ``files``: ``check(MeshFile, params) -> reason string | None``, per object on Ray workers;
  the file is loaded once for all of them (texture + connected parts).
- ``coverage``: ``check(per-view alpha coverage fractions, params) -> reason string | None``;
  the coverages come from a silhouette pass of the survivors (or existing renders), the most
  expensive input, so this stage runs last."""


@dataclass(frozen=True)
class CriterionParams:
    """The thresholds the checks read (``imesh filter`` options of the same names)."""

    gap_ratio: float = 0.05
    """``multiple_parts``: parts farther apart than this x the bbox diagonal are separate."""
    min_part_ratio: float = 0.01
    """``multiple_parts``: parts smaller than this x the bbox diagonal are ignored."""
    coverage_threshold: float = COVERAGE_THRESHOLD
    """``tiny_in_view``: minimum alpha coverage of every view."""


@dataclass(frozen=True)
class Criterion:
    """One filter criterion."""

    name: str
    """Reason name: its decision column, its funnel row and the first word of its reasons."""
    stage: CascadeStage
    """The cascade stage that decides it (:data:`CASCADE_STAGES`)."""
    description: str
    """One line for the funnel report and ``imesh filter --help``."""
    check: Callable[[Any, CriterionParams], Any]
    """``(subject, params)``: subject and result depend on the stage (:data:`CASCADE_STAGES`).
    A failing per-object check returns a reason string that starts with ``name``."""
    gate: bool = False
    """Failing it means the object cannot be judged further (``unreadable``): the rest of its
    stage and every later stage are not evaluated (null), with or without the cascade."""
    columns: tuple[str, ...] = ()
    """``metadata`` criteria: the annotation-table columns the check reads."""

    def __post_init__(self) -> None:
        if self.stage not in CASCADE_STAGES:
            raise ValueError(f"criterion {self.name!r}: stage must be one of {CASCADE_STAGES}")
        if self.stage == "metadata" and (self.gate or not self.columns):
            raise ValueError(
                f"criterion {self.name!r}: a metadata criterion names its columns and is no gate"
            )
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name) or self.name in _RESERVED_COLUMNS:
            raise ValueError(f"criterion name {self.name!r} cannot be a decision column")


_RESERVED_COLUMNS = frozenset(
    {"uid", "error", "kept", "reasons", "details", "min_coverage", "metadata_ok"}
)
"""Columns of the decision and metadata tables that are not criteria."""


def no_caption_mask(table: pa.Table, params: CriterionParams) -> np.ndarray:
    """``no_caption`` over an annotation table (``no_caption_column`` of ``caption``)."""
    del params
    return no_caption_column(table["caption"])


def lowpoly_mask(table: pa.Table, params: CriterionParams) -> np.ndarray:
    """``lowpoly`` over an annotation table (``lowpoly_column`` of ``name`` and ``tags``)."""
    del params
    return lowpoly_column(table["name"], table["tags"])


def unreadable_reason(file: MeshFile, params: CriterionParams) -> str | None:
    """``unreadable``: the file cannot be loaded as a triangle mesh (the loader's message names
    the file)."""
    del params
    try:
        file.load()
    except MeshLoadError as e:
        return f"{UNREADABLE}: {e}"
    return None


def no_texture_reason(file: MeshFile, params: CriterionParams) -> str | None:
    """``no_texture`` (rule: ``texture_check_scene``)."""
    del params
    return texture_check_scene(file.scene, file.where).reason


def multiple_parts_reason(file: MeshFile, params: CriterionParams) -> str | None:
    """``multiple_parts`` (rule: ``multiple_parts_check``)."""
    return multiple_parts_check(
        file.mesh, gap_ratio=params.gap_ratio, min_part_ratio=params.min_part_ratio
    ).reason


def tiny_in_view_reason(coverages: Sequence[float], params: CriterionParams) -> str | None:
    """``tiny_in_view`` (rule: ``coverage_check``)."""
    return coverage_check(coverages, params.coverage_threshold).reason


def _registry(*entries: Criterion) -> dict[str, Criterion]:
    out: dict[str, Criterion] = {}
    for c in entries:
        if c.name in out:
            raise ValueError(f"criterion {c.name!r} registered twice")
        out[c.name] = c
    # cascade order: by stage, then in the order of registration
    return dict(sorted(out.items(), key=lambda kv: CASCADE_STAGES.index(kv[1].stage)))


FILTER_CRITERIA: dict[str, Criterion] = _registry(
    Criterion(NO_CAPTION, "metadata", "no Cap3D caption", no_caption_mask, columns=("caption",)),
    Criterion(
        LOWPOLY, "metadata", "low-poly by tags or name", lowpoly_mask, columns=("name", "tags")
    ),
    Criterion(
        UNREADABLE,
        "files",
        "GLB cannot be loaded as a triangle mesh",
        unreadable_reason,
        gate=True,
    ),
    Criterion(NO_TEXTURE, "files", "no decodable base-colour texture", no_texture_reason),
    Criterion(MULTIPLE_PARTS, "files", "multiple separate objects", multiple_parts_reason),
    Criterion(TINY_IN_VIEW, "coverage", "< 10 % of the image in some view", tiny_in_view_reason),
)
"""Every filter criterion, in cascade order (by stage, then as registered)."""

REASONS: tuple[str, ...] = tuple(FILTER_CRITERIA)
"""Every reason name a criterion can give, in cascade order (the registry's names)."""


def stage_criteria(stage: CascadeStage) -> tuple[Criterion, ...]:
    """The criteria ``stage`` decides, in cascade order."""
    return tuple(c for c in FILTER_CRITERIA.values() if c.stage == stage)


def criterion_names(stage: CascadeStage | None = None) -> tuple[str, ...]:
    """Names of every criterion (or of ``stage``'s), in cascade order."""
    return tuple(c.name for c in FILTER_CRITERIA.values() if stage in (None, c.stage))


def gate_names() -> tuple[str, ...]:
    """Criteria whose failure stops every later check of the object (``Criterion.gate``)."""
    return tuple(c.name for c in FILTER_CRITERIA.values() if c.gate)


def object_reasons(stage: CascadeStage, subject: Any, params: CriterionParams) -> list[str]:
    """Run the per-object criteria of ``stage`` (``files`` or ``coverage``) on ``subject`` in
    order; the reason strings of those that fail. Stops after a failing gate."""
    if stage == "metadata":
        raise ValueError("metadata criteria run over a table (filtering.metadata_pass)")
    reasons: list[str] = []
    for c in stage_criteria(stage):
        reason = c.check(subject, params)
        if reason is None:
            continue
        if reason_name(reason) != c.name:
            raise ValueError(f"criterion {c.name!r} gave a reason of another name: {reason!r}")
        reasons.append(reason)
        if c.gate:
            break
    return reasons


def stage_flags(stage: CascadeStage, reasons: Iterable[str]) -> dict[str, bool]:
    """Decision flags (True = fails) of ``stage``'s criteria from the reason strings its checks
    gave (``object_reasons``); criteria after a failing gate are absent (not evaluated)."""
    failed = {reason_name(r) for r in reasons}
    flags: dict[str, bool] = {}
    for c in stage_criteria(stage):
        flags[c.name] = c.name in failed
        if c.gate and flags[c.name]:
            break
    return flags


def criteria_help() -> str:
    """The cascade as one help paragraph: stages in order, each criterion with its meaning."""
    parts = []
    for stage in CASCADE_STAGES:
        items = ", ".join(f"{c.name} ({c.description})" for c in stage_criteria(stage))
        parts.append(f"{stage}: {items}")
    return "Criteria in cascade order: " + "; ".join(parts) + "."


__all__ = [
    "CASCADE_STAGES",
    "FILTER_CRITERIA",
    "LOWPOLY",
    "MULTIPLE_PARTS",
    "NO_CAPTION",
    "NO_TEXTURE",
    "REASONS",
    "TINY_IN_VIEW",
    "UNREADABLE",
    "CascadeStage",
    "Check",
    "Criterion",
    "CriterionParams",
    "MeshFile",
    "PartsCheck",
    "component_labels",
    "coverage_check",
    "criteria_help",
    "criterion_names",
    "file_checks",
    "gate_names",
    "geometry_only_mesh",
    "has_caption",
    "is_lowpoly",
    "lowpoly_column",
    "lowpoly_strings",
    "lowpoly_text",
    "multiple_parts_check",
    "no_caption_column",
    "object_reasons",
    "reason_name",
    "stage_criteria",
    "stage_flags",
    "texture_check",
    "texture_check_scene",
]
