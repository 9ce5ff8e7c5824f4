"""``imesh generate`` end to end with tiny random models (Zero123++ folder + LRM) on CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from test_zero123pp import build_tiny_zero123pp


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from instantmesh import build_model
    from instantmesh.checkpoint import save_model

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    return {
        "zero123pp": build_tiny_zero123pp(root / "zero123plus-v1.2"),
        "lrm": save_model(build_model("tiny-mesh"), root / "tiny-mesh"),
    }


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
    models: dict[str, Path], tmp_path: Path
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

    # Same seed -> identical views; another seed -> different views.
    assert _run(models, tmp_path / "b", str(img), "--seed", "7", "--no-turntable") == 0
    assert _run(models, tmp_path / "c", str(img), "--seed", "8", "--no-turntable") == 0
    a = np.asarray(Image.open(obj / "multiview.png"))
    b = np.asarray(Image.open(tmp_path / "b" / "red_box" / "multiview.png"))
    c = np.asarray(Image.open(tmp_path / "c" / "red_box" / "multiview.png"))
    assert (a == b).all() and not (a == c).all()


def test_generate_from_user_views_with_a_texture_map(
    models: dict[str, Path], tmp_path: Path
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


def test_generate_reports_bad_usage(models: dict[str, Path], tmp_path: Path) -> None:
    from pipelines.cli import main

    assert main(["generate", "--out", str(tmp_path)]) == 2  # no images, no views
    assert main(["generate", str(tmp_path / "missing.png"), "--out", str(tmp_path)]) == 2
    img = _image(tmp_path / "x.png")
    assert main(["generate", str(img), "--out", str(tmp_path), "--zero123pp", str(tmp_path)]) == 2
