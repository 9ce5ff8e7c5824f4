"""``imesh filter`` on the procedural Objaverse-shaped cache: every fixture lands where it should."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from filtering.funnel import CRITERIA, ERROR, funnel_rows
from pipelines.runner import RunOptions

pytestmark = pytest.mark.usefixtures("ray_local")


def _cfg(fixture_set: dict[str, Any], out: Path, **kw: Any) -> Any:
    from pipelines.filter import FilterConfig

    return FilterConfig(
        out=str(out),
        cache=str(kw.pop("cache", fixture_set["paths"]["objaverse_cache"])),
        captions=str(fixture_set["paths"]["captions"]),
        silhouette_size=48,
        run=RunOptions(workers=1, shard_size=8, progress=False),
        **kw,
    )


def test_every_fixture_lands_where_it_should(fixture_set: dict[str, Any], tmp_path: Path) -> None:
    from pipelines.filter import run_filter

    result = run_filter(_cfg(fixture_set, tmp_path / "f"))
    rows = {r["uid"]: r for r in result.decisions.to_pylist()}
    expected = {o["uid"]: o["expected_reasons"] for o in fixture_set["record"]["objaverse"]}
    assert set(rows) == set(expected)
    for uid, reasons in expected.items():
        row = rows[uid]
        assert row["kept"] == (not reasons), (uid, row["details"])
        # With the cascade an object is dropped by its first failing criterion.
        assert row["reasons"][:1] == reasons[:1], (uid, row["reasons"])

    good = json.loads((tmp_path / "f" / "filtered_obj_name.json").read_text())
    assert sorted(good["good_objs"]) == sorted(u for u in expected if not expected[u])
    assert good["good_objs"] == [u for u in rows if rows[u]["kept"]]  # input order
    assert good["all_objs"] == list(rows)

    funnel = {r.criterion: r for r in funnel_rows(result.decisions)}
    assert sum(r.first_failing for r in funnel.values()) + result.kept == len(rows)
    # The cascade: the coverage pass only saw survivors of metadata and file checks.
    n_meta_fail = sum(1 for r in expected.values() if r and r[0] in ("no_caption", "lowpoly"))
    assert funnel["unreadable"].evaluated == len(rows) - n_meta_fail
    # An unreadable file is judged on nothing else (its other file criteria stay null).
    assert funnel["no_texture"].evaluated == len(rows) - n_meta_fail - funnel["unreadable"].failing
    assert funnel["tiny_in_view"].evaluated == result.kept + funnel["tiny_in_view"].first_failing
    md = (tmp_path / "f" / "funnel.md").read_text()
    assert f"kept: **{result.kept}**" in md and "| coverage |" in md
    assert (tmp_path / "f" / "funnel.svg").read_text().startswith("<svg")

    needle = next(
        o["uid"] for o in fixture_set["record"]["objaverse"] if o["kind"] == "tiny_in_view"
    )
    assert rows[needle]["min_coverage"] < 0.10

    # Resume: the Ray stages skip everything that is done.
    again = run_filter(_cfg(fixture_set, tmp_path / "f"))
    assert all(r.processed == 0 for r in again.reports)
    assert again.decisions.equals(result.decisions)


def test_no_cascade_evaluates_every_criterion_on_every_object(
    fixture_set: dict[str, Any], tmp_path: Path
) -> None:
    from pipelines.filter import run_filter

    result = run_filter(_cfg(fixture_set, tmp_path / "f", cascade=False))
    readable = [r for r in result.decisions.to_pylist() if not r["unreadable"]]
    for c in CRITERIA:
        evaluated = [r for r in result.decisions.to_pylist() if r[c] is not None]
        assert len(evaluated) >= len(readable), c
    rows = {r["uid"]: r for r in result.decisions.to_pylist()}
    for o in fixture_set["record"]["objaverse"]:
        if o["kind"] != "unreadable":
            failing = [c for c in CRITERIA if rows[o["uid"]][c]]
            assert failing == o["expected_reasons"], (o["kind"], failing)


def test_missing_glb_and_missing_shard_are_errors_not_silent(
    fixture_set: dict[str, Any], tmp_path: Path
) -> None:
    from pipelines.filter import run_filter

    cache = tmp_path / "cache"
    shutil.copytree(fixture_set["paths"]["objaverse_cache"], cache)
    glbs = sorted(cache.rglob("*.glb"))
    glbs[0].unlink()
    shards = sorted((cache / "hf-objaverse-v1" / "metadata").glob("*.json.gz"))
    shards[-1].unlink()
    result = run_filter(_cfg(fixture_set, tmp_path / "f", cache=cache))
    errors = [r for r in result.decisions.to_pylist() if r[ERROR]]
    assert errors and all(not r["kept"] for r in errors)
    details = " ".join(d for r in errors for d in r["details"])
    assert "GLB not in the cache" in details and "metadata shard" in details
    assert glbs[0].stem in details


def test_filter_cli_needs_captions(fixture_set: dict[str, Any], tmp_path: Path) -> None:
    from pipelines.cli import main

    rc = main(
        [
            "filter",
            "--out",
            str(tmp_path / "x"),
            "--cache",
            str(fixture_set["paths"]["objaverse_cache"]),
        ]
    )
    assert rc == 2
