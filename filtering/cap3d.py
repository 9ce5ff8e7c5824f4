"""Cap3D captions (``Cap3D_automated_Objaverse_full.csv``): no header, two columns (uid,
caption), every field CSV-quoted. Captions contain commas and quotes, so this is read with a
real CSV parser, never split on commas."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path


class CaptionsError(ValueError):
    """A captions file that cannot be parsed; names the file and the line."""


def read_captions(path: str | os.PathLike[str]) -> dict[str, str]:
    """``{uid: caption}``. A row without exactly two fields raises ``CaptionsError``."""
    path = Path(path)
    if not path.is_file():
        raise CaptionsError(f"{path}: captions file not found")
    out: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for lineno, row in enumerate(csv.reader(f, strict=True), start=1):
            if not row:
                continue
            if len(row) != 2:
                raise CaptionsError(
                    f"{path}:{lineno}: expected 2 fields (uid, caption), got {len(row)}"
                )
            uid, caption = row
            out[uid.strip()] = caption
    return out


def write_captions(path: str | os.PathLike[str], captions: Mapping[str, str]) -> None:
    """Write ``{uid: caption}`` in the Cap3D layout (no header, all fields quoted)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n")
        for uid, caption in captions.items():
            writer.writerow([uid, caption])
