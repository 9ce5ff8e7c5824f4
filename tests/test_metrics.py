"""Image metrics: analytic PSNR, SSIM against scikit-image, compositing, LPIPS wiring/offline."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from evaluation import metrics
from evaluation.metrics import (
    LpipsUnavailable,
    composite,
    image_metrics,
    load_lpips,
    lpips_backbone_path,
    mean_metrics,
)


@pytest.fixture
def images() -> tuple[np.ndarray, np.ndarray]:
    """Two batches of smooth-ish 3x40x48 RGB images in [0, 1] that differ by noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:48] / 48.0
    base = np.stack([0.5 + 0.3 * np.sin(6 * xx), 0.4 + 0.3 * yy, 0.3 + 0.2 * xx], -1)
    gt = np.stack([np.roll(base, k, axis=1) for k in range(3)])
    pred = np.clip(gt + rng.normal(0.0, 0.05, gt.shape), 0.0, 1.0)
    return pred, gt


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test loudly."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ----------------------------------------------------------------------------- PSNR


def test_psnr_of_constant_offset_is_minus_10_log10_c_squared() -> None:
    rng = np.random.default_rng(1)
    gt = rng.uniform(0.0, 0.5, (2, 16, 16, 3))
    for c in (0.1, 0.25, 0.5):
        out = image_metrics(gt + c, gt, lpips_net=None)
        np.testing.assert_allclose(out["psnr"], -10 * np.log10(c**2), rtol=1e-9)


def test_psnr_identical_is_inf_and_single_image_gives_floats() -> None:
    img = np.full((8, 8, 3), 0.3)
    out = image_metrics(img, img.copy(), lpips_net=None)
    assert isinstance(out["psnr"], float) and out["psnr"] == np.inf
    assert out["ssim"] == pytest.approx(1.0)
    assert set(out) == {"psnr", "ssim", "lpips"} and np.isnan(out["lpips"])


# ----------------------------------------------------------------------------- SSIM


def test_ssim_matches_direct_skimage_call(images: tuple[np.ndarray, np.ndarray]) -> None:
    pred, gt = images
    out = image_metrics(pred, gt, lpips_net=False)
    expected = [
        structural_similarity(pred[i], gt[i], channel_axis=-1, data_range=1.0)
        for i in range(len(pred))
    ]
    assert out["ssim"].shape == (3,)
    np.testing.assert_allclose(out["ssim"], expected, rtol=0, atol=1e-12)
    single = image_metrics(pred[1], gt[1], lpips_net=False)
    assert single["ssim"] == pytest.approx(expected[1], abs=1e-12)


def test_ssim_torch_path_matches_skimage(images: tuple[np.ndarray, np.ndarray]) -> None:
    """The torch implementation (used on GPUs) is the same arithmetic; checked here on CPU."""
    pred, gt = images
    expected = [
        structural_similarity(pred[i], gt[i], channel_axis=-1, data_range=1.0) for i in range(3)
    ]
    np.testing.assert_allclose(metrics.ssim(pred, gt, device="cpu"), expected, atol=1e-12)


def test_ssim_on_rgba_matches_skimage_on_composited_images(
    images: tuple[np.ndarray, np.ndarray],
) -> None:
    pred, gt = images
    alpha = np.zeros((*pred.shape[:3], 1))
    alpha[:, 8:30, 10:40] = 1.0
    alpha[:, 5:8] = 0.5
    pred_rgba = np.concatenate([pred, alpha], -1)
    bg = np.array([0.2, 0.5, 0.9])
    out = image_metrics(pred_rgba, gt, background=bg, lpips_net=None)
    comp = pred * alpha + bg * (1 - alpha)
    expected = [
        structural_similarity(comp[i], gt[i], channel_axis=-1, data_range=1.0) for i in range(3)
    ]
    np.testing.assert_allclose(out["ssim"], expected, atol=1e-12)


# ----------------------------------------------------------------------------- compositing / mask


def test_composite_hand_made_2x2_on_white_and_black() -> None:
    rgba = np.array(
        [
            [[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]],
            [[0.2, 0.4, 0.6, 0.5], [0.0, 1.0, 0.0, 0.25]],
        ]
    )
    white = np.array(
        [
            [[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]],
            [[0.6, 0.7, 0.8], [0.75, 1.0, 0.75]],
        ]
    )
    black = np.array(
        [
            [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
            [[0.1, 0.2, 0.3], [0.0, 0.25, 0.0]],
        ]
    )
    np.testing.assert_allclose(composite(rgba), white, atol=1e-15)
    np.testing.assert_allclose(composite(rgba, background=0.0), black, atol=1e-15)
    # A mask sends the masked-out pixel to the background, after alpha compositing.
    mask = np.array([[False, True], [True, True]])
    expected = white.copy()
    expected[0, 0] = 1.0
    np.testing.assert_allclose(composite(rgba, mask=mask), expected, atol=1e-15)


def test_mask_makes_differences_outside_it_invisible() -> None:
    rng = np.random.default_rng(2)
    gt = rng.uniform(0, 1, (2, 12, 12, 3))
    pred = gt.copy()
    pred[:, :, 6:] = rng.uniform(0, 1, (2, 12, 6, 3))  # differ only on the right half
    mask = np.zeros((12, 12), dtype=bool)
    mask[:, :6] = True
    assert np.all(image_metrics(pred, gt, mask, lpips_net=None)["psnr"] == np.inf)
    assert np.all(np.isfinite(image_metrics(pred, gt, lpips_net=None)["psnr"]))
    per_image = np.stack([mask, ~mask])
    out = image_metrics(pred, gt, per_image, lpips_net=None)["psnr"]
    assert out[0] == np.inf and np.isfinite(out[1])


# ----------------------------------------------------------------------------- validation


def test_size_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(8, 8, 3\).*\(8, 9, 3\)"):
        image_metrics(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)), lpips_net=None)
    with pytest.raises(ValueError, match="differ in size"):
        image_metrics(np.zeros((2, 8, 8, 3)), np.zeros((3, 8, 8, 3)), lpips_net=None)


@pytest.mark.parametrize(
    ("value", "message"), [(1.5, "in \\[0, 1\\]"), (-0.1, "in \\[0, 1\\]"), (np.nan, "NaN")]
)
def test_out_of_range_or_nan_raises(value: float, message: str) -> None:
    bad = np.full((8, 8, 3), 0.5)
    bad[3, 3, 1] = value
    with pytest.raises(ValueError, match=f"pred: .*{message}"):
        image_metrics(bad, np.full((8, 8, 3), 0.5), lpips_net=None)
    with pytest.raises(ValueError, match=f"gt: .*{message}"):
        image_metrics(np.full((8, 8, 3), 0.5), bad, lpips_net=None)


def test_integer_images_and_bad_masks_are_rejected() -> None:
    with pytest.raises(ValueError, match="dtype uint8"):
        image_metrics(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3)), lpips_net=None)
    with pytest.raises(ValueError, match="mask"):
        image_metrics(
            np.zeros((8, 8, 3)), np.zeros((8, 8, 3)), np.ones((8, 7), bool), lpips_net=None
        )
    with pytest.raises(ValueError, match="mask"):
        image_metrics(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)), np.ones((8, 8)), lpips_net=None)


def test_torch_tensors_are_accepted(images: tuple[np.ndarray, np.ndarray]) -> None:
    import torch

    pred, gt = images
    from_torch = image_metrics(torch.from_numpy(pred), torch.from_numpy(gt), lpips_net=None)
    from_numpy = image_metrics(pred, gt, lpips_net=None)
    np.testing.assert_array_equal(from_torch["ssim"], from_numpy["ssim"])
    with pytest.raises(ValueError, match=r"pred shape \(40, 48, 3\), gt shape \(3, 40, 48, 3\)"):
        image_metrics(torch.from_numpy(pred[0]), torch.from_numpy(gt), lpips_net=None)


def test_mean_metrics(images: tuple[np.ndarray, np.ndarray]) -> None:
    pred, gt = images
    out = image_metrics(pred, gt, lpips_net=None)
    means = mean_metrics(out)
    assert means["psnr"] == pytest.approx(float(np.mean(out["psnr"])))
    assert np.isnan(means["lpips"])


# ----------------------------------------------------------------------------- LPIPS


def test_lpips_random_backbone_wiring(images: tuple[np.ndarray, np.ndarray]) -> None:
    """Wiring only: a random trunk gives meaningless values; we check shape, finiteness,
    identical -> 0 and that the batched path equals per-image calls."""
    pred, gt = images
    out = image_metrics(pred, gt, lpips_net="random", device="cpu", lpips_batch_size=2)
    assert out["lpips"].shape == (3,) and np.all(np.isfinite(out["lpips"]))
    assert np.all(out["lpips"] >= 0)
    same = image_metrics(gt, gt.copy(), lpips_net="random", device="cpu")
    np.testing.assert_allclose(same["lpips"], 0.0, atol=1e-7)
    single = [image_metrics(pred[i], gt[i], lpips_net="random", device="cpu") for i in range(3)]
    np.testing.assert_allclose([s["lpips"] for s in single], out["lpips"], rtol=1e-4, atol=1e-6)
    assert load_lpips("random", "cpu") is load_lpips("alex-random", "cpu")  # cached


def test_lpips_unknown_backbone_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown backbone"):
        load_lpips("resnet")


def test_lpips_unavailable_offline_names_expected_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    metrics.clear_lpips_cache()
    img = np.full((16, 16, 3), 0.5)
    for net, filename in (("vgg", "vgg16-397923af.pth"), ("alex", "alexnet-owt-7be5be79.pth")):
        expected = tmp_path / "hub" / "checkpoints" / filename
        assert lpips_backbone_path(net) == expected
        with pytest.raises(LpipsUnavailable, match=re.escape(str(expected))):
            image_metrics(img, img, lpips_net=net, device="cpu")
    assert not (tmp_path / "hub" / "checkpoints").exists() or not any(
        (tmp_path / "hub" / "checkpoints").iterdir()
    )


def _save_random_squeezenet(path: Path) -> dict[str, object]:
    import torch
    from torchvision.models import squeezenet1_1

    torch.manual_seed(0)
    state = squeezenet1_1(weights=None).state_dict()
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return state


def test_lpips_loads_backbone_from_cache_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    """Our loader maps torchvision's `features.<i>` keys onto lpips' `slice<k>.<i>` modules.
    The file holds random weights, so the hash check is bypassed (ours, not lpips')."""
    import torch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    metrics.clear_lpips_cache()
    monkeypatch.setattr(metrics, "_check_hash_prefix", lambda path: None)
    state = _save_random_squeezenet(lpips_backbone_path("squeeze"))
    model = load_lpips("squeeze", "cpu")
    loaded = model.net.state_dict()
    assert len(loaded) > 0
    for key, value in loaded.items():
        torch.testing.assert_close(value, state["features." + key.split(".", 1)[1]])
    img = np.full((32, 32, 3), 0.5)
    assert image_metrics(img, img, lpips_net="squeeze", device="cpu")["lpips"] == pytest.approx(0.0)
    metrics.clear_lpips_cache()


def test_lpips_corrupt_backbone_file_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    metrics.clear_lpips_cache()
    _save_random_squeezenet(lpips_backbone_path("squeeze"))  # wrong SHA-256 prefix
    with pytest.raises(LpipsUnavailable, match="corrupt"):
        load_lpips("squeeze", "cpu")
    metrics.clear_lpips_cache()


def test_lpips_convolutions_run_in_ieee_fp32_on_cuda_and_flags_are_restored() -> None:
    """TF32 (torch's cuDNN default) would make GPU LPIPS a different number from the CPU's.
    Setting the backend flag needs no GPU, so the switch itself is checked everywhere."""
    import torch

    conv = torch.backends.cudnn.conv
    before = conv.fp32_precision
    with metrics.exact_fp32_convolutions("cpu"):
        assert conv.fp32_precision == before  # CPU: untouched
    with metrics.exact_fp32_convolutions("cuda"):
        assert conv.fp32_precision == "ieee"
    assert conv.fp32_precision == before
    with (
        pytest.raises(RuntimeError, match="boom"),
        metrics.exact_fp32_convolutions(torch.device("cuda", 0)),
    ):
        assert conv.fp32_precision == "ieee"
        raise RuntimeError("boom")
    assert conv.fp32_precision == before


@pytest.mark.gpu
def test_lpips_on_cuda_equals_cpu() -> None:
    import copy

    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    rng = np.random.default_rng(0)
    gt = rng.random((3, 64, 64, 3))
    pred = np.clip(gt + rng.normal(0, 0.1, gt.shape), 0, 1)
    cpu_model = load_lpips("vgg-random", "cpu")
    cuda_model = copy.deepcopy(cpu_model).to("cuda")
    x = torch.from_numpy(pred).float().permute(0, 3, 1, 2) * 2 - 1
    y = torch.from_numpy(gt).float().permute(0, 3, 1, 2) * 2 - 1
    with torch.inference_mode():
        ref = cpu_model(x, y).reshape(-1).double().numpy()
        with metrics.exact_fp32_convolutions("cuda"):
            got = cuda_model(x.cuda(), y.cuda()).reshape(-1).double().cpu().numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
