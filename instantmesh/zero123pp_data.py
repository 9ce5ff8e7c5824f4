"""Zero123++ fine-tuning data: the ``rendering_zero123plus/<uid>/`` layout as training pairs.

Each object folder holds ``000.png`` (the condition view) and ``001.png ... 006.png`` (the six
target views, elevations 20 / -10 alternating, azimuths condition + 30, 90, ..., 330), RGBA with
straight colour on a white background (see :mod:`rendering.output_layouts`).

:class:`Zero123ppDataset` returns, per object, the condition view and the six targets tiled into
the 3 x 2 grid the diffusion model denoises (960 px high, 640 px wide for 320 px views), all
composited on white in [0, 1]. Compositing follows the upstream InstantMesh fine-tuning loader
(``src/data/objaverse_zero123plus.py``): ``rgb * alpha + white * (1 - alpha)`` in float, and the
grid is laid out row-major (view ``k`` at row ``k // 2``, column ``k % 2``), as upstream's
``rearrange('b (x y) c h w -> b c (x h) (y w)', x=3, y=2)``. Unlike upstream, a missing or
malformed file raises (naming the object, its folder or shard, and the file) instead of
silently replacing the object by another; ``on_error="skip"`` leaves it out and reports it.

The same items come from the object folders or from the tar shards ``imesh shards`` writes
(``rendering.shard_format``; read by :mod:`instantmesh.shard_reader`, which also splits the
objects over DataLoader workers and distributed ranks).

Light on purpose: numpy, PIL and torch only (no diffusers), so data loading does not pay for the
diffusion stack's import.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from instantmesh.shard_reader import OnError, Sample, SampleDataset, SplitMode, decode_png

GRID_ROWS = 3
GRID_COLS = 2
NUM_VIEWS = GRID_ROWS * GRID_COLS
VIEW_SIZE = 320
GRID_WIDTH = GRID_COLS * VIEW_SIZE  # 640
GRID_HEIGHT = GRID_ROWS * VIEW_SIZE  # 960
IMAGE_DIR = "rendering_zero123plus"
CONDITION_FILE = "000.png"
TARGET_FILES: tuple[str, ...] = tuple(f"{i:03d}.png" for i in range(1, NUM_VIEWS + 1))


def views_to_grid_tensor(views: torch.Tensor) -> torch.Tensor:
    """``(..., 6, C, H, W)`` -> ``(..., C, 3H, 2W)``: the six views tiled row-major."""
    if views.ndim < 4 or views.shape[-4] != NUM_VIEWS:
        raise ValueError(f"views must have shape (..., 6, C, H, W), got {tuple(views.shape)}")
    *lead, _, c, h, w = views.shape
    grid = views.reshape(*lead, GRID_ROWS, GRID_COLS, c, h, w)
    n = len(lead)
    # (..., rows, cols, C, H, W) -> (..., C, rows, H, cols, W)
    grid = grid.permute(*range(n), n + 2, n, n + 3, n + 1, n + 4)
    return grid.reshape(*lead, c, GRID_ROWS * h, GRID_COLS * w)


def grid_to_views_tensor(grid: torch.Tensor) -> torch.Tensor:
    """``(..., C, 3H, 2W)`` -> ``(..., 6, C, H, W)``: the inverse of :func:`views_to_grid_tensor`."""
    if grid.ndim < 3:
        raise ValueError(f"grid must have shape (..., C, 3H, 2W), got {tuple(grid.shape)}")
    *lead, c, gh, gw = grid.shape
    if gh % GRID_ROWS or gw % GRID_COLS:
        raise ValueError(
            f"grid height must be a multiple of {GRID_ROWS} and width of {GRID_COLS}, "
            f"got {gh}x{gw} (HxW)"
        )
    h, w = gh // GRID_ROWS, gw // GRID_COLS
    n = len(lead)
    views = grid.reshape(*lead, c, GRID_ROWS, h, GRID_COLS, w)
    # (..., C, rows, H, cols, W) -> (..., rows, cols, C, H, W)
    views = views.permute(*range(n), n + 1, n + 3, n, n + 2, n + 4)
    return views.reshape(*lead, NUM_VIEWS, c, h, w)


def _on_white(arr: np.ndarray, mode: str) -> torch.Tensor:
    """RGBA -> ``rgb * a + (1 - a)`` in float32; RGB taken as already on white."""
    x = arr.astype(np.float32) / 255.0
    rgb = x[..., :3] * x[..., 3:] + (1.0 - x[..., 3:]) if mode == "RGBA" else x
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()


def load_view_on_white(path: str | Path) -> torch.Tensor:
    """One PNG as a ``3 x H x W`` float tensor in [0, 1], composited on white.

    RGBA: ``rgb * a + (1 - a)`` in float32 (straight alpha, as the renders store it); RGB is
    taken as already on white. Any other mode raises.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Zero123++ view not found: {path}")
    with Image.open(path) as img:
        img.load()
        mode = img.mode
        arr = np.asarray(img)
    if mode not in ("RGBA", "RGB"):
        raise ValueError(f"{path}: expected an RGBA (or RGB on white) PNG, got mode {mode!r}")
    return _on_white(arr, mode)


def sample_view_on_white(sample: Sample, name: str) -> torch.Tensor:
    """Member ``name`` of a shard or folder sample as :func:`load_view_on_white` reads a file;
    a missing or corrupt member raises a :class:`~instantmesh.shard_reader.SampleError`
    naming the object, its shard or folder, and the member."""
    arr = decode_png(sample, name, ["RGBA", "RGB"])
    return _on_white(arr, "RGBA" if arr.shape[-1] == 4 else "RGB")


def _to_size(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``(..., 3, H, W)`` to ``size x size`` the way upstream's trainer resizes targets
    (bicubic, antialiased, clamped to [0, 1]); a no-op at the right size."""
    if tuple(image.shape[-2:]) == (size, size):
        return image
    batched = image if image.ndim == 4 else image.unsqueeze(0)
    out = F.interpolate(batched, size=(size, size), mode="bicubic", antialias=True)
    out = out.clamp(0.0, 1.0)
    return out if image.ndim == 4 else out[0]


def discover_uids(image_root: str | Path) -> list[str]:
    """Sorted names of the object folders under ``image_root`` that hold a ``000.png``."""
    root = Path(image_root)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / CONDITION_FILE).is_file())


class Zero123ppDataset(SampleDataset):
    """Condition view + 3 x 2 target grid per object, from ``rendering_zero123plus/<uid>/``
    folders or from ``imesh shards`` tar shards (same items either way).

    ``root``: the render output root (the folder that contains ``rendering_zero123plus/``), that
    ``rendering_zero123plus`` folder itself, or a shard set (a folder / URL holding
    ``shard-*.tar`` and ``_SUCCESS.json``, one ``.tar`` URL, or a list of URLs). ``uids``: the
    object folders to read, in order (default: every sub-folder with a ``000.png``, sorted; not
    for shards). Views whose size is not ``view_size`` are resized (bicubic, antialiased).
    ``on_error``, ``rank``, ``world_size``, ``split``, ``shuffle``, ``seed``,
    ``storage_options``: see :class:`instantmesh.shard_reader.SampleDataset` (iterating splits
    the objects over ranks and DataLoader workers; folders also allow ``len`` and ``ds[i]``).
    Items::

        {"uid": str,
         "cond": float32 (3, view_size, view_size) in [0, 1], on white,
         "target": float32 (3, 3 * view_size, 2 * view_size) in [0, 1], on white}
    """

    layout = "zero123pp"
    layout_dir = IMAGE_DIR
    marker_file = CONDITION_FILE

    def __init__(
        self,
        root: str | os.PathLike[str] | Sequence[str],
        uids: Sequence[str] | None = None,
        *,
        view_size: int = VIEW_SIZE,
        on_error: OnError = "raise",
        rank: int | None = None,
        world_size: int | None = None,
        split: SplitMode = "auto",
        shuffle: bool = False,
        seed: int = 0,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        if view_size <= 0:
            raise ValueError(f"view_size must be positive, got {view_size}")
        super().__init__(
            root,
            uids,
            on_error=on_error,
            rank=rank,
            world_size=world_size,
            split=split,
            shuffle=shuffle,
            seed=seed,
            storage_options=storage_options,
        )
        self.view_size = int(view_size)

    def paths(self, index: int) -> list[Path]:
        """The seven files of item ``index`` (object folders): condition first, then the six
        targets."""
        folder = self.folder_sample(index).folder
        return [folder / CONDITION_FILE] + [folder / name for name in TARGET_FILES]

    def decode(self, sample: Sample) -> dict[str, Any]:
        views = [sample_view_on_white(sample, n) for n in (CONDITION_FILE, *TARGET_FILES)]
        views = [_to_size(v, self.view_size) for v in views]
        targets = torch.stack(views[1:], dim=0)
        return {
            "uid": sample.uid,
            "cond": views[0],
            "target": views_to_grid_tensor(targets),
        }
