"""What a library function needs to become a pipeline stage (plain Python, no Ray here).

A ``Stage`` wraps a per-item function ``process(row, ctx) -> dict`` from one of the libraries.
The runner (``pipelines.runner``) maps it over a manifest, catches per-item exceptions and turns
them into status rows, publishes file outputs atomically and resumes interrupted runs.

Rules for ``process``:

- it gets one manifest row (a ``dict``) and an ``ItemContext``;
- it returns a dict whose keys are the columns of ``Stage.result_schema`` (missing keys become
  nulls; unknown keys are a bug and fail the item);
- for stages with file outputs (``Stage.item_output`` set) it writes only into
  ``ctx.scratch_dir``; the runner validates (``Stage.validate``) and publishes that directory to
  ``<out>/<item_output>/<uid>/`` with a completion marker written last;
- it raises on failure (any exception becomes a ``failed`` row with its type and message) or
  raises ``SkipItem`` to record a ``skipped`` row with a reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipelines.schema import STATUS_COLUMNS


class SkipItem(Exception):
    """Raised by a stage's ``process`` to record the item as ``skipped`` with a reason."""


@dataclass
class ItemContext:
    """Per-item information handed to ``Stage.process``."""

    uid: str
    attempt: int
    config: Any
    """The stage's config dataclass (the same object for every item)."""
    state: Any = None
    """What ``Stage.setup`` returned in this worker (a loaded model, a renderer process...)."""
    scratch_dir: Path | None = None
    """Local directory to write file outputs into (only for stages with ``item_output``)."""


ProcessFn = Callable[[dict[str, Any], ItemContext], dict[str, Any]]
SetupFn = Callable[[Any], Any]
ValidateFn = Callable[[Path, dict[str, Any]], None]
FingerprintFn = Callable[[dict[str, Any], Any], str]


@dataclass(frozen=True)
class Stage:
    """A named per-item job step.

    ``process``, ``setup``, ``validate`` and ``input_fingerprint`` must be importable
    module-level callables (or picklable objects holding them: a ``functools.partial``, an
    instance of a module-level class with ``__call__``) so that Ray can ship them to workers.
    """

    name: str
    process: ProcessFn
    result_schema: pa.Schema = field(default_factory=lambda: pa.schema([]))
    item_output: str | None = None
    """Folder (relative to the job's output root) that receives ``<uid>/`` per item; ``None``
    for stages whose only output is their result columns."""
    setup: SetupFn | None = None
    """Called once per worker with the stage config; its return value is ``ctx.state``. If the
    returned object has a ``close()`` method it is called when the worker is shut down."""
    validate: ValidateFn | None = None
    """Called on the scratch directory and result before publishing; raise to fail the item."""
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    input_fingerprint: FingerprintFn | None = None
    """``(row, config) -> str``: identity of the item's inputs that live outside the config and
    the manifest (e.g. the prediction an evaluation scores). It enters the item's hash, so on
    resume an item whose inputs changed is redone although the config did not. Must be cheap
    and must not raise."""

    def __post_init__(self) -> None:
        if not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"stage name {self.name!r} must be alphanumeric with '_' or '-'")
        reserved = (set(self.result_schema.names) & set(STATUS_COLUMNS)) - {"uid"}
        if reserved:
            raise ValueError(f"stage {self.name}: result columns {sorted(reserved)} are reserved")
