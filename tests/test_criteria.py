"""Filter criteria (filtering.criteria) and the vectorised metadata pass (filtering.metadata_pass)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import trimesh

from filtering import criteria as C
from filtering.cap3d import read_captions
from filtering.metadata_pass import metadata_pass
from filtering.objaverse_cache import read_cache
from rendering import procedural as pg
from rendering.mesh_io import load_mesh, load_scene

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def objaverse(fixture_set: dict[str, Any]) -> dict[str, Any]:
    """The fixture cache read through the real reader, with captions and expected outcomes."""
    rows = read_cache(fixture_set["paths"]["objaverse_cache"], compute_sha256=False)
    captions = read_captions(fixture_set["paths"]["captions"])
    expected = {o["uid"]: o for o in fixture_set["record"]["objaverse"]}
    assert {r["uid"] for r in rows} == set(expected)
    return {"rows": rows, "captions": captions, "expected": expected}


def _rows(objaverse: dict[str, Any], *, kinds: set[str] | None = None) -> list[dict[str, Any]]:
    rows = objaverse["rows"]
    return [r for r in rows if kinds is None or objaverse["expected"][r["uid"]]["kind"] in kinds]


def _expects(objaverse: dict[str, Any], row: dict[str, Any], reason: str) -> bool:
    return reason in objaverse["expected"][row["uid"]]["expected_reasons"]


# --------------------------------------------------------------------------------------------
# Criteria on the fixture set.
# --------------------------------------------------------------------------------------------


def test_texture_check_on_fixtures(objaverse: dict[str, Any]) -> None:
    seen = set()
    for row in objaverse["rows"]:
        ok, reason = C.texture_check(row["mesh_uri"])
        exp = objaverse["expected"][row["uid"]]
        if "unreadable" in exp["expected_reasons"]:
            assert not ok and reason is not None
            assert C.reason_name(reason) == "unreadable" and row["uid"] in reason
        elif "no_texture" in exp["expected_reasons"]:
            assert not ok and reason is not None
            assert C.reason_name(reason) == "no_texture" and row["uid"] in reason
        else:
            assert ok and reason is None, (exp["kind"], reason)
        seen.add(exp["kind"])
    assert {"no_texture", "unreadable", "good"} <= seen


def test_multiple_parts_on_fixtures(objaverse: dict[str, Any]) -> None:
    kinds = {"good", "touching_parts", "multiple_parts"}
    rows = _rows(objaverse, kinds=kinds)
    assert {objaverse["expected"][r["uid"]]["kind"] for r in rows} == kinds
    for row in rows:
        kind = objaverse["expected"][row["uid"]]["kind"]
        ok, n_parts, reason = C.multiple_parts_check(load_mesh(row["mesh_uri"]))
        if _expects(objaverse, row, "multiple_parts"):
            assert not ok and n_parts == 4 and reason is not None
            assert C.reason_name(reason) == "multiple_parts"
        else:
            assert ok and n_parts == 1 and reason is None, (kind, n_parts, reason)
    touching = next(r for r in rows if objaverse["expected"][r["uid"]]["kind"] == "touching_parts")
    n_components, _ = C.component_labels(load_mesh(touching["mesh_uri"]))
    assert n_components == 2  # two components, one object


def test_geometry_only_mesh_matches_load_mesh(objaverse: dict[str, Any]) -> None:
    for row in _rows(objaverse, kinds={"good", "touching_parts", "multiple_parts"})[:6]:
        full = load_mesh(row["mesh_uri"])
        bare = C.geometry_only_mesh(load_scene(row["mesh_uri"]))
        np.testing.assert_allclose(bare.vertices, full.vertices)
        np.testing.assert_array_equal(bare.faces, full.faces)


def test_metadata_criteria_on_fixtures(objaverse: dict[str, Any]) -> None:
    for row in objaverse["rows"]:
        lowpoly = C.is_lowpoly(row["name"], row["tags"])
        captioned = C.has_caption(row["uid"], objaverse["captions"])
        assert lowpoly == _expects(objaverse, row, "lowpoly"), (row["name"], row["tags"])
        assert captioned != _expects(objaverse, row, "no_caption")


def test_all_criteria_reproduce_expected_reasons(objaverse: dict[str, Any]) -> None:
    """Every non-render reason of every fixture object, and nothing more."""
    for row in objaverse["rows"]:
        reasons = [C.reason_name(r) for r in C.file_checks(row["mesh_uri"])]
        if C.is_lowpoly(row["name"], row["tags"]):
            reasons.append("lowpoly")
        if not C.has_caption(row["uid"], objaverse["captions"]):
            reasons.append("no_caption")
        expected = set(objaverse["expected"][row["uid"]]["expected_reasons"]) - {"tiny_in_view"}
        assert set(reasons) == expected, (objaverse["expected"][row["uid"]]["kind"], reasons)


def test_metadata_pass_on_fixtures(objaverse: dict[str, Any]) -> None:
    rows = objaverse["rows"]
    table = pa.table(
        {
            "uid": [r["uid"] for r in rows],
            "name": [r["name"] for r in rows],
            "tags": pa.array([r["tags"] for r in rows], type=pa.list_(pa.string())),
            "caption": [objaverse["captions"].get(r["uid"]) for r in rows],
        }
    )
    out = metadata_pass(table).to_pylist()
    for row, res in zip(rows, out, strict=True):
        expected = [
            r
            for r in ("no_caption", "lowpoly")
            if r in objaverse["expected"][row["uid"]]["expected_reasons"]
        ]
        assert res["uid"] == row["uid"]
        assert res["reasons"] == expected
        assert res["no_caption"] == ("no_caption" in expected)
        assert res["lowpoly"] == ("lowpoly" in expected)
        assert res["metadata_ok"] == (not expected)


# --------------------------------------------------------------------------------------------
# Texture decoding, parts rule details, coverage.
# --------------------------------------------------------------------------------------------


def _corrupt_png_in_glb(data: bytes) -> bytes:
    """Overwrite the start of the first PNG's IDAT payload (lengths and header kept)."""
    out = bytearray(data)
    start = out.find(PNG_SIGNATURE)
    assert start >= 0, "no embedded PNG"
    idat = out.find(b"IDAT", start)
    assert idat > start
    out[idat + 4 : idat + 36] = b"\x55" * 32
    assert len(out) == len(data)
    return bytes(out)


def test_texture_check_corrupted_image_names_the_file(tmp_path: Path) -> None:
    mesh = pg.textured(pg.make_shape("box", 3), pg.make_texture("checker", 3))
    good = tmp_path / "good.glb"
    good.write_bytes(pg.glb_bytes(mesh))
    assert C.texture_check(good) == (True, None)
    bad = tmp_path / "corrupt_texture.glb"
    bad.write_bytes(_corrupt_png_in_glb(pg.glb_bytes(mesh)))
    ok, reason = C.texture_check(bad)
    assert not ok and reason is not None
    assert C.reason_name(reason) == "no_texture"
    assert str(bad) in reason and "decode" in reason
    # The geometry is intact: the file criteria report the texture, not "unreadable".
    reasons = C.file_checks(bad)
    assert [C.reason_name(r) for r in reasons] == ["no_texture"] and str(bad) in reasons[0]


def test_texture_check_missing_and_empty_files(tmp_path: Path) -> None:
    for path in (tmp_path / "absent.glb", tmp_path / "empty.glb"):
        if path.name == "empty.glb":
            path.write_bytes(b"")
        ok, reason = C.texture_check(path)
        assert not ok and reason is not None
        assert C.reason_name(reason) == "unreadable" and str(path) in reason


def test_multiple_parts_rule_details() -> None:
    big = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    # A speck (diag < 1% of the whole) far away is ignored.
    speck = trimesh.creation.box(extents=(0.005, 0.005, 0.005))
    assert C.multiple_parts_check(pg.combine([big, speck], [(0, 0, 0), (2.0, 0, 0)])).ok
    # A gap under gap_ratio x diagonal joins the parts; a wider gap separates them.
    near = pg.combine([big, big], [(0, 0, 0), (1.02, 0, 0)])  # gap 0.02 << 0.05 x 2.46
    assert C.multiple_parts_check(near) == (True, 1, None)
    far = pg.combine([big, big], [(0, 0, 0), (1.5, 0, 0)])  # gap 0.5 > 0.05 x 2.87
    ok, n, reason = C.multiple_parts_check(far)
    assert not ok and n == 2 and reason is not None
    assert C.multiple_parts_check(far, gap_ratio=0.2).ok  # 0.5 < 0.2 x 2.87
    # A chain of near parts is one group (transitive).
    chain = pg.combine([big] * 3, [(0, 0, 0), (1.02, 0, 0), (2.04, 0, 0)])
    assert C.multiple_parts_check(chain).n_parts == 1
    # Seams (duplicated vertices at one position) do not split a part.
    seamed = trimesh.Trimesh(big.vertices[big.faces].reshape(-1, 3), np.arange(36).reshape(-1, 3))
    assert C.component_labels(seamed)[0] == 1
    assert C.multiple_parts_check(seamed) == (True, 1, None)


def test_coverage_check() -> None:
    assert C.coverage_check([0.3, 0.2, 0.1]) == (True, None)  # threshold is inclusive
    ok, reason = C.coverage_check([0.3, 0.04, 0.2, 0.02, 0.5])
    assert not ok and reason is not None
    assert C.reason_name(reason) == "tiny_in_view"
    assert "0.0200" in reason and "view 3" in reason
    assert C.coverage_check([0.15], threshold=0.2).ok is False
    for bad in ([], [float("nan")], [1.2], [-0.1]):
        with pytest.raises(ValueError):
            C.coverage_check(bad)


def test_reason_name() -> None:
    assert C.reason_name("lowpoly") == "lowpoly"
    assert C.reason_name("no_texture: /a/b.glb: something") == "no_texture"
    with pytest.raises(ValueError):
        C.reason_name("bogus: x")


# --------------------------------------------------------------------------------------------
# lowpoly and caption rules; vectorised == per-row.
# --------------------------------------------------------------------------------------------

LOWPOLY_POSITIVES = [
    "lowpoly",
    "low_poly",
    "low-poly",
    "low poly",
    "LowPoly",
    "LOWPOLY",
    "Low_Poly",
    "low  poly",
    "low.poly",
    "low\tpoly",
    "low-_-poly",
    "SimpleLowPoly",
    "lowPoly",
    "LowPoly Barrel",
    "tree (low-poly)",
    "3d_lowpoly",
    "lowpolyart",
    "low-polygon",
    "game-asset,lowpoly",
    "é lowpoly",
]
LOWPOLY_NEGATIVES = [
    "",
    "yellowpolygon",
    "yellow polygon",
    "YellowPoly",
    "yellowPolygon",
    "slowpoly",
    "SlowPoly",
    "highpoly",
    "poly low",
    "low",
    "poly",
    "low resolution poly",
    "lo-poly",
    "3dlowpoly",
    "Belowpoly",
    "low/poly",
    "polygon",
]


@pytest.mark.parametrize("text", LOWPOLY_POSITIVES)
def test_lowpoly_positive(text: str) -> None:
    assert C.lowpoly_text(text)
    assert C.is_lowpoly(text, [])
    assert C.is_lowpoly("Chair", ["furniture", text])


@pytest.mark.parametrize("text", LOWPOLY_NEGATIVES)
def test_lowpoly_negative(text: str) -> None:
    assert not C.lowpoly_text(text)
    assert not C.is_lowpoly(text, [text, "chair"])


def test_lowpoly_tags_are_not_joined() -> None:
    assert not C.is_lowpoly("low", ["poly"])
    assert not C.is_lowpoly(None, ["low", "poly"])
    assert not C.is_lowpoly(None, None)


def test_has_caption() -> None:
    caps = {"a": "a red chair", "b": "", "c": "  \t\n", "d": "\u3000", "e": " x "}
    assert C.has_caption("a", caps) and C.has_caption("e", caps)
    for uid in ("b", "c", "d", "missing"):
        assert not C.has_caption(uid, caps)
    assert not C.has_caption("n", {"n": None})


def _random_table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    words = [*LOWPOLY_POSITIVES, *LOWPOLY_NEGATIVES, "chair", "Car", "tree", "low", "poly"]
    captions = ["a chair", "", "  ", "\t\n", "\u00a0", "a low poly tree", "x"]
    names: list[str | None] = []
    tags: list[list[str | None] | None] = []
    caps: list[str | None] = []
    for i in range(n):
        k = int(rng.integers(1, 4))
        name = "".join(str(w) for w in rng.choice(words, k)) if rng.random() < 0.5 else None
        names.append(name if i % 17 else None)
        if i % 23 == 0:
            tags.append(None)
        else:
            row: list[str | None] = [str(w) for w in rng.choice(words, int(rng.integers(0, 5)))]
            if i % 31 == 0:
                row.append(None)
            tags.append(row)
        caps.append(None if rng.random() < 0.1 else str(rng.choice(captions)))
    return pa.table(
        {
            "uid": [f"u{i:05d}" for i in range(n)],
            "name": pa.array(names, type=pa.string()),
            "tags": pa.array(tags, type=pa.list_(pa.string())),
            "caption": pa.array(caps, type=pa.string()),
        }
    )


def test_vectorised_pass_equals_per_row_functions() -> None:
    table = _random_table(2000, seed=7)
    # Several chunks and a slice: offsets in list columns must be handled.
    table = pa.concat_tables([table.slice(0, 700), table.slice(700)]).slice(1)
    out = metadata_pass(table)
    assert out.num_rows == table.num_rows
    captions = dict(zip(table["uid"].to_pylist(), table["caption"].to_pylist(), strict=True))
    got = out.to_pylist()
    for row, res in zip(table.to_pylist(), got, strict=True):
        lowpoly = C.is_lowpoly(row["name"], row["tags"])
        no_caption = not C.has_caption(row["uid"], captions)
        assert res["uid"] == row["uid"]
        assert res["lowpoly"] == lowpoly, (row["name"], row["tags"])
        assert res["no_caption"] == no_caption, row["caption"]
        expected = [r for r, f in (("no_caption", no_caption), ("lowpoly", lowpoly)) if f]
        assert res["reasons"] == expected
        assert res["metadata_ok"] == (not expected)
    flags = [r["lowpoly"] for r in got]
    assert 0 < sum(flags) < len(flags)  # the table exercises both outcomes


def test_metadata_pass_edge_cases() -> None:
    empty = _random_table(3, seed=0).slice(0, 0)
    out = metadata_pass(empty)
    assert out.num_rows == 0 and out.column_names == [
        "uid",
        "no_caption",
        "lowpoly",
        "metadata_ok",
        "reasons",
    ]
    with pytest.raises(ValueError, match="caption"):
        metadata_pass(empty.drop_columns(["caption"]))
    large = pa.table(
        {
            "uid": ["a", "b"],
            "name": pa.array(["x", None], type=pa.large_string()),
            "tags": pa.array([["LowPoly"], None], type=pa.large_list(pa.large_string())),
            "caption": pa.array([None, "ok"], type=pa.large_string()),
        }
    )
    assert metadata_pass(large).to_pylist() == [
        {
            "uid": "a",
            "no_caption": True,
            "lowpoly": True,
            "metadata_ok": False,
            "reasons": ["no_caption", "lowpoly"],
        },
        {"uid": "b", "no_caption": False, "lowpoly": False, "metadata_ok": True, "reasons": []},
    ]
