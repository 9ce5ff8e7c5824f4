"""Shared fixtures: one local Ray for the whole session, one procedural fixture set."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    from pipelines.ray_session import ray_session

    with ray_session(num_cpus=2):
        yield


@pytest.fixture(scope="session")
def fixture_set(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The default procedural fixture datasets (seed 0), generated once per test session."""
    from pipelines.fixtures import FixturesConfig, fixture_paths, make_fixtures

    root = tmp_path_factory.mktemp("fixtures") / "fx"
    record = make_fixtures(FixturesConfig(out=str(root), seed=0))
    return {"root": root, "record": record, "paths": fixture_paths(root)}


@pytest.fixture(scope="session")
def objaverse_manifest(
    fixture_set: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    from pipelines.ingest import IngestConfig, run_ingest

    out = tmp_path_factory.mktemp("manifest") / "objaverse.parquet"
    run_ingest(
        IngestConfig(
            out=str(out),
            cache=str(fixture_set["paths"]["objaverse_cache"]),
            captions=str(fixture_set["paths"]["captions"]),
        )
    )
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random Zero123++ diffusers folder and a saved ``tiny-mesh`` LRM (built once)."""
    import torch
    from test_zero123pp import build_tiny_zero123pp

    from instantmesh import build_model
    from instantmesh.checkpoint import save_model

    root = tmp_path_factory.mktemp("tiny_models")
    torch.manual_seed(0)
    return {
        "zero123pp": build_tiny_zero123pp(root / "zero123plus-v1.2"),
        "lrm": save_model(build_model("tiny-mesh"), root / "tiny-mesh"),
    }
