"""``imesh generate`` end to end with tiny random models (Zero123++ folder + LRM) on CPU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image


@pytest.fixture
def models(tiny_models: dict[str, Path]) -> dict[str, Path]:
    return tiny_models


def _image(path: Path) -> Path:
    rgba = np.zeros((120, 100, 4), dtype=np.uint8)
    rgba[30:90, 25:75] = (220, 60, 40, 255)
    Image.fromarray(rgba, "RGBA").save(path)
    return path


def _run(models: dict[str, Path], out: Path, *extra: str) -> int:
    from pipelines.cli import main

    return main(
        [
            "generate",
            "--checkpoint",
            str(models["lrm"]),
            "--variant",
            "tiny-mesh",
            "--zero123pp",
            str(models["zero123pp"]),
            "--steps",
            "1",
            "--turntable-frames",
            "4",
            "--turntable-size",
            "48",
            "--device",
            "cpu",
            "--out",
            str(out),
            *extra,
        ]
    )


def test_generate_writes_a_loadable_mesh_views_and_turntable(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rendering.mesh_io import load_world_mesh

    img = _image(tmp_path / "red box.png")
    assert _run(models, tmp_path / "a", str(img), "--seed", "7") == 0
    obj = tmp_path / "a" / "red_box"
    assert Image.open(obj / "multiview.png").size == (640, 960)
    assert Image.open(obj / "condition.png").mode == "RGB"
    mesh = load_world_mesh(obj / "mesh.obj")
    assert len(mesh.faces) > 0 and np.isfinite(mesh.vertices).all()
    gif = Image.open(obj / "turntable.gif")
    assert gif.n_frames == 4 and gif.size == (48, 48)
    record: dict[str, Any] = __import__("json").loads((obj / "generate.json").read_text())
    assert record["variant"] == "tiny-mesh" and "mesh.obj" in record["files"]
    # RGBA with transparency: its alpha is the mask, no rembg; re-centred to 85 %.
    assert record["input"]["alpha"] == "input" and record["input"]["rembg"] is False
    assert record["input"]["recentred"] and record["input"]["foreground_after"] > 0.8
    assert record["zero123pp_dtype"] == "float32"  # auto on CPU
    assert record["views_used"] == [0, 1, 2, 3, 4, 5] and record["input_camera_radius"] == 4.0
    assert "\r" not in capsys.readouterr().err  # no diffusion or object bar redraws in a log

    # Same seed -> identical views; another seed -> different views.
    assert _run(models, tmp_path / "b", str(img), "--seed", "7", "--no-turntable") == 0
    assert _run(models, tmp_path / "c", str(img), "--seed", "8", "--no-turntable") == 0
    a = np.asarray(Image.open(obj / "multiview.png"))
    b = np.asarray(Image.open(tmp_path / "b" / "red_box" / "multiview.png"))
    c = np.asarray(Image.open(tmp_path / "c" / "red_box" / "multiview.png"))
    assert (a == b).all() and not (a == c).all()


def test_generate_from_user_views_with_a_texture_map(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    views = tmp_path / "views" / "thing"
    views.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 7):
        Image.fromarray(rng.integers(0, 255, (320, 320, 3), dtype=np.uint8)).save(
            views / f"{i:03d}.png"
        )
    rc = _run(
        models,
        tmp_path / "out",
        "--views",
        str(tmp_path / "views"),
        "--texture",
        "--texture-resolution",
        "64",
        "--export",
        "glb",
        "--no-turntable",
    )
    assert rc == 0
    loaded = trimesh.load(tmp_path / "out" / "thing" / "mesh.glb", force="mesh")
    assert (
        loaded.visual.uv is not None
        and (loaded.visual.uv >= 0).all()
        and (loaded.visual.uv <= 1).all()
    )
    assert not (tmp_path / "out" / "thing" / "condition.png").exists()  # no diffusion ran
    err = capsys.readouterr().err  # not a terminal: one plain progress line, no redraws
    assert "generate: 1/1 objects (100 %), 0 failed" in err and "\r" not in err


def test_generate_reports_bad_usage(models: dict[str, Path], tmp_path: Path) -> None:
    from pipelines.cli import main

    assert main(["generate", "--out", str(tmp_path)]) == 2  # no images, no views
    assert main(["generate", str(tmp_path / "missing.png"), "--out", str(tmp_path)]) == 2
    img = _image(tmp_path / "x.png")
    assert main(["generate", str(img), "--out", str(tmp_path), "--zero123pp", str(tmp_path)]) == 2
    assert _run(models, tmp_path / "v", str(img), "--views-used", "0", "6") == 2
    assert _run(models, tmp_path / "v", str(img), "--scale", "0") == 2
    assert _run(models, tmp_path / "v", str(img), "--variant", "nope") == 2
    assert not (tmp_path / "v").exists()  # refused before --out was written


def test_generate_rgb_input_goes_through_rembg_with_upstream_options(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RGB photo -> rembg (tiny offline U^2-Net stand-in) -> 85 % -> four views at scale 1.5."""
    pytest.importorskip("rembg")
    pytest.importorskip("onnx")
    from test_background import build_tiny_u2net, red_square_on_white

    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "empty"))
    seg = build_tiny_u2net(tmp_path / "seg" / "u2net.onnx")
    image, _ = red_square_on_white()
    image.save(tmp_path / "photo.jpg", quality=95)
    rc = _run(
        models,
        tmp_path / "out",
        str(tmp_path / "photo.jpg"),
        "--rembg-model",
        str(seg),
        "--views-used",
        "0",
        "2",
        "4",
        "5",
        "--scale",
        "1.5",
        "--distance",
        "3.0",
        "--dtype",
        "float32",
    )
    assert rc == 0
    obj = tmp_path / "out" / "photo"
    record: dict[str, Any] = json.loads((obj / "generate.json").read_text())
    assert record["input"]["rembg"] is True and record["input"]["alpha"] == "rembg"
    assert record["input"]["foreground_after"] == pytest.approx(0.85, abs=0.03)
    assert record["views_used"] == [0, 2, 4, 5] and record["input_camera_radius"] == 6.0
    assert record["turntable_distance"] == 3.0 and record["zero123pp_dtype"] == "float32"
    cond = np.asarray(Image.open(obj / "condition.png")).astype(int)
    assert (cond[0, 0] == 255).all() and (cond[-1, -1] == 255).all()
    side = cond.shape[0]
    assert (np.abs(cond[side // 2, side // 2] - (220, 60, 40)) <= 12).all()

    # --no-rembg: the photo is used as it is (no model needed, nothing re-centred).
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "empty"))
    rc = _run(models, tmp_path / "raw", str(tmp_path / "photo.jpg"), "--no-rembg", "--no-turntable")
    assert rc == 0
    raw = json.loads((tmp_path / "raw" / "photo" / "generate.json").read_text())
    assert raw["input"]["rembg"] is False and not raw["input"]["recentred"]
    assert Image.open(tmp_path / "raw" / "photo" / "condition.png").size == (400, 300)


def test_reconstruct_uses_the_matching_cameras_of_the_views_used(models: dict[str, Path]) -> None:
    from instantmesh.cameras import input_cameras
    from instantmesh.checkpoint import load_checkpoint
    from instantmesh.reconstruct import reconstruct_mesh, views_tensor

    model = load_checkpoint(str(models["lrm"]), "tiny-mesh", device=torch.device("cpu")).eval()
    # Random init zeroes the camera modulation (adaLN); give it weights so cameras matter.
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "adaLN_modulation" in name:
                param.normal_(0.0, 0.2)
    rng = np.random.default_rng(1)
    views = [rng.random((64, 64, 3)).astype(np.float32) for _ in range(6)]
    idx = [0, 2, 4, 5]
    _, planes = reconstruct_mesh(model, views, view_indices=idx, scale=1.5, grid_resolution=16)
    images = views_tensor(views, model.cfg.input_size, torch.device("cpu"))[:, idx]
    cameras = input_cameras(radius=6.0, batch_size=1)[:, idx]
    with torch.no_grad():
        expected = model.forward_planes(images, cameras)
        wrong = model.forward_planes(images, input_cameras(batch_size=1)[:, [0, 1, 2, 3]])
    torch.testing.assert_close(planes, expected)
    assert not torch.allclose(planes, wrong)
    _, six = reconstruct_mesh(model, views, grid_resolution=16)
    assert not torch.allclose(six, planes)
    with pytest.raises(ValueError, match=r"0\.\.5"):
        reconstruct_mesh(model, views, view_indices=[0, 6])
    with pytest.raises(ValueError, match="distinct"):
        reconstruct_mesh(model, views, view_indices=[1, 1])


def test_dtype_follows_the_device() -> None:
    from instantmesh.generate import resolve_dtype

    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16
