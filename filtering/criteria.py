"""The Objaverse filter criteria (InstantMesh section 3 / FACTS "Training data") as plain functions.

Each criterion answers pass/fail plus a reason. Reason *names* are fixed strings (the
``REASONS`` tuple); a reason *string* returned by a check starts with its name, then ``": "`` and
a human-readable detail (``"no_texture: /x/a.glb: ..."``); ``reason_name`` recovers the name. A
passing check returns ``None`` as its reason.

Rules (the exact definitions live in each function's docstring):

- ``lowpoly`` (metadata): a tag or the name contains the token *low*, optional separators, *poly*
  starting at a word boundary (see ``is_lowpoly``).
- ``no_caption`` (metadata): no Cap3D caption, or one that is empty after ``str.strip()``.
- ``no_texture`` (file): the mesh must have at least one base-colour texture image and every
  declared one must decode; vertex colours and flat colour factors are not textures.
- ``multiple_parts`` (file): more than one group of connected components after grouping parts
  whose bounding boxes overlap or nearly touch (see ``multiple_parts_check``).
- ``tiny_in_view`` (renders): some view's alpha coverage is below 10% (see ``coverage_check``).
- ``unreadable`` (file): the file cannot be loaded as a triangle mesh.

No Ray here: ``pipelines/`` maps these over datasets; ``filtering.metadata_pass`` is the
vectorised form of the two metadata rules over a whole table.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
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
REASONS = (NO_TEXTURE, TINY_IN_VIEW, MULTIPLE_PARTS, NO_CAPTION, LOWPOLY, UNREADABLE)
"""Every reason name a criterion can give, in the order reports list them."""

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
    """The reason name a reason string starts with (``"no_texture: ..."`` -> ``"no_texture"``)."""
    name = reason.split(":", 1)[0].strip()
    if name not in REASONS:
        raise ValueError(f"{reason!r} does not start with a reason name (one of {REASONS})")
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
    """Reason strings of the file criteria for one mesh file, loading it once.

    ``[]`` if the file passes ``no_texture`` and ``multiple_parts``; ``["unreadable: ..."]``
    alone if it cannot be loaded as a triangle mesh (then nothing else is checked). A texture
    that fails to decode gives ``no_texture`` only; the geometry is still checked
    (``geometry_only_mesh``).
    """
    try:
        scene = load_scene(path)
        mesh = geometry_only_mesh(scene, where=str(path))
    except MeshLoadError as e:
        return [f"{UNREADABLE}: {e}"]
    reasons = []
    texture = texture_check_scene(scene, str(path))
    if texture.reason is not None:
        reasons.append(texture.reason)
    parts = multiple_parts_check(mesh, gap_ratio=gap_ratio, min_part_ratio=min_part_ratio)
    if parts.reason is not None:
        reasons.append(parts.reason)
    return reasons


__all__ = [
    "LOWPOLY",
    "MULTIPLE_PARTS",
    "NO_CAPTION",
    "NO_TEXTURE",
    "REASONS",
    "TINY_IN_VIEW",
    "UNREADABLE",
    "Check",
    "PartsCheck",
    "component_labels",
    "coverage_check",
    "file_checks",
    "geometry_only_mesh",
    "has_caption",
    "is_lowpoly",
    "lowpoly_text",
    "multiple_parts_check",
    "reason_name",
    "texture_check",
    "texture_check_scene",
]
