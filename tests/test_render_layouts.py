"""Render output layouts (files the upstream loaders read) and the ``imesh render`` stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import trimesh
from PIL import Image

from rendering import cameras as cams
from rendering import procedural as pg
from rendering.backends import RenderSettings, make_backend, prepare_object
from rendering.output_layouts import (
    DEPTH_PNG_MAX,
    LAYOUT_DIRS,
    decode_depth_png,
    layout_spec,
    read_record,
    render_layout,
    validate_object_dir,
)

RADIUS = 1.0


@pytest.fixture(scope="module")
def sphere_glb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=0.7)
    textured = pg.textured(mesh, pg.make_texture("checker", 0, size=64))
    path = tmp_path_factory.mktemp("glb") / "sphere.glb"
    path.write_bytes(pg.glb_bytes(textured))
    return path


@pytest.fixture(scope="module")
def cpu_backend() -> Any:
    backend = make_backend("cpu", RenderSettings(shading="unlit"))
    yield backend
    backend.close()


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def test_instantmesh32_layout_is_what_the_upstream_loader_reads(
    sphere_glb: Path, cpu_backend: Any, tmp_path: Path
) -> None:
    obj, _ = prepare_object(sphere_glb)
    spec = layout_spec("instantmesh32", size=64, seed=3, views=4)
    record = render_layout(cpu_backend, obj, "sphere", spec, tmp_path)
    validate_object_dir(tmp_path, record)

    npz = np.load(tmp_path / "cameras.npz")
    expected = cams.training_cameras("sphere", 3, n=4, size=64)
    assert npz["cam_poses"].shape == (4, 3, 4)
    np.testing.assert_allclose(npz["cam_poses"], cams.cam_poses_array(expected), atol=1e-6)

    for i, cam in enumerate(expected):
        rgba = _png(tmp_path / f"{i:03d}.png")
        normal = _png(tmp_path / f"{i:03d}_normal.png")
        depth8 = _png(tmp_path / f"{i:03d}_depth.png")
        depth16 = _png(tmp_path / f"{i:03d}_depth16.png")
        # The upstream loader reads RGBA (alpha from channel 4) for both images.
        assert rgba.shape == (64, 64, 4) and normal.shape == (64, 64, 4)
        assert depth8.dtype == np.uint8 and depth16.dtype == np.uint16
        mask = rgba[..., 3] >= 128
        np.testing.assert_array_equal(normal[..., 3] >= 128, mask)
        assert record["view_sets"][""]["coverage"][i] == pytest.approx(mask.mean())
        # Normalized sphere has radius 1: the centre pixel sees depth = distance - 1.
        centre = depth16.shape[0] // 2
        d16 = decode_depth_png(depth16)
        assert d16[centre, centre] == pytest.approx(cam.distance - RADIUS, abs=0.02)
        # Upstream decoding of the 8-bit file: value / 255 * 6.0 agrees to one step.
        d8 = depth8.astype(np.float64) / 255.0 * DEPTH_PNG_MAX
        np.testing.assert_allclose(d8[mask], d16[mask], atol=DEPTH_PNG_MAX / 255.0)
        assert (depth16[~mask] == 0).all()
        # Normals are unit vectors stored as (n + 1) / 2; at the centre they face the camera.
        n = normal[..., :3].astype(np.float64) / 255.0 * 2.0 - 1.0
        assert np.linalg.norm(n[mask], axis=-1) == pytest.approx(1.0, abs=0.02)
        to_cam = cam.position / np.linalg.norm(cam.position)
        assert float(n[centre, centre] @ to_cam) > 0.98
    assert record["min_coverage"] == pytest.approx(min(record["view_sets"][""]["coverage"]))
    assert np.allclose(np.array(record["file_to_world"]), obj.file_to_world)


def test_zero123pp_layout_has_condition_and_six_targets_on_white(
    sphere_glb: Path, cpu_backend: Any, tmp_path: Path
) -> None:
    obj, _ = prepare_object(sphere_glb)
    record = render_layout(cpu_backend, obj, "u1", layout_spec("zero123pp", size=48), tmp_path)
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == [f"{i:03d}.png" for i in range(7)]
    cams7 = cams.zero123pp_cameras("u1", 0, size=48)
    assert [round(c.elevation_deg) for c in cams7[1:]] == [20, -10, 20, -10, 20, -10]
    for i in range(7):
        rgba = _png(tmp_path / f"{i:03d}.png")
        assert rgba.shape == (48, 48, 4)
        bg = rgba[..., 3] == 0
        assert bg.any() and (rgba[bg][:, :3] == 255).all()
    assert record["n_views"] == 7


def test_eval_layout_has_input_orbit_and_benchmark_views(
    sphere_glb: Path, cpu_backend: Any, tmp_path: Path
) -> None:
    obj, _ = prepare_object(sphere_glb)
    spec = layout_spec("eval", size=32)
    record = render_layout(cpu_backend, obj, "u2", spec, tmp_path, benchmark=True)
    assert (tmp_path / "input.png").is_file()
    assert len(list((tmp_path / "orbit").glob("[0-9][0-9][0-9].png"))) == 21
    assert len(list((tmp_path / "benchmark").glob("[0-9][0-9][0-9].png"))) == 16
    orbit = np.load(tmp_path / "orbit" / "cameras.npz")
    assert orbit["c2w"].shape == (21, 4, 4)
    elev = record["view_sets"]["orbit"]["elevation_deg"]
    assert elev[:3] == pytest.approx([30.0, 0.0, -30.0])
    bench = record["view_sets"]["benchmark"]["elevation_deg"]
    assert all(e >= 0.0 for e in bench)
    assert len(list((tmp_path / "zero123pp").glob("00[1-6].png"))) == 6
    assert record["n_views"] == 1 + 6 + 21 + 16


def test_stored_cameras_reproduce_the_pixels_exactly(
    sphere_glb: Path, cpu_backend: Any, tmp_path: Path
) -> None:
    """``cameras.npz`` holds the cameras that made the pixels: rendering the object again from
    the stored (float32) cameras gives the same bytes. (Rendered from the float64 cameras and
    stored rounded, an oracle prediction re-rendered at the stored cameras differed in edge
    and texture pixels: PSNR 62-100 dB instead of inf on real GSO-layout meshes.)"""
    import dataclasses

    from rendering.output_layouts import rgba_u8

    obj, _ = prepare_object(sphere_glb)
    spec = layout_spec("eval", size=160, orbit_views=6)
    render_layout(cpu_backend, obj, "u3", spec, tmp_path)
    scale = np.diag([spec.object_scale] * 3 + [1.0])
    placed = dataclasses.replace(obj, file_to_world=scale @ obj.file_to_world)
    for sub in ("zero123pp", "orbit"):
        npz = np.load(tmp_path / sub / "cameras.npz")
        size = (int(npz["size"][0]), int(npz["size"][1]))
        stored = [
            cams.Camera.from_c2w(c, float(f), size)
            for c, f in zip(npz["c2w"], npz["fov_deg"], strict=True)
        ]
        views = cpu_backend.render(placed, stored)
        for i, view in enumerate(views):
            expected = _png(tmp_path / sub / f"{i + (sub == 'zero123pp'):03d}.png")
            np.testing.assert_array_equal(rgba_u8(view), expected, err_msg=f"{sub} {i}")


# --------------------------------------------------------------------------------------------
# The Ray stage (real runner, real CPU backend, fixture objects including a truncated GLB).
# --------------------------------------------------------------------------------------------


def _subset(manifest_path: Path, record: dict[str, Any], kinds: set[str]) -> pa.Table:
    from pipelines.schema import read_manifest

    table = read_manifest(str(manifest_path))
    wanted = {o["uid"] for o in record["objaverse"] if o["kind"] in kinds}
    keep = [u in wanted for u in table["uid"].to_pylist()]
    return table.filter(pa.array(keep))


@pytest.mark.usefixtures("ray_local")
def test_render_stage_publishes_valid_objects_and_fails_bad_ones(
    fixture_set: dict[str, Any], objaverse_manifest: Path, tmp_path: Path
) -> None:
    from pipelines.render import RenderConfig, run_render
    from pipelines.runner import RunOptions
    from pipelines.schema import read_parquet
    from pipelines.storage import read_marker

    table = _subset(
        objaverse_manifest, fixture_set["record"], {"good", "unreadable", "tiny_in_view"}
    )
    kinds = {o["uid"]: o["kind"] for o in fixture_set["record"]["objaverse"]}
    cfg = RenderConfig(
        out=str(tmp_path / "out"),
        backend="cpu",
        layout="instantmesh32",
        size=32,
        views=4,
        min_coverage=0.002,
        run=RunOptions(workers=1, shard_size=4, progress=False),
    )
    report = run_render(cfg, table)
    status = {r["uid"]: r for r in read_parquet(report.status_uri).to_pylist()}
    assert len(status) == table.num_rows
    for uid, row in status.items():
        folder = tmp_path / "out" / LAYOUT_DIRS["instantmesh32"] / uid
        if kinds[uid] == "unreadable":
            assert row["status"] == "failed"
            assert "MeshLoadError" in row["error_type"] and ".glb" in row["error"]
            assert not folder.exists()
        else:
            assert row["status"] == "ok", row["error"]
            assert read_marker(str(folder)) is not None
            assert read_record(folder)["n_views"] == 4
    results = read_parquet(report.results_uri)
    assert all(len(c) == 4 for c in results["coverage"].to_pylist())

    again = run_render(cfg, table)
    assert again.skipped_done == report.ok and again.processed == report.failed


def test_render_cli_on_a_directory_of_meshes(tmp_path: Path, ray_local: None) -> None:
    from pipelines.cli import main

    src = tmp_path / "meshes"
    src.mkdir()
    (src / "a box.glb").write_bytes(
        pg.glb_bytes(pg.textured(pg.make_shape("box", 1), pg.make_texture("checker", 1)))
    )
    (src / "b.obj").write_text(pg.make_shape("cone", 2).export(file_type="obj"))  # untextured
    out = tmp_path / "out"
    rc = main(
        [
            "render",
            "--input",
            str(src),
            "--out",
            str(out),
            "--backend",
            "cpu",
            "--layout",
            "zero123pp",
            "--size",
            "32",
            "--run.workers",
            "1",
            "--run.no-progress",
        ]
    )
    assert rc == 0
    done = sorted(
        p.name for p in (out / "rendering_zero123plus").iterdir() if not p.name.startswith(".")
    )
    assert done == ["a_box", "b"]
    assert (
        main(["render", "--out", str(out), "--backend", "cpu"]) == 2
    )  # neither --input nor --manifest
