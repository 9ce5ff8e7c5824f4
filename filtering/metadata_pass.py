"""The cheap metadata-only filter cascade over a whole table, vectorised with pyarrow.

Input: a ``pyarrow.Table`` with columns ``uid`` (string) and the columns the registry's
``metadata`` criteria read (``filtering.criteria.FILTER_CRITERIA``; today ``name`` (string,
nullable), ``tags`` (list<string>, nullable; null = no tags) and ``caption`` (string, nullable;
the Cap3D caption joined in by ``pipelines.ingest``)). Output (``metadata_pass``): one row per
input row, same order, with ``uid``, one boolean column per metadata criterion (cascade order:
``no_caption``, ``lowpoly``), ``metadata_ok`` (none failed), and ``reasons`` (list<string> of
the failing reason names, in cascade order).

The rules are exactly the per-row ones in ``filtering.criteria`` (``has_caption``,
``is_lowpoly``), evaluated column-wise by their vectorised forms (``no_caption_column``,
``lowpoly_column``: the tags list column is flattened once, the lowpoly regex (RE2, same pattern
as the Python one) runs over all tags and names, and matches are scattered back to rows with
``list_parent_indices``). No Python code runs per row.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from filtering.criteria import (
    CriterionParams,
    criterion_names,
    lowpoly_column,
    lowpoly_strings,
    no_caption_column,
    stage_criteria,
)


def required_columns() -> tuple[str, ...]:
    """``uid`` and every column a metadata criterion of the registry reads."""
    return ("uid", *dict.fromkeys(c for m in stage_criteria("metadata") for c in m.columns))


METADATA_REASONS = criterion_names("metadata")
"""The reasons this pass decides, in the order they appear in ``reasons`` (the registry's
metadata criteria)."""

REQUIRED_COLUMNS = required_columns()


def reasons_column(flags: dict[str, np.ndarray], order: tuple[str, ...]) -> pa.ListArray:
    """A list<string> column holding, per row, the names in ``order`` whose flag is set."""
    rows = len(next(iter(flags.values()))) if flags else 0
    stacked = np.zeros((rows, len(order)), dtype=bool)  # (rows, reasons)
    for i, name in enumerate(order):
        stacked[:, i] = flags[name]
    offsets = np.zeros(rows + 1, dtype=np.int32)
    np.cumsum(stacked.sum(axis=1), out=offsets[1:])
    which = np.nonzero(stacked.reshape(-1))[0] % max(len(order), 1)  # row order, then reason
    values = pa.array(list(order), type=pa.string()).take(pa.array(which, type=pa.int64()))
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), values)


def metadata_pass(table: pa.Table, params: CriterionParams | None = None) -> pa.Table:
    """Run the registry's metadata criteria over ``table`` (see module docstring for the
    columns). Raises ``ValueError`` naming any missing required column."""
    required = required_columns()
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ValueError(
            f"metadata table lacks column(s) {missing}; has {table.column_names} "
            f"(required: {list(required)})"
        )
    params = params or CriterionParams()
    flags = {
        c.name: np.asarray(c.check(table, params), dtype=bool).reshape(table.num_rows)
        for c in stage_criteria("metadata")
    }
    failed = np.zeros(table.num_rows, dtype=bool)
    for mask in flags.values():
        failed |= mask
    return pa.table(
        {
            "uid": table["uid"],
            **{name: pa.array(mask, type=pa.bool_()) for name, mask in flags.items()},
            "metadata_ok": pa.array(~failed, type=pa.bool_()),
            "reasons": reasons_column(flags, tuple(flags)),
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
    "required_columns",
]
