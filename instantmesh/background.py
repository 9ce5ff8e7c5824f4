"""Condition-image preprocessing before Zero123++: background removal and re-centring.

The decision made for every input image (:func:`prepare_condition_image`), as upstream
InstantMesh ``run.py`` does it:

- **RGBA with transparency** (some alpha < 255; also palette / grey images with a transparent
  colour): the alpha is the mask, kept as it is; no segmentation model runs.
- **RGB, or RGBA that is fully opaque**: the background is removed with ``rembg`` (U^2-Net,
  ``u2net.onnx``: the model ``rembg.new_session()`` uses by default), giving an RGBA image.
- Then the foreground (alpha > 0) is cropped, padded to a centred square and padded again so that
  it spans 0.85 of the frame (:func:`resize_foreground`), and the result is composited on white.
- ``remove_background=False`` (``imesh generate --no-rembg``, upstream ``--no_rembg``) skips both
  steps, as upstream does: the image is used as it is (RGBA composited on white, RGB unchanged).

No download ever happens: the segmentation model is read from a local ``u2net.onnx``
(:func:`resolve_rembg_model`: an explicit path, else rembg's own cache ``$U2NET_HOME/u2net.onnx``,
default ``~/.u2net/u2net.onnx``) and loaded through rembg's ``u2net_custom`` session, which runs the
same network with the same pre/post-processing as rembg's ``u2net`` session but takes the file
path instead of fetching it. ``rembg`` (with ``onnxruntime``) is the optional extra
``instantmesh-pipeline[rembg]``.

This module needs only PIL and numpy (plus rembg when removal runs), so it can be used without
loading diffusers.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

FOREGROUND_RATIO = 0.85
"""Fraction of the frame the foreground's long side spans after :func:`resize_foreground`."""

REMBG_MODEL_FILE = "u2net.onnx"
REMBG_MODEL_URL = "https://github.com/danielgatis/rembg/releases/download/v0.0.0/u2net.onnx"
REMBG_MODEL_MD5 = "60024c5c889badc19c04ad937298a77b"
REMBG_INSTALL = "pip install 'instantmesh-pipeline[rembg]'"


class MissingDependencyError(ImportError):
    """An optional package a requested feature needs is not installed."""


class RembgModelMissing(FileNotFoundError):
    """The local U^2-Net model file that background removal needs is absent."""


# ----------------------------------------------------------------------------------------------
# Small PIL helpers


def has_transparency(image: Image.Image) -> bool:
    """True for an RGBA image with at least one alpha value below 255."""
    if image.mode != "RGBA":
        return False
    lo, _ = image.getchannel("A").getextrema()
    return int(lo) < 255  # type: ignore[arg-type]


def normalize_mode(image: Image.Image) -> Image.Image:
    """Palette / grey / LA images -> RGBA when they carry transparency, else RGB."""
    if image.mode in ("RGB", "RGBA"):
        return image
    has_alpha = image.mode in ("LA", "PA", "La") or "transparency" in image.info
    return image.convert("RGBA" if has_alpha else "RGB")


def composite_on_white(image: Image.Image) -> Image.Image:
    """RGB copy of ``image``; RGBA is pasted onto white through its alpha (upstream's rounding)."""
    if image.mode == "RGB":
        return image.copy()
    if image.mode != "RGBA":
        raise ValueError(f"expected an RGB or RGBA image, got mode {image.mode!r}")
    out = Image.new("RGB", image.size, (255, 255, 255))
    out.paste(image, mask=image.getchannel("A"))
    return out


def foreground_fraction(image: Image.Image) -> float | None:
    """Long side of the alpha > 0 box over the frame's long side (None: no alpha / no
    foreground)."""
    if image.mode != "RGBA":
        return None
    ys, xs = np.nonzero(np.asarray(image.getchannel("A")) > 0)
    if ys.size == 0:
        return None
    box = max(int(ys.max()) - int(ys.min()) + 1, int(xs.max()) - int(xs.min()) + 1)
    return box / max(image.size)


def resize_foreground(image: Image.Image, ratio: float = FOREGROUND_RATIO) -> Image.Image:
    """Crop an RGBA image to its foreground, pad it to a centred square, then pad that square so
    the foreground spans ``ratio`` of the frame (transparent padding).

    Matches upstream's ``resize_foreground`` (InstantMesh ``src/utils/infer_util.py``) pixel for
    pixel, including its crop ``[min, max)`` of the alpha > 0 box (the last foreground row and
    column are dropped; kept when the box is one pixel thick). The output side is
    ``int(side / ratio)`` of the padded square; no resampling happens here.
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"foreground ratio must be in (0, 1], got {ratio}")
    if image.mode != "RGBA":
        raise ValueError(f"resize_foreground needs an RGBA image, got mode {image.mode!r}")
    arr = np.asarray(image)
    ys, xs = np.nonzero(arr[..., 3] > 0)
    if ys.size == 0:
        raise ValueError("the image has no foreground: its alpha channel is zero everywhere")
    y1, y2, x1, x2 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
    y2, x2 = max(y2, y1 + 1), max(x2, x1 + 1)
    fg = arr[y1:y2, x1:x2]
    side = max(fg.shape[0], fg.shape[1])
    top, left = (side - fg.shape[0]) // 2, (side - fg.shape[1]) // 2
    square = np.zeros((side, side, 4), dtype=arr.dtype)
    square[top : top + fg.shape[0], left : left + fg.shape[1]] = fg
    new_side = int(side / ratio)
    offset = (new_side - side) // 2
    out = np.zeros((new_side, new_side, 4), dtype=arr.dtype)
    out[offset : offset + side, offset : offset + side] = square
    return Image.fromarray(out, "RGBA")


# ----------------------------------------------------------------------------------------------
# rembg: package, model file, session (never downloads)


def check_rembg_installed() -> None:
    """Raise :class:`MissingDependencyError` (naming the extra) unless rembg and onnxruntime
    can be imported."""
    missing = [m for m in ("rembg", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(
            f"background removal needs the optional package(s) {', '.join(missing)}, which "
            f"are not installed: `{REMBG_INSTALL}` (or --no-rembg / remove_background=False to "
            "use the image as it is; an RGBA image with a transparent background needs no "
            "removal)"
        )


def default_rembg_model_path() -> Path:
    """Where rembg keeps ``u2net.onnx``: ``$U2NET_HOME``, else ``$XDG_DATA_HOME/.u2net``,
    else ``~/.u2net`` (rembg's own rule)."""
    home = os.getenv("U2NET_HOME", os.path.join(os.getenv("XDG_DATA_HOME", "~"), ".u2net"))
    return Path(os.path.expanduser(home)) / REMBG_MODEL_FILE


def resolve_rembg_model(path: str | os.PathLike[str] | None = None) -> Path:
    """The local U^2-Net file to use: ``path`` when given, else :func:`default_rembg_model_path`.

    Raises :class:`RembgModelMissing` naming the file, where it goes and ``--no-rembg``.
    """
    explicit = path is not None
    target = (
        Path(os.path.expanduser(os.fspath(path)))
        if path is not None
        else default_rembg_model_path()
    )
    if target.is_file():
        return target
    where = (
        f"--rembg-model {target}"
        if explicit
        else f"{target} (rembg's model cache: $U2NET_HOME, default ~/.u2net)"
    )
    raise RembgModelMissing(
        f"background removal needs rembg's U^2-Net segmentation model {REMBG_MODEL_FILE}, "
        f"which is not at {where}; it is never downloaded here: put the file there (from "
        f"{REMBG_MODEL_URL}, md5 {REMBG_MODEL_MD5}) or pass its path with --rembg-model PATH, "
        "or skip background removal with --no-rembg (the image is then used as it is)"
    )


def load_rembg_session(model: str | os.PathLike[str] | None = None) -> Any:
    """A rembg session on the local U^2-Net file (:func:`resolve_rembg_model`); offline.

    rembg's ``u2net_custom`` session reads ``model_path`` directly (no ``pooch`` download, no
    checksum fetch); its prediction is the ``u2net`` session's (input 320 x 320 RGB normalized
    with ImageNet mean/std, first output's channel 0 min-max normalized into the mask).
    """
    check_rembg_installed()
    path = resolve_rembg_model(model)
    from rembg import new_session

    return new_session("u2net_custom", model_path=str(path))


def remove_image_background(
    image: Image.Image,
    session: Any = None,
    *,
    force: bool = False,
    model: str | os.PathLike[str] | None = None,
    **rembg_kwargs: Any,
) -> Image.Image:
    """Background removal with ``rembg`` (RGBA out), like upstream's ``remove_background``.

    An RGBA image that already has transparent pixels is returned unchanged unless ``force``.
    ``session``: a rembg session (e.g. from :func:`load_rembg_session`, reused across images);
    without one, a session is built from the local ``model`` file (never downloaded).
    """
    if has_transparency(image) and not force:
        return image
    if session is None:
        session = load_rembg_session(model)
    import rembg

    out = rembg.remove(image, session=session, **rembg_kwargs)
    if not isinstance(out, Image.Image):
        raise TypeError(f"rembg.remove returned {type(out).__name__}, expected a PIL image")
    return out.convert("RGBA")


# ----------------------------------------------------------------------------------------------
# The decision


@dataclass(frozen=True)
class ConditionImage:
    """What :func:`prepare_condition_image` did to one input."""

    image: Image.Image
    """RGB on white, native resolution (the condition Zero123++ is given)."""
    input_mode: str
    input_size: tuple[int, int]
    alpha: str
    """``"input"`` (the image's own transparency), ``"rembg"`` or ``"none"``."""
    rembg_used: bool
    reason: str
    """Why background removal ran or not, in words."""
    recentred: bool
    """Whether :func:`resize_foreground` ran."""
    foreground_ratio: float | None
    """Target ratio given to :func:`resize_foreground` (None when it did not run)."""
    foreground_before: float | None
    """Foreground box long side / frame long side before re-centring (None without alpha)."""
    foreground_after: float | None
    """The same in the condition image (None without alpha)."""

    def record(self) -> dict[str, Any]:
        """JSON-able summary (everything except the image)."""
        return {
            "input_mode": self.input_mode,
            "input_size": list(self.input_size),
            "alpha": self.alpha,
            "rembg": self.rembg_used,
            "reason": self.reason,
            "recentred": self.recentred,
            "foreground_ratio": self.foreground_ratio,
            "foreground_before": self.foreground_before,
            "foreground_after": self.foreground_after,
            "condition_size": list(self.image.size),
        }


def needs_background_removal(image: Image.Image, remove_background: bool = True) -> bool:
    """Whether :func:`prepare_condition_image` would run rembg on ``image``."""
    return remove_background and not has_transparency(normalize_mode(image))


def prepare_condition_image(
    image: Image.Image,
    *,
    remove_background: bool = True,
    session: Any = None,
    rembg_model: str | os.PathLike[str] | None = None,
    foreground_ratio: float = FOREGROUND_RATIO,
) -> ConditionImage:
    """Upstream ``run.py``'s input handling: RGBA with transparency keeps its alpha; RGB or
    opaque RGBA goes through rembg (unless ``remove_background=False``); then
    :func:`resize_foreground` (``foreground_ratio``) and compositing on white.

    ``remove_background=False`` (``--no-rembg``) uses the image as it is: no segmentation and no
    re-centring (upstream skips both), RGBA composited on white. ``session``: a rembg session to
    reuse; otherwise one is built from ``rembg_model`` (or rembg's cache) only when removal runs.
    Raises :class:`MissingDependencyError` / :class:`RembgModelMissing` when removal is needed
    and unavailable, ``ValueError`` when no foreground is left.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL.Image.Image, got {type(image).__name__}")
    input_mode, input_size = image.mode, image.size
    img = normalize_mode(image)
    transparent = has_transparency(img)
    if not remove_background:
        reason = "--no-rembg: image used as it is" + (
            " (its alpha composited on white)" if transparent else ""
        )
        frac = foreground_fraction(img) if transparent else None
        return ConditionImage(
            image=composite_on_white(img) if img.mode == "RGBA" else img.convert("RGB"),
            input_mode=input_mode,
            input_size=input_size,
            alpha="input" if transparent else "none",
            rembg_used=False,
            reason=reason,
            recentred=False,
            foreground_ratio=None,
            foreground_before=frac,
            foreground_after=frac,
        )
    if transparent:
        alpha, rembg_used = "input", False
        reason = "input has transparency: its alpha is the mask (rembg not run)"
    else:
        img = remove_image_background(img.convert("RGB"), session, model=rembg_model)
        alpha, rembg_used = "rembg", True
        reason = f"input has no transparency ({input_mode}): background removed with rembg"
        if foreground_fraction(img) is None:
            raise ValueError("background removal left no foreground (the mask is empty)")
    before = foreground_fraction(img)
    img = resize_foreground(img, foreground_ratio)
    return ConditionImage(
        image=composite_on_white(img),
        input_mode=input_mode,
        input_size=input_size,
        alpha=alpha,
        rembg_used=rembg_used,
        reason=reason,
        recentred=True,
        foreground_ratio=foreground_ratio,
        foreground_before=before,
        foreground_after=foreground_fraction(img),
    )


__all__ = [
    "FOREGROUND_RATIO",
    "REMBG_INSTALL",
    "REMBG_MODEL_FILE",
    "ConditionImage",
    "MissingDependencyError",
    "RembgModelMissing",
    "check_rembg_installed",
    "composite_on_white",
    "default_rembg_model_path",
    "foreground_fraction",
    "has_transparency",
    "load_rembg_session",
    "needs_background_removal",
    "normalize_mode",
    "prepare_condition_image",
    "remove_image_background",
    "resize_foreground",
]
