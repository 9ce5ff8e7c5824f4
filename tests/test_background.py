"""Input background handling (``instantmesh.background``) through the real rembg code path, offline.

The segmentation model is a tiny ONNX graph with U^2-Net's signature (input NCHW float
1x3x320x320 normalized with ImageNet mean/std, first output 1x1x320x320) that computes an
analytic mask: "not white" (the darkest channel of the de-normalized input below 0.5). rembg
loads it like ``u2net.onnx`` and runs its own pre/post-processing around it; the network is
never touched (``pooch.retrieve`` fails the test if called).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

pytest.importorskip("rembg", reason="needs the 'rembg' extra: pip install -e '.[rembg]'")
onnx = pytest.importorskip("onnx", reason="needs the dev extra (onnx builds the tiny model)")

from instantmesh.background import (  # noqa: E402
    FOREGROUND_RATIO,
    MissingDependencyError,
    RembgModelMissing,
    composite_on_white,
    default_rembg_model_path,
    load_rembg_session,
    prepare_condition_image,
    remove_image_background,
    resize_foreground,
    resolve_rembg_model,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WHITE_THRESHOLD = 0.5


def build_tiny_u2net(path: Path) -> Path:
    """Write an ONNX model with u2net.onnx's input/output signature whose mask is
    sigmoid(60 * (0.5 - min_c(x_c * std_c + mean_c))): ~1 on dark-ish pixels, ~0 on white."""
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, value: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)

    inits = [
        const("std", np.reshape(IMAGENET_STD, (1, 3, 1, 1))),
        const("mean", np.reshape(IMAGENET_MEAN, (1, 3, 1, 1))),
        const("threshold", np.array(WHITE_THRESHOLD)),
        const("gain", np.array(60.0)),
    ]
    nodes = [
        helper.make_node("Mul", ["input.1", "std"], ["scaled"]),
        helper.make_node("Add", ["scaled", "mean"], ["rgb"]),
        helper.make_node("ReduceMin", ["rgb"], ["darkest"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["threshold", "darkest"], ["margin"]),
        helper.make_node("Mul", ["margin", "gain"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["d0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_u2net",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 320, 320])],
        [helper.make_tensor_value_info("d0", TensorProto.FLOAT, [1, 1, 320, 320])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def red_square_on_white(width: int = 400, height: int = 300) -> tuple[Image.Image, np.ndarray]:
    """RGB image (red rectangle on white, off centre) and its true foreground mask."""
    arr = np.full((height, width, 3), 255, dtype=np.uint8)
    mask = np.zeros((height, width), dtype=bool)
    mask[60:200, 90:210] = True
    arr[mask] = (220, 60, 40)
    return Image.fromarray(arr, "RGB"), mask


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    import pooch

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"rembg tried to download a model: {args}")

    monkeypatch.setattr(pooch, "retrieve", refuse)


@pytest.fixture
def u2net_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """rembg's model cache pointed at an empty folder of the test."""
    home = tmp_path / "u2net_home"
    home.mkdir()
    monkeypatch.setenv("U2NET_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_u2net(tmp_path_factory.mktemp("seg") / "u2net.onnx")


def test_rembg_alpha_matches_the_analytic_mask(tiny_model: Path, u2net_home: Path) -> None:
    image, mask = red_square_on_white()
    session = load_rembg_session(tiny_model)
    out = remove_image_background(image, session)
    assert out.mode == "RGBA" and out.size == image.size
    alpha = np.asarray(out.getchannel("A"))
    border = 3  # rembg resamples 400x300 -> 320x320 -> 400x300 (Lanczos) around the model
    inside = ndimage.binary_erosion(mask, iterations=border)
    outside = ~ndimage.binary_dilation(mask, iterations=border)
    assert (alpha[inside] == 255).all()
    assert (alpha[outside] == 0).all()
    # Colour is kept under the mask.
    assert (np.asarray(out)[inside][:, :3] == (220, 60, 40)).all()


def test_rgb_input_is_segmented_recentred_and_recorded(tiny_model: Path, u2net_home: Path) -> None:
    image, _ = red_square_on_white()
    cond = prepare_condition_image(image, session=load_rembg_session(tiny_model))
    assert cond.rembg_used and cond.alpha == "rembg" and cond.recentred
    assert cond.foreground_ratio == FOREGROUND_RATIO
    assert cond.foreground_before == pytest.approx(140 / 400, abs=0.02)
    assert cond.foreground_after == pytest.approx(0.85, abs=0.02)
    arr = np.asarray(cond.image).astype(int)
    assert cond.image.mode == "RGB" and cond.image.size[0] == cond.image.size[1]
    side = cond.image.size[0]
    assert side == pytest.approx(140 / 0.85, abs=6)  # the mask edge may bleed 1-3 px
    assert (arr[0, 0] == 255).all() and (arr[-1, -1] == 255).all()
    assert (arr[side // 2, side // 2] == (220, 60, 40)).all()
    record = cond.record()
    assert record["rembg"] is True and "rembg" in record["reason"]
    assert record["input_mode"] == "RGB" and record["input_size"] == [400, 300]

    # The model is found in rembg's cache ($U2NET_HOME/u2net.onnx) with no path given.
    (u2net_home / "u2net.onnx").write_bytes(tiny_model.read_bytes())
    assert default_rembg_model_path() == u2net_home / "u2net.onnx"
    again = prepare_condition_image(image)
    assert np.array_equal(np.asarray(again.image), np.asarray(cond.image))


def test_rgba_with_transparency_keeps_its_alpha_without_a_model(u2net_home: Path) -> None:
    image, mask = red_square_on_white()
    rgba = image.convert("RGBA")
    rgba.putalpha(Image.fromarray((mask * 255).astype(np.uint8)))
    cond = prepare_condition_image(rgba)  # no model anywhere: none is needed
    assert not cond.rembg_used and cond.alpha == "input" and cond.recentred
    expected = composite_on_white(resize_foreground(rgba, FOREGROUND_RATIO))
    assert np.array_equal(np.asarray(cond.image), np.asarray(expected))
    # Fully opaque RGBA has no mask: it needs rembg, hence the model.
    with pytest.raises(RembgModelMissing):
        prepare_condition_image(image.convert("RGBA"))


def test_no_rembg_uses_the_image_as_it_is(u2net_home: Path) -> None:
    image, mask = red_square_on_white()
    cond = prepare_condition_image(image, remove_background=False)
    assert np.array_equal(np.asarray(cond.image), np.asarray(image))
    assert not cond.rembg_used and not cond.recentred and "--no-rembg" in cond.reason
    rgba = image.convert("RGBA")
    rgba.putalpha(Image.fromarray((mask * 255).astype(np.uint8)))
    cond = prepare_condition_image(rgba, remove_background=False)
    assert cond.image.size == rgba.size and cond.alpha == "input" and not cond.recentred
    assert np.array_equal(np.asarray(cond.image), np.asarray(composite_on_white(rgba)))


def test_absent_model_error_names_the_file_where_it_goes_and_no_rembg(
    u2net_home: Path, tmp_path: Path
) -> None:
    with pytest.raises(RembgModelMissing) as err:
        resolve_rembg_model()
    msg = str(err.value)
    assert str(u2net_home / "u2net.onnx") in msg
    assert "u2net.onnx" in msg and "--no-rembg" in msg and "--rembg-model" in msg
    assert "never downloaded" in msg
    missing = tmp_path / "nowhere" / "u2net.onnx"
    with pytest.raises(RembgModelMissing, match=f"--rembg-model {missing}"):
        load_rembg_session(missing)


def test_absent_rembg_package_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tiny_model: Path
) -> None:
    monkeypatch.setitem(sys.modules, "rembg", None)
    image, _ = red_square_on_white()
    with pytest.raises(MissingDependencyError, match=r"instantmesh-pipeline\[rembg\]"):
        prepare_condition_image(image, rembg_model=tiny_model)


def test_generate_cli_fails_before_loading_models_when_the_model_is_absent(
    u2net_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import instantmesh.checkpoint
    from pipelines.cli import main

    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded before the rembg check")

    monkeypatch.setattr(instantmesh.checkpoint, "load_checkpoint", no_load)
    image, _ = red_square_on_white()
    path = tmp_path / "photo.png"
    image.save(path)
    rc = main(["generate", str(path), "--checkpoint", "x.ckpt", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(path) in err and str(u2net_home / "u2net.onnx") in err and "--no-rembg" in err
    # Also with an explicit --rembg-model that does not exist.
    rc = main(
        [
            "generate",
            str(path),
            "--checkpoint",
            "x.ckpt",
            "--rembg-model",
            str(tmp_path / "u.onnx"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 2 and str(tmp_path / "u.onnx") in capsys.readouterr().err
