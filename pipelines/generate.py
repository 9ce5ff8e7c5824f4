"""``imesh generate IMAGE... --out DIR``: one image -> six views -> LRM -> mesh + turntable.

Runs locally (no Ray): Zero123++ and the reconstruction model are loaded once and every image
goes through them with a progress bar. ``--views DIR`` skips diffusion: DIR holds, per object,
a sub-folder ``<name>/`` with ``001..006.png`` or a ``multiview.png`` grid (or those files
directly, for one object). Outputs per object in ``<out>/<name>/`` (see
``instantmesh.generate``). Device: CUDA when present, else CPU with a warning.

Input images follow upstream ``run.py``: RGBA with transparency keeps its alpha, RGB (or opaque
RGBA) goes through rembg, then the foreground is re-centred at 85 % on white; ``--no-rembg``
uses the image as it is. When some input needs rembg, the package and the local ``u2net.onnx``
are checked before any model loads (exit 2 naming the file, where it goes and ``--no-rembg``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from tyro.conf import Positional, arg

from instantmesh.generate import GenerateOptions
from pipelines.configs import ConfigError, write_resolved_config

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(kw_only=True)
class GenerateConfig(GenerateOptions):
    """Image(s) -> Zero123++ six views -> InstantMesh LRM -> mesh (.obj/.glb/.ply) + turntable."""

    images: Annotated[Positional[list[str]], arg(metavar="[IMAGE ...]")] = field(
        default_factory=list
    )
    """Input images. RGBA with transparency: its alpha is the mask. RGB or fully opaque RGBA:
    background removed with rembg (unless --no-rembg). Then re-centred to 85 % on white."""
    out: str = "generate_out"
    """Output folder: one sub-folder per object."""
    views: str | None = None
    """Skip diffusion: a folder of six views per object (001..006.png or multiview.png)."""


def _name(path: Path) -> str:
    return _SAFE.sub("_", path.stem).strip("._") or "object"


def _jobs(cfg: GenerateConfig) -> list[tuple[str, Path, bool]]:
    """(name, source, is_views_folder) per object."""
    if cfg.views:
        root = Path(cfg.views)
        if not root.is_dir():
            raise ConfigError(f"--views {root}: not a directory")
        direct = (root / "001.png").is_file() or (root / "multiview.png").is_file()
        folders = [root] if direct else sorted(p for p in root.iterdir() if p.is_dir())
        if not folders:
            raise ConfigError(f"--views {root}: no view folders (001..006.png or multiview.png)")
        return [(_name(f), f, True) for f in folders]
    if not cfg.images:
        raise ConfigError("give input images (imesh generate IMAGE ... --out DIR) or --views DIR")
    missing = [p for p in cfg.images if not Path(p).is_file()]
    if missing:
        raise ConfigError(f"input image(s) not found: {', '.join(missing)}")
    return [(_name(Path(p)), Path(p), False) for p in cfg.images]


def _check_background_removal(cfg: GenerateConfig, jobs: list[tuple[str, Path, bool]]) -> None:
    """Inputs that need rembg -> the package and the local model file must be there (before any
    model loads)."""
    from PIL import Image, UnidentifiedImageError

    from instantmesh.background import (
        MissingDependencyError,
        RembgModelMissing,
        check_rembg_installed,
        needs_background_removal,
        resolve_rembg_model,
    )

    if not cfg.rembg:
        return
    needing = []
    for _, source, is_views in jobs:
        if is_views:
            continue
        try:
            with Image.open(source) as im:
                if needs_background_removal(im):
                    needing.append(str(source))
        except (UnidentifiedImageError, OSError) as e:
            raise ConfigError(f"{source}: not a readable image ({e})") from e
    if not needing:
        return
    shown = ", ".join(needing[:3]) + (f" and {len(needing) - 3} more" if len(needing) > 3 else "")
    try:
        check_rembg_installed()
        resolve_rembg_model(cfg.rembg_model)
    except (MissingDependencyError, RembgModelMissing) as e:
        raise ConfigError(f"{shown}: no transparency, so the background is removed; {e}") from e


def run_generate(cfg: GenerateConfig) -> list[dict[str, Any]]:
    from PIL import Image

    from instantmesh.generate import Generator, read_views
    from pipelines.progress import StageProgress

    jobs = _jobs(cfg)
    _check_background_removal(cfg, jobs)
    try:  # the models and options (variant, checkpoint, views used) before --out is written
        generator = Generator(cfg, need_diffusion=not cfg.views)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_resolved_config(cfg, str(out / "generate.config.yaml"))
    records = []
    # a bar on a terminal, a line per 10 % in logs (no carriage returns)
    with StageProgress("generate", len(jobs)) as progress:
        for name, source, is_views in jobs:
            if is_views:
                record = generator.generate(out / name, views=read_views(source))
            else:
                with Image.open(source) as im:
                    im.load()
                    record = generator.generate(out / name, image=im)
            records.append({"name": name, **record})
            progress.advance("ok")
    return records
