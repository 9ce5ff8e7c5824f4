"""The stage lock of a ``file://`` output lives in that folder, not in a relative ``file:`` dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.runner import stage_lock


def test_file_url_lock_is_taken_in_the_stage_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    stage = tmp_path / "out" / "render"
    with stage_lock(f"file://{stage}"):
        assert (stage / ".lock").is_file()
    assert not (work / "file:").exists()
    assert list(work.iterdir()) == []
