"""The bad-input corpus through ingest + filter: every bad GLB gets a decision naming its cause,
good objects are kept, broken metadata / captions fail with the file named."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pytest
from bad_corpus import good_mesh, write_mesh_corpus

from filtering.cap3d import write_captions
from filtering.objaverse_cache import CacheObject, sketchfab_annotation, write_cache
from pipelines.runner import RunOptions

GLB_KINDS = {
    "truncated_glb": "unreadable",
    "wrong_magic": "unreadable",
    "wrong_length": "unreadable",
    "lying_json_chunk": "unreadable",
    "empty_file": "unreadable",
    "undecodable_texture": "no_texture",
}


def _uid(name: str) -> str:
    return hashlib.md5(name.encode()).hexdigest()


@pytest.fixture
def bad_cache(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    corpus = write_mesh_corpus(tmp_path / "corpus")
    good = good_mesh(tmp_path / "corpus", "good.glb").read_bytes()
    objects, expected = [], {}
    for kind, reason in GLB_KINDS.items():
        uid = _uid(kind)
        objects.append(
            CacheObject(
                uid,
                corpus[kind][0].read_bytes(),
                sketchfab_annotation(uid, kind, ["fixture"], face_count=12, vertex_count=8),
            )
        )
        expected[uid] = reason
    for i in range(2):
        uid = _uid(f"good{i}")
        objects.append(
            CacheObject(
                uid,
                good,
                sketchfab_annotation(uid, f"good {i}", ["fixture"], face_count=12, vertex_count=8),
            )
        )
        expected[uid] = ""
    cache = tmp_path / "cache"
    write_cache(cache, objects)
    captions = tmp_path / "captions.csv"
    write_captions(captions, {u: "a box" for u in expected})
    return cache, captions, expected


@pytest.mark.usefixtures("ray_local")
def test_bad_glbs_get_precise_decisions(
    bad_cache: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    from pipelines.filter import FilterConfig, run_filter

    cache, captions, expected = bad_cache
    result = run_filter(
        FilterConfig(
            out=str(tmp_path / "f"),
            cache=str(cache),
            captions=str(captions),
            silhouette_size=32,
            run=RunOptions(workers=1, progress=False),
        )
    )
    rows = {r["uid"]: r for r in result.decisions.to_pylist()}
    assert set(rows) == set(expected)
    for uid, reason in expected.items():
        row = rows[uid]
        if not reason:
            assert row["kept"], row["details"]
        else:
            assert not row["kept"] and row["reasons"][:1] == [reason], (uid, row["details"])
            assert any(d.startswith(reason) for d in row["details"])


def test_malformed_metadata_shard_and_captions_name_the_file(
    bad_cache: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    from pipelines.cli import main

    cache, _, _ = bad_cache
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text('uid1,"a caption"\nuid2,too,many,fields\n')
    rc = main(
        ["filter", "--out", str(tmp_path / "x"), "--cache", str(cache), "--captions", str(bad_csv)]
    )
    assert rc == 2
    shard = next((cache / "hf-objaverse-v1" / "metadata").glob("*.json.gz"))
    shard.write_bytes(gzip.compress(b"{not json"))
    from filtering.objaverse_cache import read_cache

    rows = read_cache(cache, compute_sha256=False)  # the other shards still load
    errors = [r["metadata_error"] for r in rows if r["shard"] == shard.name.split(".")[0]]
    assert errors and all(f"{shard.name} is unreadable" in e for e in errors)
