"""Evaluation-set readers (GSO, OmniObject3D) and selection: fast, offline, procedural data."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import trimesh
from PIL import Image

from evaluation.datasets import (
    DatasetError,
    GsoObject,
    Omni3dObject,
    UnsafeUidError,
    check_uid,
    load_gso_mesh,
    load_omni3d_mesh,
    natural_key,
    omni3d_render_scale,
    omni3d_scan_to_render,
    parse_pbtxt,
    read_gso_metadata,
    scan_gso,
    scan_omni3d,
)
from evaluation.evalsets import (
    EVALSET_MANIFEST_SCHEMA,
    EvalSetSpec,
    apply_selection_list,
    build_evalset,
    default_omni3d_categories,
    evalset_manifest,
    read_selection_list,
    select_gso,
    select_omni3d,
    write_selection_list,
)
from evaluation.layouts import (
    omni3d_object_id,
    write_gso_object,
    write_omni3d_object,
    write_omni3d_transforms,
)
from rendering import procedural as pg
from rendering.cameras import load_transforms_json, orbit_cameras


def _mesh_and_texture(i: int, size: int = 32) -> tuple[trimesh.Trimesh, Image.Image]:
    texture = pg.make_texture(pg.TEXTURE_PATTERNS[i % 4], 100 + i, size=size)
    mesh = pg.make_shape(pg.SHAPES[i % len(pg.SHAPES)], i)
    return pg.textured(mesh, texture), texture


def _gso_tree(root: Path, names: list[str], category: str = "Toys") -> dict[str, Image.Image]:
    textures = {}
    for i, name in enumerate(names):
        mesh, tex = _mesh_and_texture(i, size=16 + 8 * (i % 3))
        write_gso_object(root, name, mesh, tex, category=category)
        textures[name] = tex
    return textures


def _omni_tree(root: Path, counts: dict[str, int]) -> None:
    for c, (category, n) in enumerate(sorted(counts.items())):
        for idx in range(1, n + 1):
            mesh, tex = _mesh_and_texture(c * 10 + idx)
            write_omni3d_object(root, category, idx, mesh, tex)


def _image(mesh: Any) -> Image.Image | None:
    return getattr(getattr(mesh.visual, "material", None), "image", None)


def _size(mesh: trimesh.Trimesh) -> tuple[int, int] | None:
    image = _image(mesh)
    return None if image is None else image.size


def _gso_objects(n: int) -> list[GsoObject]:
    p = Path("/nonexistent")
    return [GsoObject(f"Obj_{i:04d}", f"Obj_{i:04d}", p, p / "m.obj", None) for i in range(n)]


# --------------------------------------------------------------------------------------------
# GSO reader


def test_scan_gso_finds_objects_sorted_with_metadata(tmp_path: Path) -> None:
    _gso_tree(tmp_path, ["Zebra_Toy", "Apple_Mug", "Mid_Box"])
    (tmp_path / "not_an_object").mkdir()  # no meshes/model.obj, no metadata: skipped
    (tmp_path / ".hidden").mkdir()
    objs = scan_gso(tmp_path)
    assert [o.uid for o in objs] == ["Apple_Mug", "Mid_Box", "Zebra_Toy"]
    o = objs[0]
    assert o.source == "gso" and o.name == o.uid == "Apple_Mug"
    assert o.category == "Toys" and o.metadata_name == "Apple_Mug"
    assert o.obj_path == (tmp_path / "Apple_Mug" / "meshes" / "model.obj").absolute()
    # the quirk: the MTL says texture.png beside the OBJ, the file is in materials/textures
    assert o.texture_path == (tmp_path / "Apple_Mug/materials/textures/texture.png").absolute()
    assert o.has_texture and o.transforms_path is None and o.notes == ()


def test_resolver_refuses_names_escaping_the_object_folder(tmp_path: Path) -> None:
    _gso_tree(tmp_path, ["A_Obj", "B_Obj"])
    mtl = tmp_path / "A_Obj/meshes/model.mtl"
    mtl.write_text(mtl.read_text().replace("texture.png", "../../B_Obj/materials/textures/x.png"))
    (tmp_path / "B_Obj/materials/textures/x.png").write_bytes(b"not read")
    (obj, _) = scan_gso(tmp_path)
    # the escaping name is refused; its base name is then looked up inside A_Obj only
    assert obj.texture_path is None
    assert load_gso_mesh(obj).metadata["has_texture"] is False


def test_gso_texture_quirk_resolved_without_copying(tmp_path: Path) -> None:
    textures = _gso_tree(tmp_path, ["A_Obj", "B_Obj", "C_Obj"])
    before = {p.relative_to(tmp_path) for p in tmp_path.rglob("*")}
    # plain trimesh does not find the texture (this is the quirk we work around)
    plain = trimesh.load(str(tmp_path / "C_Obj/meshes/model.obj"), force="mesh", process=False)
    assert _image(plain) is None
    for obj in scan_gso(tmp_path):
        mesh = load_gso_mesh(obj)
        image = _image(mesh)
        assert image is not None
        expected = textures[obj.name]
        assert image.size == expected.size
        assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(expected))
        assert mesh.metadata["has_texture"] is True
        assert mesh.metadata["texture_uri"] == str(obj.texture_path)
        assert mesh.metadata["uid"] == obj.uid and mesh.metadata["source"] == "gso"
        assert len(mesh.faces) > 0 and getattr(mesh.visual, "uv", None) is not None
    assert {p.relative_to(tmp_path) for p in tmp_path.rglob("*")} == before


def test_gso_missing_texture_is_flagged_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _gso_tree(tmp_path, ["Bare_Obj"])
    (tmp_path / "Bare_Obj/materials/textures/texture.png").unlink()
    (obj,) = scan_gso(tmp_path)
    assert not obj.has_texture and obj.texture_path is None
    assert any("texture.png" in n and "not found" in n for n in obj.notes)
    with caplog.at_level(logging.WARNING, logger="evaluation.datasets"):
        mesh = load_gso_mesh(obj)
    assert mesh.metadata["has_texture"] is False and mesh.metadata["texture_uri"] is None
    assert mesh.metadata["load_notes"]
    assert "Bare_Obj" in caplog.text
    assert len(mesh.faces) > 0


def test_gso_corrupt_texture_is_flagged(tmp_path: Path) -> None:
    _gso_tree(tmp_path, ["Bad_Png"])
    png = tmp_path / "Bad_Png/materials/textures/texture.png"
    png.write_bytes(png.read_bytes()[:40])
    mesh = load_gso_mesh(scan_gso(tmp_path)[0])
    assert mesh.metadata["has_texture"] is False


def test_gso_broken_and_missing_obj_raise_naming_the_object(tmp_path: Path) -> None:
    _gso_tree(tmp_path, ["Broken_Obj", "Gone_Obj", "Good_Obj"])
    (tmp_path / "Broken_Obj/meshes/model.obj").write_text("mtllib model.mtl\nthis is not an obj\n")
    (tmp_path / "Gone_Obj/meshes/model.obj").unlink()
    objs = {o.uid: o for o in scan_gso(tmp_path)}
    # a folder with metadata but no OBJ stays in the population (fails per object later)
    assert set(objs) == {"Broken_Obj", "Gone_Obj", "Good_Obj"}
    assert any("model.obj missing" in n for n in objs["Gone_Obj"].notes)
    for uid in ("Broken_Obj", "Gone_Obj"):
        with pytest.raises(DatasetError, match=uid):
            load_gso_mesh(objs[uid])
    empty = tmp_path / "Good_Obj/meshes/model.obj"
    empty.write_text("")
    with pytest.raises(DatasetError, match=r"Good_Obj.*empty"):
        load_gso_mesh(objs["Good_Obj"])


def test_gso_metadata_absent_or_malformed_is_tolerated(tmp_path: Path) -> None:
    _gso_tree(tmp_path, ["No_Meta", "Odd_Meta"])
    (tmp_path / "No_Meta/metadata.pbtxt").unlink()
    (tmp_path / "Odd_Meta/metadata.pbtxt").write_text('name: "Odd_Meta"\nannotations {\n')
    objs = {o.uid: o for o in scan_gso(tmp_path)}
    assert objs["No_Meta"].category is None and "metadata.pbtxt missing" in objs["No_Meta"].notes
    assert objs["Odd_Meta"].category is None
    assert any("unreadable" in n for n in objs["Odd_Meta"].notes)


def test_parse_pbtxt_minimal_text_format() -> None:
    text = (
        '# comment\nname: "Squirrel"\nversion: 3\n'
        'annotations {\n  key: "color"\n  value: "brown" # trailing\n}\n'
        'annotations < key: "category" value: "Toys" >\n'
        "tags: [\"a\", 'b']\n"
        'description: "two " "parts \\"quoted\\""\n'
        'categories { first: "Animal" }\n'
    )
    fields = parse_pbtxt(text)
    assert fields["name"] == ["Squirrel"] and fields["version"] == ["3"]
    assert fields["tags"] == ["a", "b"]
    assert fields["description"] == ['two parts "quoted"']
    assert [a["key"] for a in fields["annotations"]] == [["color"], ["category"]]
    assert fields["categories"] == [{"first": ["Animal"]}]


def test_read_gso_metadata_category_and_fallback(tmp_path: Path) -> None:
    p = tmp_path / "metadata.pbtxt"
    p.write_text('name: "X"\nannotations { key: "category" value: "Shoe" }\n')
    assert read_gso_metadata(p)["category"] == "Shoe"
    p.write_text('name: "X"\ncategories { first: "Bag" }\n')
    meta = read_gso_metadata(p)
    assert (meta["name"], meta["category"]) == ("X", "Bag")


def test_folder_names_become_path_safe_uids_and_collisions_fail_alone(tmp_path: Path) -> None:
    _gso_tree(tmp_path / "gso", ["Fine_Name", "bad name", "-dash", "bad_name", "Café"])
    objs = {o.uid: o for o in scan_gso(tmp_path / "gso")}
    assert set(objs) == {"Fine_Name", "bad_name", "dash", "Café"}
    assert objs["dash"].name == "-dash" and objs["dash"].uid_error is None
    # "bad name" and "bad_name" would share a uid: one object that fails naming both
    assert "'bad name'" in str(objs["bad_name"].uid_error)
    assert "'bad_name'" in str(objs["bad_name"].uid_error)
    _omni_tree(tmp_path / "omni", {"toy_train": 1})
    scans = tmp_path / "omni/raw_scans/toy_train"
    (scans / "toy_train_001").rename(scans / "toy train 1")
    assert [o.uid for o in scan_omni3d(tmp_path / "omni")] == ["toy_train_1"]
    for bad in ("a/b", "..", "a..b", "", ".hidden", "x" * 201, "é" * 101, "Cafe\u0301"):
        with pytest.raises(UnsafeUidError, match="not a safe path component"):
            check_uid(bad)
    assert check_uid("toy_train_001") == "toy_train_001" and check_uid("椅子") == "椅子"


def test_uid_check_and_axis_map_have_one_definition() -> None:
    """The uid check and Y_UP_TO_Z_UP live in the lower layer (rendering) and are imported by
    the pipeline's storage and the dataset readers, never redefined."""
    import ast
    import subprocess

    import evaluation.datasets as datasets
    import rendering.normalize
    import rendering.uids
    from pipelines import storage

    assert datasets.check_uid is storage.check_uid is rendering.uids.check_uid
    assert datasets.UnsafeUidError is storage.UnsafeUidError is rendering.uids.UnsafeUidError
    assert datasets.Y_UP_TO_Z_UP is rendering.normalize.Y_UP_TO_Z_UP
    root = Path(__file__).resolve().parents[1]
    files = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.split()
    defined: dict[str, list[str]] = {"check_uid": [], "UnsafeUidError": [], "Y_UP_TO_Z_UP": []}
    for rel in files:
        if not (root / rel).is_file():
            continue
        for node in ast.parse((root / rel).read_text()).body:
            names = [getattr(node, "name", None)]
            if isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [getattr(t, "id", None) for t in targets]
            for name in names:
                if name in defined:
                    defined[name].append(rel)
    assert defined == {
        "check_uid": ["rendering/uids.py"],
        "UnsafeUidError": ["rendering/uids.py"],
        "Y_UP_TO_Z_UP": ["rendering/normalize.py"],
    }


def test_scan_errors_for_missing_or_empty_roots(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a directory"):
        scan_gso(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no GSO objects"):
        scan_gso(tmp_path)
    with pytest.raises(DatasetError, match="no OmniObject3D objects"):
        scan_omni3d(tmp_path)
    _gso_tree(tmp_path / "gso", ["A_Obj"])  # a GSO tree is not mistaken for Omni3D
    with pytest.raises(DatasetError, match="no OmniObject3D objects"):
        scan_omni3d(tmp_path / "gso")


# --------------------------------------------------------------------------------------------
# OmniObject3D reader


def test_scan_omni3d_natural_order_and_roots(tmp_path: Path) -> None:
    _omni_tree(tmp_path, {"toy_train": 3, "apple": 1})
    scans = tmp_path / "raw_scans" / "toy_train"
    for idx, new in ((1, "toy_train_1"), (2, "toy_train_2"), (3, "toy_train_10")):
        (scans / omni3d_object_id("toy_train", idx)).rename(scans / new)
    objs = scan_omni3d(tmp_path)
    assert [o.uid for o in objs] == ["apple_001", "toy_train_1", "toy_train_2", "toy_train_10"]
    assert [o.index for o in objs] == [1, 1, 2, 10]
    assert all(o.source == "omni3d" and o.has_texture for o in objs)
    assert objs[1].texture_path == (scans / "toy_train_1/Scan/Scan.jpg").absolute()
    # the raw_scans folder itself is accepted as root
    assert [o.uid for o in scan_omni3d(tmp_path / "raw_scans")] == [o.uid for o in objs]
    sel = select_omni3d(objs, categories=["toy_train"], per_category=2)
    assert sel.uids() == ["toy_train_1", "toy_train_2"]
    assert natural_key("toy_train_2") < natural_key("toy_train_10")


def test_omni3d_load_axes_texture_and_errors(tmp_path: Path) -> None:
    mesh_in, tex = _mesh_and_texture(3, size=24)
    write_omni3d_object(tmp_path, "chair", 1, mesh_in, tex)
    (obj,) = scan_omni3d(tmp_path)
    y_up = load_omni3d_mesh(obj)
    as_stored = load_omni3d_mesh(obj, up_axis="z")
    v = as_stored.vertices
    m = np.asarray(mesh_in.vertices)
    # The fixture writer stores scans Y up like the release: (x, y, z) -> (x, z, -y) ...
    assert np.allclose(v, np.stack([m[:, 0], m[:, 2], -m[:, 1]], axis=1), atol=1e-5)
    # ... and the default loader rotates them back into our Z-up frame.
    assert np.allclose(y_up.vertices, np.stack([v[:, 0], -v[:, 2], v[:, 1]], axis=1))
    assert np.allclose(y_up.vertices, m, atol=1e-5)
    assert y_up.metadata["has_texture"] is True and _size(y_up) == (24, 24)
    with pytest.raises(DatasetError, match="up_axis"):
        load_omni3d_mesh(obj, up_axis="x")  # type: ignore[arg-type]
    obj.obj_path.write_text("garbage\n")
    with pytest.raises(DatasetError, match="chair_001"):
        load_omni3d_mesh(obj)


def test_omni3d_mtl_without_map_kd_falls_back_to_scan_jpg(tmp_path: Path) -> None:
    mesh_in, tex = _mesh_and_texture(1)
    scan = write_omni3d_object(tmp_path, "projector", 2, mesh_in, tex)
    mtl = scan / "Scan.mtl"
    mtl.write_text("".join(ln for ln in mtl.read_text().splitlines(True) if "map_Kd" not in ln))
    (obj,) = scan_omni3d(tmp_path)
    assert obj.has_texture and any("Scan.jpg" in n for n in obj.notes)
    mesh = load_omni3d_mesh(obj)
    assert mesh.metadata["has_texture"] is True
    assert _size(mesh) == tex.size
    (scan / "Scan.jpg").unlink()
    (obj,) = scan_omni3d(tmp_path)
    assert not obj.has_texture
    assert load_omni3d_mesh(obj).metadata["has_texture"] is False


def test_omni3d_missing_scan_keeps_its_place(tmp_path: Path) -> None:
    _omni_tree(tmp_path, {"bread": 4})
    (tmp_path / "raw_scans/bread/bread_002/Scan/Scan.obj").unlink()
    objs = scan_omni3d(tmp_path)
    assert [o.uid for o in objs] == ["bread_001", "bread_002", "bread_003", "bread_004"]
    assert select_omni3d(objs, ["bread"], per_category=2).uids() == ["bread_001", "bread_002"]
    with pytest.raises(DatasetError, match="bread_002"):
        load_omni3d_mesh(objs[1])


def test_transforms_writer_reader_and_lookup(tmp_path: Path) -> None:
    _omni_tree(tmp_path, {"toy_car": 3})
    cams = orbit_cameras(n=6, fov=40.0, distance=2.5)
    path = write_omni3d_transforms(tmp_path, "toy_car", 1, cams, scale=0.25)
    assert path == tmp_path / "blender_renders/toy_car/toy_car_001/render/transforms.json"
    raw = json.loads(path.read_text())
    assert set(raw) == {"camera_angle_x", "frames"}
    assert set(raw["frames"][0]) == {"file_path", "rotation", "transform_matrix", "scale"}
    back = load_transforms_json(path)
    assert len(back) == 6 and [c.name for c in back] == [f"r_{i}" for i in range(6)]
    for a, b in zip(cams, back, strict=True):
        assert np.allclose(a.c2w, b.c2w) and math.isclose(a.fov_deg, b.fov_deg)
    # the older render-script layout (no render/ folder) and the newer one (beside Scan/)
    older = tmp_path / "blender_renders/toy_car/toy_car_002/transforms.json"
    older.parent.mkdir(parents=True)
    older.write_text(path.read_text())
    newer = tmp_path / "raw_scans/toy_car/toy_car_003/render/transforms.json"
    newer.parent.mkdir(parents=True)
    newer.write_text(path.read_text())
    objs = scan_omni3d(tmp_path)
    assert [o.transforms_path for o in objs] == [path, older, newer]
    assert omni3d_render_scale(path) == 0.25
    m = omni3d_scan_to_render(objs[0])
    assert np.allclose(m @ [1.0, 2.0, 3.0, 1.0], [0.25, -0.75, 0.5, 1.0])
    (tmp_path / "blender_renders").rename(tmp_path / "elsewhere")
    objs = scan_omni3d(tmp_path)
    assert [o.transforms_path for o in objs] == [None, None, newer]
    with pytest.raises(DatasetError, match="toy_car_001"):
        omni3d_scan_to_render(objs[0])


# --------------------------------------------------------------------------------------------
# selection


def test_select_gso_seeded_sorted_and_short() -> None:
    objs = _gso_objects(50)
    a = select_gso(objs, n=10, seed=0)
    assert a.uids() == select_gso(list(reversed(objs)), n=10, seed=0).uids()
    assert a.uids() == sorted(a.uids()) and len(set(a.uids())) == 10
    assert a.uids() != select_gso(objs, n=10, seed=1).uids()
    assert (a.available, a.requested, a.short, a.notes) == (50, 10, False, [])
    # the documented rule, spelled out
    idx = np.random.Generator(np.random.PCG64(0)).choice(50, size=10, replace=False)
    assert a.uids() == sorted(f"Obj_{int(i):04d}" for i in idx)
    everything = select_gso(objs[:7], n=300, seed=3)
    assert len(everything) == 7 and everything.short
    assert "only 7" in everything.notes[0]
    with pytest.raises(DatasetError):
        select_gso(objs, n=0)


def test_select_omni3d_default_rule_explicit_list_and_errors(tmp_path: Path) -> None:
    counts = {"apple": 3, "bread": 6, "cake": 6, "doll": 2}
    _omni_tree(tmp_path, counts)
    objs = scan_omni3d(tmp_path)
    assert default_omni3d_categories(objs, k=3) == ["apple", "bread", "cake"]
    assert default_omni3d_categories(objs, k=2) == ["bread", "cake"]  # tie on 6: by name
    sel = select_omni3d(objs)  # 4 < 28 categories: all, noted
    assert sel.categories == ["apple", "bread", "cake", "doll"]
    assert sel.per_category() == {"apple": 3, "bread": 5, "cake": 5, "doll": 2}
    assert len(sel) == 15 and sel.requested == 20 and sel.short
    assert any("only 4 categories" in n for n in sel.notes)
    assert any("'doll' has 2" in n for n in sel.notes)
    explicit = select_omni3d(objs, categories=["cake", "apple"], per_category=1)
    assert explicit.uids() == ["cake_001", "apple_001"]
    with pytest.raises(DatasetError, match=r"'zebra'.*available \(4\): apple, bread, cake, doll"):
        select_omni3d(objs, categories=["apple", "zebra"])
    with pytest.raises(DatasetError, match="duplicated"):
        select_omni3d(objs, categories=["apple", "apple"])


# --------------------------------------------------------------------------------------------
# manifest and selection lists


def test_evalset_manifest_columns_and_types(tmp_path: Path) -> None:
    from pipelines.schema import validate_manifest

    _gso_tree(tmp_path / "gso", ["A_Obj", "B_Obj"])
    (tmp_path / "gso/B_Obj/materials/textures/texture.png").unlink()
    _omni_tree(tmp_path / "omni", {"apple": 2})
    write_omni3d_transforms(tmp_path / "omni", "apple", 1, orbit_cameras(n=3))
    gso = select_gso(scan_gso(tmp_path / "gso"), n=5)
    table = evalset_manifest(gso, "gso")
    assert table.schema.equals(EVALSET_MANIFEST_SCHEMA)
    assert table.column_names == [
        "uid",
        "source",
        "mesh_uri",
        "sha256",
        "name",
        "category",
        "texture_uri",
        "transforms_uri",
        "has_texture",
        "uid_error",
    ]
    rows = table.to_pylist()
    assert [r["uid"] for r in rows] == ["A_Obj", "B_Obj"]
    assert rows[0]["source"] == "gso" and Path(rows[0]["mesh_uri"]).is_absolute()
    digest = hashlib.sha256(Path(rows[0]["mesh_uri"]).read_bytes()).hexdigest()
    assert rows[0]["sha256"] == digest
    assert (rows[0]["has_texture"], rows[1]["has_texture"]) == (True, False)
    assert rows[1]["texture_uri"] is None and rows[0]["transforms_uri"] is None
    assert rows[0]["category"] == "Toys"
    validate_manifest(table)

    omni = select_omni3d(scan_omni3d(tmp_path / "omni"), ["apple"])
    rows = evalset_manifest(omni, "omni3d").to_pylist()
    assert [r["name"] for r in rows] == ["apple_001", "apple_002"]
    assert rows[0]["transforms_uri"].endswith("apple_001/render/transforms.json")
    assert rows[1]["transforms_uri"] is None and rows[0]["category"] == "apple"
    assert table.schema.field("has_texture").type == pa.bool_()
    with pytest.raises(DatasetError):
        evalset_manifest(omni, "gso")


def test_selection_list_round_trip(tmp_path: Path) -> None:
    _omni_tree(tmp_path, {"apple": 2, "bread": 7})
    spec = EvalSetSpec(dataset="omni3d", root=str(tmp_path), categories=["bread", "apple"])
    sel = build_evalset(spec)
    path = write_selection_list(tmp_path / "lists" / "omni3d.json", sel, spec)
    back = read_selection_list(path)
    assert back.uids == sel.uids() and back.spec == spec and back.dataset == "omni3d"
    assert back.counts == {
        "selected": 7,
        "per_category": {"apple": 2, "bread": 5},
        "available": 9,
        "requested": 10,
    }
    assert back.categories == ["bread", "apple"] and back.notes == sel.notes
    replay = apply_selection_list(scan_omni3d(tmp_path), back)
    assert replay.uids() == sel.uids() and [o.obj_path for o in replay] == [o.obj_path for o in sel]
    assert all(isinstance(o, Omni3dObject) for o in replay)

    gspec = EvalSetSpec(dataset="gso", root=str(tmp_path / "gso"), n=2, seed=5)
    _gso_tree(tmp_path / "gso", ["A_Obj", "B_Obj", "C_Obj", "D_Obj"])
    gsel = build_evalset(gspec)
    glist = read_selection_list(write_selection_list(tmp_path / "g.json", gsel, gspec))
    assert glist.spec == gspec and glist.uids == gsel.uids()
    assert apply_selection_list(scan_gso(tmp_path / "gso"), glist).uids() == gsel.uids()
    # a list naming objects the dataset lacks fails, naming them
    glist.uids = [*glist.uids, "Missing_Obj"]
    with pytest.raises(DatasetError, match="Missing_Obj"):
        apply_selection_list(scan_gso(tmp_path / "gso"), glist)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(format="other"),
        lambda d: d.update(uids=["ok", "../escape"]),
        lambda d: d.update(uids=["a", "a"]),
        lambda d: d["spec"].update(bogus=1),
        lambda d: d.update(dataset="gso"),
    ],
)
def test_read_selection_list_rejects_bad_files(tmp_path: Path, mutate: Any) -> None:
    objs = _gso_objects(3)
    spec = EvalSetSpec(dataset="omni3d", root="/x")
    cat = [
        Omni3dObject(f"c_{i}", "c", f"c_{i}", i, o.folder, o.obj_path, None, None)
        for i, o in enumerate(objs)
    ]
    path = write_selection_list(tmp_path / "l.json", cat, spec)
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError):
        read_selection_list(path)


def test_evalset_spec_validation() -> None:
    with pytest.raises(DatasetError):
        EvalSetSpec(dataset="shapenet")  # type: ignore[arg-type]
    with pytest.raises(DatasetError):
        EvalSetSpec(dataset="gso", n=0)
    with pytest.raises(DatasetError):
        EvalSetSpec(dataset="omni3d", categories=["a", "a"])
    with pytest.raises(DatasetError, match="no root"):
        build_evalset(EvalSetSpec(dataset="gso"))


def test_project_fixture_set_scans(fixture_set: dict[str, Any]) -> None:
    """The procedural fixtures (pipelines.fixtures) are readable by these readers."""
    paths = fixture_set["paths"]
    gso = scan_gso(paths["gso"])
    assert [o.name for o in gso] == sorted(o["name"] for o in fixture_set["record"]["gso"])
    assert all(o.has_texture and o.category == "Toys" for o in gso)
    assert load_gso_mesh(gso[0]).metadata["has_texture"] is True
    omni = scan_omni3d(paths["omni3d"])
    assert sorted(o.uid for o in omni) == sorted(o["id"] for o in fixture_set["record"]["omni3d"])
    sel = select_omni3d(omni)
    assert sel.per_category() == {"apple": 2, "chair": 3, "toy_train": 5}
