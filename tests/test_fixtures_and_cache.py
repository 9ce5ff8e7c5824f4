from __future__ import annotations

import gzip
import hashlib
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from filtering.cap3d import CaptionsError, read_captions, write_captions
from filtering.objaverse_cache import CacheError, read_cache
from pipelines.fixtures import LOWPOLY_TAGS, FixturesConfig, make_fixtures


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_fixtures_are_byte_identical_for_a_seed(
    tmp_path: Path, fixture_set: dict[str, Any]
) -> None:
    again = tmp_path / "again"
    make_fixtures(FixturesConfig(out=str(again), seed=0))
    assert _tree_digest(again) == _tree_digest(fixture_set["root"])
    other = tmp_path / "other"
    make_fixtures(FixturesConfig(out=str(other), seed=1, gso_objects=1, omni3d_categories={"a": 1}))
    assert _tree_digest(other) != _tree_digest(again)


def test_objaverse_layout_matches_the_real_cache(fixture_set: dict[str, Any]) -> None:
    versioned = fixture_set["paths"]["objaverse_cache"] / "hf-objaverse-v1"
    with gzip.open(versioned / "object-paths.json.gz") as f:
        paths = json.load(f)
    record = fixture_set["record"]["objaverse"]
    assert set(paths) == {o["uid"] for o in record}
    for uid, rel in paths.items():
        assert rel == f"glbs/{rel.split('/')[1]}/{uid}.glb"
        assert (versioned / rel).is_file()
        assert len(uid) == 32 and int(uid, 16) >= 0
    shards = sorted(p.name for p in (versioned / "metadata").iterdir())
    assert shards == ["000-000.json.gz", "000-001.json.gz"]
    with gzip.open(versioned / "metadata" / "000-000.json.gz") as f:
        ann = next(iter(json.load(f).values()))
    for key in ("uid", "name", "tags", "faceCount", "vertexCount", "license", "archives"):
        assert key in ann
    with gzip.open(versioned / "lvis-annotations.json.gz") as f:
        lvis = json.load(f)
    assert all(isinstance(v, list) for v in lvis.values()) and lvis


def test_every_rejection_reason_has_a_fixture(fixture_set: dict[str, Any]) -> None:
    objs = fixture_set["record"]["objaverse"]
    reasons = {r for o in objs for r in o["expected_reasons"]}
    assert reasons == {
        "no_texture",
        "tiny_in_view",
        "multiple_parts",
        "no_caption",
        "lowpoly",
        "unreadable",
    }
    assert sum(o["expected_kept"] for o in objs) >= 10
    lowpoly_tags = {t for o in objs if o["kind"] == "lowpoly" for t in o["tags"]}
    assert set(LOWPOLY_TAGS) <= lowpoly_tags
    assert any("lowpoly" in o["name"].lower() for o in objs if o["kind"] == "lowpoly")


def test_captions_csv_is_quoted_without_header(fixture_set: dict[str, Any]) -> None:
    text = fixture_set["paths"]["captions"].read_text()
    first = text.splitlines()[0]
    assert first.startswith('"') and '","' in first  # quoted fields, no header row
    captions = read_captions(fixture_set["paths"]["captions"])
    objs = fixture_set["record"]["objaverse"]
    assert captions == {o["uid"]: o["caption"] for o in objs if o["caption"] is not None}
    assert any("," in c and '"' in c for c in captions.values())  # needs a real CSV parser


def test_captions_reader_names_a_malformed_line(tmp_path: Path) -> None:
    p = tmp_path / "caps.csv"
    write_captions(p, {"a": "x, y", "b": 'say "hi"'})
    assert read_captions(p) == {"a": "x, y", "b": 'say "hi"'}
    p.write_text(p.read_text() + '"c","d","e"\n')
    with pytest.raises(CaptionsError, match=r"caps.csv:3: expected 2 fields"):
        read_captions(p)


def test_gso_and_omni3d_layouts(fixture_set: dict[str, Any]) -> None:
    gso = fixture_set["paths"]["gso"]
    names = sorted(p.name for p in gso.iterdir())
    assert len(names) == 6
    obj = gso / names[0]
    assert (obj / "meshes" / "model.obj").read_text().startswith("mtllib model.mtl")
    assert "map_Kd texture.png" in (obj / "meshes" / "model.mtl").read_text()
    # the GSO quirk: the texture is NOT next to the OBJ but under materials/textures/
    assert not (obj / "meshes" / "texture.png").exists()
    assert (obj / "materials" / "textures" / "texture.png").is_file()
    assert f'name: "{names[0]}"' in (obj / "metadata.pbtxt").read_text()
    omni = fixture_set["paths"]["omni3d"] / "raw_scans"
    counts = {c.name: len(list(c.iterdir())) for c in omni.iterdir()}
    assert counts == {"toy_train": 6, "apple": 2, "chair": 3}
    scan = omni / "apple" / "apple_001" / "Scan"
    assert sorted(p.name for p in scan.iterdir()) == ["Scan.jpg", "Scan.mtl", "Scan.obj"]


def test_read_cache_through_objaverse_package_offline(
    fixture_set: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import objaverse

    def no_network(*a: object, **k: object) -> None:
        raise AssertionError("ingestion tried to download")

    monkeypatch.setattr(urllib.request, "urlretrieve", no_network)
    before = objaverse._VERSIONED_PATH
    rows = read_cache(fixture_set["paths"]["objaverse_cache"])
    assert objaverse._VERSIONED_PATH == before  # the package is left pointing where it was
    by_uid = {r["uid"]: r for r in rows}
    objs = fixture_set["record"]["objaverse"]
    assert set(by_uid) == {o["uid"] for o in objs}
    for o in objs:
        r = by_uid[o["uid"]]
        assert r["name"] == o["name"]
        assert r["tags"] == o["tags"]
        assert r["glb_present"] and Path(r["mesh_uri"]).is_file()
        assert r["sha256"] == hashlib.sha256(Path(r["mesh_uri"]).read_bytes()).hexdigest()
        assert r["metadata_error"] is None
    assert sum(r["lvis_category"] is not None for r in rows) >= 10


def test_missing_shard_and_missing_cache_are_reported(
    fixture_set: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    monkeypatch.setattr(
        urllib.request,
        "urlretrieve",
        lambda *a, **k: (_ for _ in ()).throw(AssertionError("download")),
    )
    cache = tmp_path / "cache"
    shutil.copytree(fixture_set["paths"]["objaverse_cache"], cache)
    (cache / "hf-objaverse-v1" / "metadata" / "000-001.json.gz").unlink()
    rows = read_cache(cache, compute_sha256=False)
    missing = [r for r in rows if r["shard"] == "000-001"]
    assert missing and all("000-001.json.gz missing" in r["metadata_error"] for r in missing)
    assert all(r["metadata_error"] is None for r in rows if r["shard"] == "000-000")
    with pytest.raises(CacheError, match="not an Objaverse cache root"):
        read_cache(tmp_path / "empty")
