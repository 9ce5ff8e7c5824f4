"""The cheap metadata-only filter cascade over a whole table, vectorised with pyarrow.

Input: a ``pyarrow.Table`` with columns ``uid`` (string), ``name`` (string, nullable), ``tags``
(list<string>, nullable; null = no tags) and ``caption`` (string, nullable; the Cap3D caption
joined in by ``pipelines.ingest``). Output (``metadata_pass``): one row per input row, same
order, with ``uid``, boolean ``no_caption`` and ``lowpoly``, ``metadata_ok`` (neither), and
``reasons`` (list<string> of the failing reason names, in the order no_caption, lowpoly).

The rules are exactly the per-row ones in ``filtering.criteria`` (``has_caption``,
``is_lowpoly``), evaluated column-wise: the tags list column is flattened once, the lowpoly
regex (RE2, same pattern as the Python one) runs over all tags and names, and matches are
scattered back to rows with ``list_parent_indices``. No Python code runs per row.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from filtering.criteria import (
    CAMEL_BOUNDARY,
    CAMEL_REPLACEMENT,
    LOWPOLY,
    LOWPOLY_PATTERN,
    NO_CAPTION,
)

REQUIRED_COLUMNS = ("uid", "name", "tags", "caption")
METADATA_REASONS = (NO_CAPTION, LOWPOLY)
"""The reasons this pass decides, in the order they appear in ``reasons``."""


def _as_array(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return column


def lowpoly_strings(strings: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Vectorised ``criteria.lowpoly_text``: a boolean numpy mask (nulls -> False)."""
    split = pc.replace_substring_regex(strings, CAMEL_BOUNDARY, CAMEL_REPLACEMENT)
    matched = pc.fill_null(pc.match_substring_regex(split, LOWPOLY_PATTERN), False)
    return np.asarray(_as_array(matched).to_numpy(zero_copy_only=False), dtype=bool)


def lowpoly_column(
    names: pa.Array | pa.ChunkedArray, tags: pa.Array | pa.ChunkedArray
) -> np.ndarray:
    """Vectorised ``criteria.is_lowpoly`` over aligned ``names`` and ``tags`` (list) columns."""
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
    """Vectorised ``not criteria.has_caption``: null, or empty after trimming Unicode
    whitespace (``utf8_trim_whitespace`` trims exactly what ``str.strip()`` strips)."""
    length = pc.utf8_length(pc.utf8_trim_whitespace(captions))
    missing = pc.fill_null(pc.equal(length, 0), True)
    return np.asarray(_as_array(missing).to_numpy(zero_copy_only=False), dtype=bool)


def reasons_column(flags: dict[str, np.ndarray], order: tuple[str, ...]) -> pa.ListArray:
    """A list<string> column holding, per row, the names in ``order`` whose flag is set."""
    stacked = np.stack([flags[name] for name in order], axis=1)  # (rows, reasons)
    offsets = np.zeros(len(stacked) + 1, dtype=np.int32)
    np.cumsum(stacked.sum(axis=1), out=offsets[1:])
    which = np.nonzero(stacked.reshape(-1))[0] % len(order)  # row-major: row order, then reason
    values = pa.array(list(order), type=pa.string()).take(pa.array(which, type=pa.int64()))
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), values)


def metadata_pass(table: pa.Table) -> pa.Table:
    """Run the metadata criteria (``no_caption``, ``lowpoly``) over ``table`` (see module
    docstring for the columns). Raises ``ValueError`` naming any missing required column."""
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(
            f"metadata table lacks column(s) {missing}; has {table.column_names} "
            f"(required: {list(REQUIRED_COLUMNS)})"
        )
    flags = {
        NO_CAPTION: no_caption_column(table["caption"]),
        LOWPOLY: lowpoly_column(table["name"], table["tags"]),
    }
    failed = np.logical_or.reduce([flags[r] for r in METADATA_REASONS])
    return pa.table(
        {
            "uid": table["uid"],
            NO_CAPTION: pa.array(flags[NO_CAPTION], type=pa.bool_()),
            LOWPOLY: pa.array(flags[LOWPOLY], type=pa.bool_()),
            "metadata_ok": pa.array(~failed, type=pa.bool_()),
            "reasons": reasons_column(flags, METADATA_REASONS),
        }
    )


__all__ = [
    "METADATA_REASONS",
    "REQUIRED_COLUMNS",
    "lowpoly_column",
    "lowpoly_strings",
    "metadata_pass",
    "no_caption_column",
    "reasons_column",
]
