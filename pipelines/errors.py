"""Exceptions that mean "bad input or bad usage": the CLI prints them as one line, exit 2."""

from __future__ import annotations

from evaluation.datasets import DatasetError
from evaluation.predictors import PredictorError
from evaluation.run_records import EvaluationInputError
from filtering.cap3d import CaptionsError
from filtering.objaverse_cache import CacheError
from instantmesh.checkpoint import CheckpointError
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
    CheckpointError,
    EvaluationInputError,
    DatasetError,
    PredictorError,
    FileNotFoundError,
)
