from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines import storage


@pytest.mark.parametrize("uid", ["abc", "0a1b2c3d" * 4, "toy_train_001", "Fixture_Box-01.v2"])
def test_check_uid_accepts_safe_names(uid: str) -> None:
    assert storage.check_uid(uid) == uid


@pytest.mark.parametrize(
    "uid", ["", "../x", "a/b", "a\\b", "..", "a..b", ".hidden", "x" * 201, "a b"]
)
def test_check_uid_refuses_unsafe_names(uid: str) -> None:
    with pytest.raises(storage.UnsafeUidError, match="not a safe path component"):
        storage.check_uid(uid)


def test_atomic_write_leaves_no_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.txt"
    storage.atomic_write_text(str(target), "one")
    storage.atomic_write_text(str(target), "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["b.txt"]


def _make_item(tmp_path: Path, name: str, files: dict[str, bytes]) -> Path:
    d = tmp_path / name
    d.mkdir()
    for rel, data in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)
    return d


def test_publish_dir_marker_written_last_and_lists_files(tmp_path: Path) -> None:
    scratch = _make_item(tmp_path, "scratch", {"000.png": b"abc", "sub/x.npz": b"12345"})
    final = tmp_path / "out" / "layout" / "uid1"
    assert storage.read_marker(str(final)) is None
    storage.publish_dir(scratch, str(final), {"config_hash": "h1"})
    marker = storage.read_marker(str(final))
    assert marker is not None
    assert marker["config_hash"] == "h1"
    assert marker["files"] == {"000.png": 3, "sub/x.npz": 5}
    assert (final / "000.png").read_bytes() == b"abc"
    assert not scratch.exists()
    # the staging area is empty after publishing
    assert list((final.parent / storage.STAGING_DIR).iterdir()) == []


def test_publish_replaces_a_partial_previous_attempt(tmp_path: Path) -> None:
    final = tmp_path / "out" / "uid1"
    final.mkdir(parents=True)
    (final / "stale.png").write_bytes(b"half-written")  # a killed run: files but no marker
    assert storage.read_marker(str(final)) is None
    scratch = _make_item(tmp_path, "scratch", {"000.png": b"new"})
    storage.publish_dir(scratch, str(final), {"config_hash": "h"})
    assert sorted(p.name for p in final.iterdir()) == ["000.png", storage.MARKER_NAME]


def test_unparseable_marker_does_not_count_as_done(tmp_path: Path) -> None:
    final = tmp_path / "uid1"
    final.mkdir()
    (final / storage.MARKER_NAME).write_text("{truncated")
    assert storage.read_marker(str(final)) is None


def test_remote_urls_use_the_same_code_path(tmp_path: Path) -> None:
    """memory:// stands in for s3:// (same fsspec calls, no network)."""
    base = "memory://imesh-test/run1"
    storage.atomic_write_text(storage.join(base, "a.json"), json.dumps({"x": 1}))
    assert json.loads(storage.read_text(storage.join(base, "a.json"))) == {"x": 1}
    scratch = _make_item(tmp_path, "scratch", {"000.png": b"px"})
    storage.publish_dir(scratch, storage.join(base, "layout", "uid9"), {"config_hash": "c"})
    assert storage.read_marker(storage.join(base, "layout", "uid9"))["files"] == {"000.png": 2}  # type: ignore[index]
    assert storage.list_files(base, ".json") == ["memory:///imesh-test/run1/a.json"]
    local, temporary = storage.local_path(storage.join(base, "a.json"), tmp_path)
    assert temporary and json.loads(local.read_text()) == {"x": 1}
    storage.remove(base)
    assert not storage.exists(base)
