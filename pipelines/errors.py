"""Exceptions that mean "bad input or bad usage": the CLI prints them as one line, exit 2.

:func:`user_errors` is what the CLI catches: :data:`USER_ERRORS` plus the user errors of modules
too heavy to import only to name their exception (:data:`LAZY_USER_ERRORS`: the model code
imports torch, seconds). An exception of a module that was never imported cannot have been
raised, so those are looked up in ``sys.modules`` only, and a command that fails on a bad path
does not pay for importing torch.
"""

from __future__ import annotations

import sys

from evaluation.datasets import DatasetError
from evaluation.predictors import PredictorError
from evaluation.run_records import EvaluationInputError
from filtering.cap3d import CaptionsError
from filtering.objaverse_cache import CacheError
from pipelines.configs import ConfigError
from pipelines.runner import StageLocked
from pipelines.schema import ManifestError
from pipelines.storage import StorageFault, UnsafeUidError
from rendering.backends.base import BackendUnavailable

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    ManifestError,
    CacheError,
    CaptionsError,
    UnsafeUidError,
    BackendUnavailable,
    StageLocked,
    StorageFault,
    EvaluationInputError,
    DatasetError,
    PredictorError,
    FileNotFoundError,
)

LAZY_USER_ERRORS: tuple[tuple[str, str], ...] = (("instantmesh.checkpoint", "CheckpointError"),)
"""``(module, class)`` of user errors whose modules are imported only when a job needs them."""


def user_errors() -> tuple[type[BaseException], ...]:
    """:data:`USER_ERRORS` and the :data:`LAZY_USER_ERRORS` of the modules imported so far."""
    lazy = (getattr(sys.modules.get(module), name, None) for module, name in LAZY_USER_ERRORS)
    return USER_ERRORS + tuple(c for c in lazy if isinstance(c, type))
