"""The filter criteria registry (``filtering.criteria.FILTER_CRITERIA``): one entry per criterion,
read by the metadata pass, the decision table, the funnel, ``imesh filter`` and its ``--help``.
Adding a criterion is its check function plus one entry."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from filtering import criteria as C
from filtering import funnel
from filtering.cap3d import write_captions
from filtering.metadata_pass import METADATA_REASONS, REQUIRED_COLUMNS, metadata_pass
from filtering.objaverse_cache import CacheObject, sketchfab_annotation, write_cache
from rendering import procedural as pg

REPO = Path(__file__).resolve().parents[1]


def test_registry_holds_the_papers_criteria_in_cascade_order() -> None:
    entries = list(C.FILTER_CRITERIA.values())
    assert [(c.name, c.stage) for c in entries] == [
        ("no_caption", "metadata"),
        ("lowpoly", "metadata"),
        ("unreadable", "files"),
        ("no_texture", "files"),
        ("multiple_parts", "files"),
        ("tiny_in_view", "coverage"),
    ]
    assert C.CASCADE_STAGES == ("metadata", "files", "coverage")
    assert C.gate_names() == ("unreadable",)
    assert C.REASONS == tuple(C.FILTER_CRITERIA)
    assert C.criterion_names("files") == ("unreadable", "no_texture", "multiple_parts")
    assert all(c.description and "\n" not in c.description for c in entries)
    # everything downstream is derived from the entries
    assert funnel.CASCADE == (
        ("metadata", ("no_caption", "lowpoly")),
        ("files", ("unreadable", "no_texture", "multiple_parts")),
        ("coverage", ("tiny_in_view",)),
    )
    assert funnel.CRITERIA == C.criterion_names()
    assert {k: v for k, v in funnel.DESCRIPTIONS.items() if k != funnel.ERROR} == {
        c.name: c.description for c in entries
    }
    assert funnel.DECISION_SCHEMA.names == [
        "uid",
        *C.criterion_names(),
        "error",
        "kept",
        "reasons",
        "details",
        "min_coverage",
    ]
    assert METADATA_REASONS == ("no_caption", "lowpoly")
    assert set(REQUIRED_COLUMNS) == {"uid", "caption", "name", "tags"}
    helptext = C.criteria_help()
    for c in entries:
        assert f"{c.name} ({c.description})" in helptext


def test_pipeline_and_funnel_name_no_criterion_themselves() -> None:
    """pipelines/filter.py and filtering/funnel.py hold no criterion names: no imported name
    constants, no string literals (docstrings aside); the registry is their only source."""
    constants = {"NO_TEXTURE", "TINY_IN_VIEW", "MULTIPLE_PARTS", "NO_CAPTION", "LOWPOLY"}
    constants.add("UNREADABLE")
    names = set(C.FILTER_CRITERIA)
    for rel in ("pipelines/filter.py", "filtering/funnel.py", "filtering/metadata_pass.py"):
        tree = ast.parse((REPO / rel).read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert not constants & {a.name for a in node.names}, (rel, node.lineno)
            if isinstance(node, ast.Constant) and id(node) not in docstrings:
                assert node.value not in names, (rel, node.lineno, node.value)


def test_registry_refuses_inconsistent_entries() -> None:
    def check(table: pa.Table, params: C.CriterionParams) -> np.ndarray:
        return np.zeros(table.num_rows, dtype=bool)

    with pytest.raises(ValueError, match="stage"):
        C.Criterion("x", "renders", "d", check)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="columns"):
        C.Criterion("x", "metadata", "d", check)
    with pytest.raises(ValueError, match="gate"):
        C.Criterion("x", "metadata", "d", check, gate=True, columns=("name",))
    for bad in ("kept", "error", "Bad Name", ""):
        with pytest.raises(ValueError, match="decision column"):
            C.Criterion(bad, "files", "d", check)
    entry = C.Criterion("x", "files", "d", check)
    with pytest.raises(ValueError, match="registered twice"):
        C._registry(entry, entry)
    # cascade order: by stage, then as registered
    late = C.Criterion("y", "metadata", "d", check, columns=("name",))
    assert list(C._registry(entry, late)) == ["y", "x"]


def test_object_reasons_gate_and_flags(tmp_path: Path) -> None:
    good = tmp_path / "good.glb"
    good.write_bytes(
        pg.glb_bytes(pg.textured(pg.make_shape("box", 0), pg.make_texture("noise", 0)))
    )
    bare = tmp_path / "bare.glb"
    bare.write_bytes(pg.glb_bytes(pg.make_shape("box", 0)))
    broken = tmp_path / "broken.glb"
    broken.write_bytes(b"glTF not really")
    params = C.CriterionParams()
    assert C.object_reasons("files", C.MeshFile(good), params) == []
    assert C.stage_flags("files", []) == {
        "unreadable": False,
        "no_texture": False,
        "multiple_parts": False,
    }
    reasons = C.object_reasons("files", C.MeshFile(bare), params)
    assert [C.reason_name(r) for r in reasons] == ["no_texture"]
    assert C.stage_flags("files", reasons) == {
        "unreadable": False,
        "no_texture": True,
        "multiple_parts": False,
    }
    # a failing gate stops the stage: the other file criteria are not evaluated (absent)
    reasons = C.object_reasons("files", C.MeshFile(broken), params)
    assert [C.reason_name(r) for r in reasons] == ["unreadable"] and str(broken) in reasons[0]
    assert C.stage_flags("files", reasons) == {"unreadable": True}
    assert C.file_checks(broken) == reasons
    # the coverage stage reads its threshold from the params
    assert C.object_reasons("coverage", [0.5, 0.2], params) == []
    strict = C.CriterionParams(coverage_threshold=0.3)
    assert [C.reason_name(r) for r in C.object_reasons("coverage", [0.5, 0.2], strict)] == [
        "tiny_in_view"
    ]
    with pytest.raises(ValueError, match="over a table"):
        C.object_reasons("metadata", None, params)


def test_metadata_pass_runs_the_registry_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    """A metadata entry added to the registry is a column and a reason of the pass."""

    def untitled(table: pa.Table, params: C.CriterionParams) -> np.ndarray:
        return np.array([not (n or "").strip() for n in table["name"].to_pylist()], dtype=bool)

    extra = C.Criterion("untitled", "metadata", "no name", untitled, columns=("name",))
    registry = C._registry(*C.FILTER_CRITERIA.values(), extra)
    monkeypatch.setattr(C, "FILTER_CRITERIA", registry)
    table = pa.table(
        {
            "uid": ["a", "b"],
            "name": ["lowpoly fox", " "],
            "tags": pa.array([[], None], type=pa.list_(pa.string())),
            "caption": [None, "a fox"],
        }
    )
    out = metadata_pass(table)
    assert out.column_names == [
        "uid",
        "no_caption",
        "lowpoly",
        "untitled",
        "metadata_ok",
        "reasons",
    ]
    assert out.to_pylist() == [
        {
            "uid": "a",
            "no_caption": True,
            "lowpoly": True,
            "untitled": False,
            "metadata_ok": False,
            "reasons": ["no_caption", "lowpoly"],
        },
        {
            "uid": "b",
            "no_caption": False,
            "lowpoly": False,
            "untitled": True,
            "metadata_ok": False,
            "reasons": ["untitled"],
        },
    ]


ADDED_CHECKS = '''

HEAVY = "heavy"


def untitled_mask(table: pa.Table, params: CriterionParams) -> np.ndarray:
    """Test criterion: the object has no name."""
    del params
    return np.array([not (n or "").strip() for n in table["name"].to_pylist()], dtype=bool)


def heavy_reason(file: MeshFile, params: CriterionParams) -> str | None:
    """Test criterion: more than 100 triangles."""
    del params
    faces = len(file.mesh.faces)
    return f"{HEAVY}: {file.where}: {faces} faces > 100" if faces > 100 else None

'''

ADDED_ENTRIES = """    Criterion("untitled", "metadata", "no name", untitled_mask, columns=("name",)),
    Criterion(HEAVY, "files", "more than 100 triangles", heavy_reason),
"""


def _source_with_added_criteria(dest: Path) -> Path:
    """A copy of the ``filtering`` package whose criteria module has two more criteria: for
    each, one check function and one registry entry, nothing else."""
    shutil.copytree(REPO / "filtering", dest / "filtering")
    path = dest / "filtering" / "criteria.py"
    text = path.read_text()
    anchor = "\ndef _registry("
    closing = '\n)\n"""Every filter criterion'
    assert text.count(anchor) == 1 and text.count(closing) == 1
    text = text.replace(anchor, ADDED_CHECKS + anchor)
    text = text.replace(closing, "\n" + ADDED_ENTRIES.rstrip("\n") + closing)
    path.write_text(text)
    return dest


def _cache(root: Path) -> tuple[Path, Path, dict[str, str]]:
    def glb(shape: str) -> bytes:
        return pg.glb_bytes(pg.textured(pg.make_shape(shape, 0), pg.make_texture("checker", 0)))

    kinds = {"kept0": ("box", "crate"), "untitled0": ("box", ""), "heavy0": ("sphere", "ball")}
    uids = {kind: f"{i:032x}" for i, kind in enumerate(kinds, start=1)}
    write_cache(
        root / "cache",
        [
            CacheObject(
                uids[kind],
                glb(shape),
                sketchfab_annotation(uids[kind], name, ["prop"], face_count=12, vertex_count=8),
            )
            for kind, (shape, name) in kinds.items()
        ],
    )
    write_captions(root / "captions.csv", {u: "an object" for u in uids.values()})
    return root / "cache", root / "captions.csv", uids


def test_adding_a_criterion_is_one_check_and_one_entry(tmp_path: Path) -> None:
    """Two criteria added to the source (a metadata one and a file one: a check function and a
    registry entry each) reach ``--help``, the Ray stages, the decision table, the funnel and
    ``filtered_obj_name.json`` with no other change."""
    src = _source_with_added_criteria(tmp_path / "src")
    cache, captions, uids = _cache(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(REPO)])}
    env.setdefault("RAY_AUTH_MODE", "disabled")
    cli = [sys.executable, "-m", "pipelines.cli", "filter"]
    # cwd outside the repository: `python -m` puts the cwd first on sys.path
    run = {"env": env, "cwd": tmp_path, "capture_output": True, "text": True}
    helptext = subprocess.run([*cli, "--help"], check=True, timeout=120, **run).stdout
    flat = " ".join(helptext.replace("│", " ").split())  # the text without its box
    assert "untitled (no name)" in flat and "heavy (more than 100 triangles)" in flat

    out = tmp_path / "out"
    args = ["--cache", str(cache), "--captions", str(captions), "--out", str(out)]
    args += ["--silhouette-size", "32", "--run.workers", "1", "--run.no-progress"]
    done = subprocess.run([*cli, *args], timeout=300, **run)
    assert done.returncode == 0, done.stderr[-3000:]

    decisions = pq.read_table(out / "filter_decisions.parquet")
    assert decisions.column_names[:9] == [
        "uid",
        "no_caption",
        "lowpoly",
        "untitled",
        "unreadable",
        "no_texture",
        "multiple_parts",
        "heavy",
        "tiny_in_view",
    ]
    rows = {r["uid"]: r for r in decisions.to_pylist()}
    assert rows[uids["kept0"]]["kept"] and rows[uids["kept0"]]["heavy"] is False
    untitled = rows[uids["untitled0"]]
    assert untitled["untitled"] is True and untitled["reasons"] == ["untitled"]
    assert untitled["heavy"] is None  # the cascade dropped it before the file stage
    heavy = rows[uids["heavy0"]]
    assert heavy["reasons"] == ["heavy"] and heavy["tiny_in_view"] is None
    assert heavy["details"] == [f"heavy: {heavy['details'][0].split(': ', 2)[1]}: 1280 faces > 100"]
    good = json.loads((out / "filtered_obj_name.json").read_text())
    assert good["good_objs"] == [uids["kept0"]]
    md = (out / "funnel.md").read_text()
    assert "| `untitled` | no name | 1 | 1 / 3 |" in md
    assert "| `heavy` | more than 100 triangles | 1 | 1 / 2 |" in md
    assert "after heavy" in (out / "funnel.svg").read_text()
