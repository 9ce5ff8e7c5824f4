"""The repository stands alone: no tracked file points at documents outside it.

Everything the code and tests rely on lives in the repository (``docs/protocol.md`` for the
protocol decisions and their sources, the checkpoint key manifests as package data under
``instantmesh/manifests/``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Spelled in pieces so that this file does not match itself.
FORBIDDEN = ("../" + "shared", "shared " + "FACTS", "/work/" + "shared")


def _tracked_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    return [ROOT / name for name in out.decode().split("\0") if name]


def _is_binary(data: bytes) -> bool:
    """Git's rule: a NUL byte in the first 8000 bytes."""
    return b"\0" in data[:8000]


def test_no_tracked_file_points_outside_the_repository() -> None:
    files = _tracked_files()
    assert len(files) > 50  # the listing worked
    hits = []
    for path in files:
        if not path.is_file():  # deleted in the working tree, not yet committed
            continue
        data = path.read_bytes()
        if _is_binary(data):
            continue
        text = data.decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            hits += [
                f"{path.relative_to(ROOT)}:{number}: {needle!r}"
                for needle in FORBIDDEN
                if needle in line
            ]
    assert hits == []


def test_protocol_document_is_tracked_and_covers_the_protocol() -> None:
    text = (ROOT / "docs" / "protocol.md").read_text()
    for topic in (
        "F-Score",
        "0.2",
        "LPIPS",
        "VGG",
        "Chamfer",
        "16K",
        "21 views",
        "GSO",
        "OmniObject3D",
        "[-1, 1]^3",
        "arXiv 2404.07191",
    ):
        assert topic in text, topic
    assert ROOT / "docs" / "protocol.md" in _tracked_files()
