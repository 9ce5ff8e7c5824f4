"""Image metrics for novel-view evaluation: PSNR, SSIM and LPIPS on [0, 1] float images.

Definitions (per image; a batch gives one value per image):

* **PSNR** on the [0, 1] range: ``PSNR = -10 * log10(MSE)`` where MSE is the mean of the squared
  difference over all pixels and the three colour channels, computed in float64. Identical images
  have MSE = 0 and PSNR = ``+inf`` (returned as ``inf``, never clipped): a mean over a batch that
  contains one identical pair is therefore ``inf`` too, which is the honest answer.
* **SSIM** exactly as ``skimage.metrics.structural_similarity(pred, gt, channel_axis=-1,
  data_range=1.0)`` with its defaults: a 7x7 *uniform* window (``gaussian_weights=False``),
  K1 = 0.01, K2 = 0.03, sample covariance (``N / (N - 1)``), ``reflect`` border handling, the
  3-pixel border cropped before averaging, and the mean over the three channels. We keep the
  scikit-image default rather than the Gaussian 11x11 window of Wang et al. because it is what a
  plain ``structural_similarity`` call in published evaluation scripts computes; our batched
  implementation is the same arithmetic vectorised over images (float64), and the tests compare
  it with a direct scikit-image call.
* **LPIPS** (Zhang et al. 2018, ``lpips`` package v0.1, linear calibration layers from the wheel)
  with inputs mapped from [0, 1] to [-1, 1]. Default backbone **VGG-16** (``lpips_net="vgg"``):
  InstantMesh trains its reconstruction model with a VGG LPIPS loss (upstream ``src/model.py``
  and ``src/model_mesh.py`` use ``LearnedPerceptualImagePatchSimilarity(net_type='vgg')``) and
  the LRM line of work it builds on reports VGG LPIPS; InstantMesh publishes no evaluation code,
  so the backbone of its table is not stated in code. ``"alex"`` is available for comparisons
  with papers that use AlexNet LPIPS; the two are not comparable numbers, so every report must
  record which backbone produced its column.

Backbone weights are *never* downloaded here. The ImageNet trunk weights are read from the
torch hub cache (``$TORCH_HOME/hub/checkpoints/<torchvision file name>``); when the file is
absent (or its hash prefix does not match) :class:`LpipsUnavailable` is raised naming the path,
instead of silently producing a number. ``lpips_net="random"`` (or ``"<net>-random"``) builds a
randomly initialised trunk: only for wiring tests; its values mean nothing.

RGBA inputs are composited on ``background`` (straight, non-premultiplied alpha):
``rgb * a + background * (1 - a)``. A ``mask`` (HxW or NxHxW, bool) is applied to *both*
prediction and ground truth after alpha compositing: pixels where the mask is False are
replaced by the background colour in both images, so they agree there exactly. The metrics
are still averaged over the whole image (the mask does not restrict the average; masked-out
pixels count as perfectly matching pixels), which is the "composite on white" protocol.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shlex
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy.ndimage import uniform_filter

__all__ = [
    "LPIPS_NETS",
    "LpipsUnavailable",
    "clear_lpips_cache",
    "composite",
    "default_lpips_batch",
    "exact_fp32_convolutions",
    "image_metrics",
    "load_lpips",
    "lpips_backbone_path",
    "lpips_distance",
    "lpips_install_hint",
    "mean_metrics",
    "psnr",
    "ssim",
    "ssim_device",
]

FloatArray = npt.NDArray[np.float64]

#: LPIPS backbones with real (ImageNet) trunk weights.
LPIPS_NETS: tuple[str, ...] = ("vgg", "alex", "squeeze")
DEFAULT_LPIPS_NET = "vgg"
#: ``lpips_net="random"`` means a random AlexNet trunk (the fastest one): wiring tests only.
RANDOM_LPIPS_NET = "alex-random"

# SSIM constants: scikit-image defaults (gaussian_weights=False).
_SSIM_WIN = 7
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03
_SSIM_DATA_RANGE = 1.0
# Images per chunk in the torch SSIM path: bounds float64 temporaries (~10 x chunk*H*W*3).
_SSIM_CHUNK = 8


class LpipsUnavailable(RuntimeError):
    """The LPIPS backbone weights are not on this machine (we never download them)."""


# --------------------------------------------------------------------------- input handling


def _shape(x: Any) -> tuple[int, ...]:
    """Shape of an array-like or a torch tensor (without copying a GPU tensor)."""
    return tuple(int(d) for d in x.shape) if hasattr(x, "shape") else np.shape(x)


def _as_float_images(name: str, x: Any) -> FloatArray:
    """Return ``x`` as float64 NxHxWxC (C in {3, 4}); validates dtype, shape, range and NaN."""
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(
            f"{name}: expected a float image in [0, 1], got dtype {arr.dtype} "
            "(convert 8-bit images with x / 255 first)"
        )
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] not in (3, 4):
        raise ValueError(
            f"{name}: expected HxWx3, HxWx4, NxHxWx3 or NxHxWx4, got shape {_shape(x)}"
        )
    arr = arr.astype(np.float64, copy=False)
    if np.isnan(arr).any():
        raise ValueError(f"{name}: contains NaN")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name}: values must lie in [0, 1], got min {lo:.6g}, max {hi:.6g}")
    return arr


def _background_rgb(background: float | Sequence[float]) -> FloatArray:
    bg = np.asarray(background, dtype=np.float64).reshape(-1)
    if bg.size == 1:
        bg = np.repeat(bg, 3)
    if bg.size != 3 or not np.all(np.isfinite(bg)) or bg.min() < 0.0 or bg.max() > 1.0:
        raise ValueError(f"background: expected a value or RGB triple in [0, 1], got {background}")
    return bg


def composite(
    image: npt.ArrayLike,
    background: float | Sequence[float] = 1.0,
    mask: npt.ArrayLike | None = None,
) -> FloatArray:
    """Composite an RGB(A) image (HxWxC or NxHxWxC, float in [0, 1]) onto ``background``.

    RGBA uses straight alpha: ``out = rgb * a + background * (1 - a)``; RGB passes through.
    If ``mask`` (bool, HxW or NxHxW) is given, pixels where it is False are set to the
    background colour afterwards. Returns float64 with the input's leading shape and 3 channels.
    """
    arr = _as_float_images("image", image)
    out = _composite(arr, _background_rgb(background), _as_mask(mask, arr.shape[:3]))
    return out[0] if len(_shape(image)) == 3 else out


def _as_mask(mask: npt.ArrayLike | None, nhw: tuple[int, ...]) -> npt.NDArray[np.bool_] | None:
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.dtype != np.bool_:
        raise ValueError(f"mask: expected a bool array, got dtype {m.dtype}")
    if m.ndim == 2:
        m = np.broadcast_to(m[None], (nhw[0], *m.shape))
    if m.shape != tuple(nhw):
        raise ValueError(
            f"mask: shape {np.shape(mask)} does not match the images' N x H x W {tuple(nhw)}"
        )
    return m


def _composite(arr: FloatArray, bg: FloatArray, mask: npt.NDArray[np.bool_] | None) -> FloatArray:
    if arr.shape[-1] == 4:
        # rgb * a + bg * (1 - a) == (rgb - bg) * a + bg, computed in place in one buffer.
        rgb = np.subtract(arr[..., :3], bg, dtype=np.float64)
        rgb *= arr[..., 3:4]
        rgb += bg
    else:
        rgb = np.array(arr, dtype=np.float64, copy=True)
    if mask is not None:
        rgb[~mask] = bg
    return rgb


# --------------------------------------------------------------------------- PSNR / SSIM


def psnr(pred: FloatArray, gt: FloatArray) -> FloatArray:
    """PSNR per image for NxHxWx3 float arrays in [0, 1]: ``-10 log10(MSE)``, inf when equal."""
    mse = np.mean((pred - gt) ** 2, axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        return np.asarray(-10.0 * np.log10(mse), dtype=np.float64)


def ssim(pred: FloatArray, gt: FloatArray, device: Any = None) -> FloatArray:
    """SSIM per image for NxHxWx3 float arrays in [0, 1], identical to scikit-image's
    ``structural_similarity(channel_axis=-1, data_range=1.0)`` (uniform 7x7 window, sample
    covariance, reflect borders, 3-pixel crop, mean over channels), vectorised over images.

    ``device=None`` computes with NumPy/SciPy (fastest on CPU); a torch device (e.g. "cuda")
    runs the same float64 arithmetic in torch on that device (box filter = ``avg_pool2d`` on
    symmetric-padded images, which is SciPy's ``reflect`` mode).
    """
    n, h, w, _ = pred.shape
    if min(h, w) < _SSIM_WIN:
        raise ValueError(f"SSIM needs images of at least {_SSIM_WIN}x{_SSIM_WIN}, got {h}x{w}")
    if device is not None:
        return _ssim_torch(pred, gt, device)
    np_win = _SSIM_WIN**2
    cov_norm = np_win / (np_win - 1.0)
    c1 = (_SSIM_K1 * _SSIM_DATA_RANGE) ** 2
    c2 = (_SSIM_K2 * _SSIM_DATA_RANGE) ** 2
    pad = (_SSIM_WIN - 1) // 2
    out = np.empty(n, dtype=np.float64)

    def filt(a: FloatArray) -> FloatArray:
        # Window 7 over H and W only, per channel (size 1 on the channel axis).
        return np.asarray(uniform_filter(a, size=(1, _SSIM_WIN, _SSIM_WIN)), dtype=np.float64)

    # One image at a time, channel-first: its ~10 float64 temporaries stay cache-sized, which
    # is faster than one large vectorised pass (the work is memory-bound).
    crop = (slice(None), slice(pad, h - pad), slice(pad, w - pad))
    for i in range(n):
        x = np.ascontiguousarray(pred[i].transpose(2, 0, 1))
        y = np.ascontiguousarray(gt[i].transpose(2, 0, 1))
        # Filter the full images (borders matter), then do the pointwise algebra on the kept
        # interior only, in place; the operations and their order are scikit-image's.
        ux, uy = filt(x)[crop], filt(y)[crop]
        vx, vy, vxy = filt(x * x)[crop], filt(y * y)[crop], filt(x * y)[crop]
        uxuy = ux * uy
        ux *= ux
        uy *= uy
        vx -= ux
        vx *= cov_norm
        vy -= uy
        vy *= cov_norm
        vxy -= uxuy
        vxy *= cov_norm
        uxuy *= 2.0  # A1 = 2 ux uy + C1
        uxuy += c1
        vxy *= 2.0  # A2 = 2 vxy + C2
        vxy += c2
        ux += uy  # B1 = ux^2 + uy^2 + C1
        ux += c1
        vx += vy  # B2 = vx + vy + C2
        vx += c2
        uxuy *= vxy
        ux *= vx
        uxuy /= ux  # S = A1 A2 / (B1 B2)
        # scikit-image averages each channel, then the channels: same as this per-image mean
        # up to float rounding (every channel has the same number of pixels).
        out[i] = uxuy.mean(axis=(1, 2)).mean()
    return out


def _ssim_torch(pred: FloatArray, gt: FloatArray, device: Any) -> FloatArray:
    """The arithmetic of :func:`ssim` in torch float64 on ``device`` (batched per chunk)."""
    import torch
    import torch.nn.functional as F

    dev = torch.device(device)
    _, h, w, _ = pred.shape
    pad = (_SSIM_WIN - 1) // 2
    rows = torch.from_numpy(np.pad(np.arange(h), pad, mode="symmetric")).to(dev)
    cols = torch.from_numpy(np.pad(np.arange(w), pad, mode="symmetric")).to(dev)
    np_win = _SSIM_WIN**2
    cov_norm = np_win / (np_win - 1.0)
    c1 = (_SSIM_K1 * _SSIM_DATA_RANGE) ** 2
    c2 = (_SSIM_K2 * _SSIM_DATA_RANGE) ** 2

    def filt(a: Any) -> Any:
        return F.avg_pool2d(a.index_select(2, rows).index_select(3, cols), _SSIM_WIN, stride=1)

    out = []
    with torch.inference_mode():
        for start in range(0, len(pred), _SSIM_CHUNK):
            x = torch.from_numpy(pred[start : start + _SSIM_CHUNK]).to(dev).permute(0, 3, 1, 2)
            y = torch.from_numpy(gt[start : start + _SSIM_CHUNK]).to(dev).permute(0, 3, 1, 2)
            ux, uy = filt(x), filt(y)
            vx = cov_norm * (filt(x * x) - ux * ux)
            vy = cov_norm * (filt(y * y) - uy * uy)
            vxy = cov_norm * (filt(x * y) - ux * uy)
            s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
            out.append(s[:, :, pad : h - pad, pad : w - pad].mean(dim=(2, 3)).mean(dim=1).cpu())
    return np.asarray(torch.cat(out).numpy(), dtype=np.float64)


# --------------------------------------------------------------------------- LPIPS


def parse_lpips_net(lpips_net: str) -> tuple[str, bool]:
    """``"vgg"`` -> ("vgg", False); ``"vgg-random"`` -> ("vgg", True); ``"random"`` -> alex."""
    name = RANDOM_LPIPS_NET if lpips_net == "random" else lpips_net
    random_trunk = name.endswith("-random")
    base = name.removesuffix("-random")
    if base not in LPIPS_NETS:
        raise ValueError(
            f"lpips_net: unknown backbone {lpips_net!r}; expected one of {LPIPS_NETS}, "
            "'<net>-random' or 'random' (random trunk, wiring tests only)"
        )
    return base, random_trunk


def _torchvision_weights_url(net: str) -> str:
    from torchvision.models import AlexNet_Weights, SqueezeNet1_1_Weights, VGG16_Weights

    # The weights the lpips package asks torchvision for (pretrained=True -> IMAGENET1K_V1).
    urls = {
        "alex": AlexNet_Weights.IMAGENET1K_V1.url,
        "vgg": VGG16_Weights.IMAGENET1K_V1.url,
        "squeeze": SqueezeNet1_1_Weights.IMAGENET1K_V1.url,
    }
    return str(urls[net])


def lpips_backbone_path(lpips_net: str = DEFAULT_LPIPS_NET) -> Path:
    """Where torchvision keeps the ImageNet trunk of ``lpips_net``:
    ``torch.hub.get_dir()/checkpoints/<file>`` (``$TORCH_HOME/hub/checkpoints`` by default)."""
    import torch

    base, _ = parse_lpips_net(lpips_net)
    filename = os.path.basename(_torchvision_weights_url(base))
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def lpips_install_hint(lpips_net: str = DEFAULT_LPIPS_NET) -> str:
    """What LPIPS with ``lpips_net`` needs, where it goes, and the one command that installs it
    from a local copy (nothing is downloaded), e.g. ``LPIPS (vgg) needs torchvision's
    vgg16-397923af.pth in ~/.cache/torch/hub/checkpoints ...: mkdir -p DIR && cp
    /path/to/vgg16-397923af.pth DIR/``. The directory is :func:`lpips_backbone_path`'s
    (``$TORCH_HOME`` moves it). Used by the LPIPS error, the report notes and the summary."""
    base, _ = parse_lpips_net(lpips_net)
    path = lpips_backbone_path(base)
    directory = shlex.quote(str(path.parent))
    return (
        f"LPIPS ({base}) needs torchvision's {path.name} in {path.parent} (never downloaded "
        f"here; $TORCH_HOME moves that directory). Install it from a local copy: "
        f"mkdir -p {directory} && cp /path/to/{path.name} {directory}/"
    )


def _check_hash_prefix(path: Path) -> None:
    """torchvision file names end in the first hex digits of the file's SHA-256; check them."""
    match = re.search(r"-([a-f0-9]{6,})\.", path.name)
    if match is None:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(match.group(1)):
        raise LpipsUnavailable(
            f"LPIPS backbone weights at {path} are corrupt (SHA-256 does not start with "
            f"{match.group(1)}); replace the file"
        )


def _resolve_device(device: Any) -> Any:
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_lpips(lpips_net: str = DEFAULT_LPIPS_NET, device: Any = None) -> Any:
    """Return an ``lpips.LPIPS`` model in eval mode on ``device`` (cached per (net, device)).

    Real backbones are loaded from :func:`lpips_backbone_path` only: we build the model with a
    randomly initialised trunk (no torchvision download is triggered) and then load the trunk's
    ImageNet weights from that file ourselves, strictly. A missing or corrupt file raises
    :class:`LpipsUnavailable`. The model is cached by (net, device, backbone path), so a
    changed ``$TORCH_HOME`` is honoured; :func:`clear_lpips_cache` drops the cache.
    """
    base, random_trunk = parse_lpips_net(lpips_net)
    dev = _resolve_device(device)
    path = None if random_trunk else str(lpips_backbone_path(base))
    return _load_lpips_cached(base, random_trunk, str(dev), path)


@functools.lru_cache(maxsize=8)
def _load_lpips_cached(base: str, random_trunk: bool, device: str, path: str | None) -> Any:
    import torch

    if path is not None and not os.path.isfile(path):
        raise LpipsUnavailable(
            f"LPIPS backbone weights for net={base!r} not found: expected {path} "
            f"(torchvision's file from {_torchvision_weights_url(base)}). "
            f"{lpips_install_hint(base)} Until then LPIPS is reported unavailable."
        )
    import lpips as lpips_pkg

    with warnings.catch_warnings():
        # torchvision warns about lpips' legacy `pretrained=` argument; nothing to act on.
        warnings.simplefilter("ignore", UserWarning)
        model = lpips_pkg.LPIPS(net=base, pretrained=True, pnet_rand=True, verbose=False)
    if path is not None:
        _check_hash_prefix(Path(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
        # lpips keeps torchvision's `features.<i>` modules under `slice<k>.<i>`.
        trunk = {key: state["features." + key.split(".", 1)[1]] for key in model.net.state_dict()}
        model.net.load_state_dict(trunk, strict=True)
    model = model.eval().to(torch.device(device))
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def clear_lpips_cache() -> None:
    """Forget cached LPIPS models (e.g. after changing ``$TORCH_HOME``)."""
    _load_lpips_cached.cache_clear()


@contextlib.contextmanager
def exact_fp32_convolutions(device: Any) -> Iterator[None]:
    """On a CUDA device, run cuDNN convolutions in IEEE FP32 inside the block (restored after).

    torch's cuDNN default for float32 convolutions is TF32 (10-bit mantissa inputs) on Ampere
    and newer GPUs: LPIPS computed that way is a different number from the CPU's. Metrics must
    not depend on the card, so LPIPS always runs in FP32. Uses the ``fp32_precision`` API only
    (mixing it with the legacy ``allow_tf32`` flags is an error in torch). CPU: no-op.
    """
    import torch

    if torch.device(device).type != "cuda":
        yield
        return
    conv = torch.backends.cudnn.conv  # type: ignore[attr-defined]  # (not in the stubs)
    previous = conv.fp32_precision
    conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision = previous


def lpips_distance(
    pred: FloatArray,
    gt: FloatArray,
    lpips_net: str = DEFAULT_LPIPS_NET,
    device: Any = None,
    batch_size: int = 16,
) -> FloatArray:
    """LPIPS per image for NxHxWx3 float arrays in [0, 1], batched on ``device``."""
    import torch

    model = load_lpips(lpips_net, device)
    dev = next(model.parameters()).device
    out = np.empty(len(pred), dtype=np.float64)
    with torch.inference_mode(), exact_fp32_convolutions(dev):
        for start in range(0, len(pred), batch_size):
            sl = slice(start, start + batch_size)
            x = torch.from_numpy(pred[sl]).to(dev, torch.float32).permute(0, 3, 1, 2)
            y = torch.from_numpy(gt[sl]).to(dev, torch.float32).permute(0, 3, 1, 2)
            d = model(x * 2.0 - 1.0, y * 2.0 - 1.0)
            out[sl] = d.reshape(-1).double().cpu().numpy()
    return out


# --------------------------------------------------------------------------- public entry point


def image_metrics(
    pred: npt.ArrayLike,
    gt: npt.ArrayLike,
    mask: npt.ArrayLike | None = None,
    *,
    background: float | Sequence[float] = 1.0,
    lpips_net: str | Literal[False] | None = DEFAULT_LPIPS_NET,
    device: Any = None,
    lpips_batch_size: int | None = None,
) -> dict[str, Any]:
    """PSNR, SSIM and LPIPS between ``pred`` and ``gt`` (definitions in the module docstring).

    Args:
        pred, gt: float images in [0, 1], HxWx3 / HxWx4 or NxHxWx3 / NxHxWx4 (numpy or torch).
            RGBA is composited on ``background``; pred and gt may differ in channel count
            (3 vs 4) but must have the same N, H, W.
        mask: optional bool HxW (shared by every image) or NxHxW; False pixels become the
            background colour in *both* images (averages still run over the whole image).
        background: grey level or RGB triple in [0, 1]; default 1.0 (white).
        lpips_net: ``"vgg"`` (default), ``"alex"``, ``"squeeze"``; ``"random"`` /
            ``"<net>-random"`` for wiring tests only; ``None`` or ``False`` skips LPIPS, and the
            result then has ``lpips`` = NaN (the key is always present).
        device: torch device for LPIPS (and for SSIM when it is a CUDA device); default CUDA
            when available, else CPU.
        lpips_batch_size: images per LPIPS forward pass; default 16 on CUDA and 4 on CPU
            (measured on 2 CPU cores: larger CPU batches are memory-bound and no faster).

    Returns:
        ``{"psnr", "ssim", "lpips"}``: Python floats for a single HxWxC pair, float64 arrays
        of shape (N,) for a batch (use :func:`mean_metrics` for the means).

    Raises:
        ValueError: shapes differ (both shapes named), values outside [0, 1], NaN, non-float
            dtype, or a bad mask / background.
        LpipsUnavailable: a real backbone was requested and its weights are not on disk.
    """
    if lpips_batch_size is not None and lpips_batch_size < 1:
        raise ValueError(f"lpips_batch_size must be >= 1, got {lpips_batch_size}")
    single = len(_shape(pred)) == 3
    p = _as_float_images("pred", pred)
    g = _as_float_images("gt", gt)
    if p.shape[:3] != g.shape[:3] or len(_shape(pred)) != len(_shape(gt)):
        raise ValueError(
            f"pred and gt differ in size: pred shape {_shape(pred)}, gt shape {_shape(gt)}"
        )
    bg = _background_rgb(background)
    m = _as_mask(mask, p.shape[:3])
    p = _composite(p, bg, m)
    g = _composite(g, bg, m)

    result: dict[str, Any] = {
        "psnr": psnr(p, g),
        "ssim": ssim(p, g, ssim_device(device, lpips_net)),
    }
    if lpips_net is None or lpips_net is False:
        result["lpips"] = np.full(len(p), np.nan)
    else:
        batch = lpips_batch_size or default_lpips_batch(device)
        result["lpips"] = lpips_distance(p, g, str(lpips_net), device, batch)
    if single:
        return {k: float(v[0]) for k, v in result.items()}
    return result


def ssim_device(device: Any, lpips_net: str | Literal[False] | None) -> Any:
    """The device :func:`ssim` runs on for :func:`image_metrics`' ``device`` and ``lpips_net``:
    the resolved device when it is a CUDA one, else None (NumPy/SciPy: faster on CPU). Torch is
    not imported when neither LPIPS nor a device was asked for."""
    if device is None and (lpips_net is None or lpips_net is False):
        return None
    resolved = _resolve_device(device)
    return resolved if resolved.type == "cuda" else None


def default_lpips_batch(device: Any) -> int:
    """Images per LPIPS forward pass by default: 16 on CUDA and 4 on CPU (measured on 2 CPU
    cores: larger CPU batches are memory-bound and no faster)."""
    return 16 if _resolve_device(device).type == "cuda" else 4


def mean_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Means over a batch result of :func:`image_metrics` (plain mean: an ``inf`` PSNR or a
    NaN LPIPS propagates, so a skipped or degenerate value is never hidden)."""
    return {k: float(np.mean(np.asarray(v, dtype=np.float64))) for k, v in metrics.items()}
