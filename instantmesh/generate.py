"""One image -> six views (Zero123++) -> LRM -> textured mesh + turntable: the paper's
single-image path (``imesh generate``). Models are loaded once and reused for every image.

Per object ``<out>/<name>/``::

    condition.png     the preprocessed condition image (RGB on white, foreground at 85 %)
    multiview.png     the 3 x 2 grid of the six views (640 x 960), or the user's views
    mesh.obj|glb|ply  the mesh: vertex colours, or a UV texture map with --texture (xatlas)
    turntable.gif     a 360 deg turntable (CPU rasterizer, elevation 20 deg, unlit)
    generate.json     settings, seed, timings, file list

Axes of the exported mesh: our world frame (Z up, the input view's front facing +X) stored Y up
in .obj/.glb and Z up in .ply (``instantmesh.mesh_export``); ``rendering.mesh_io.
load_world_mesh`` reads every one back upright.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

VIEW_NAMES = tuple(f"{i:03d}.png" for i in range(1, 7))


@dataclass
class GenerateOptions:
    variant: str = "instant-mesh-large"
    """LRM variant: instant-mesh-large/base, instant-nerf-large/base (or a tiny test variant)."""
    checkpoint: str | None = None
    """The variant's official .ckpt (or a folder written by instantmesh.save_model). Required."""
    zero123pp: str = "sudo-ai/zero123plus-v1.2"
    """Zero123++ v1.2 diffusers folder (local path, or the repo id in the HF cache; never downloads)."""
    unet: str | None = None
    """InstantMesh's white-background UNet weights file (loaded strictly into the pipeline's unet)."""
    seed: int = 42
    """Diffusion seed (same seed, same views)."""
    steps: int = 75
    """Diffusion steps (paper: 75)."""
    guidance: float = 4.0
    """Classifier-free guidance scale (paper: 4.0)."""
    remove_background: bool = False
    """Remove the input's background first (needs the optional rembg package)."""
    export: Literal["obj", "glb", "ply"] = "obj"
    """Mesh file format."""
    texture: bool = False
    """Bake a UV texture map (xatlas) instead of vertex colours (obj/glb)."""
    texture_resolution: int = 1024
    """Texture map size in pixels."""
    mc_resolution: int = 256
    """NeRF variants: marching-cubes grid resolution."""
    density_threshold: float = 10.0
    """NeRF variants: density iso-level of the surface."""
    turntable: bool = True
    """Write a turntable GIF of the mesh."""
    turntable_frames: int = 24
    """Frames of the turntable."""
    turntable_size: int = 256
    """Turntable frame size in pixels."""
    device: Literal["auto", "cuda", "cpu"] = "auto"
    """auto: CUDA when present, else CPU (with a warning)."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        warnings.warn(
            "no CUDA GPU found: running Zero123++ and the LRM on the CPU (very slow with the "
            "real models)",
            RuntimeWarning,
            stacklevel=2,
        )
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but CUDA is not available")
    return torch.device(device)


def read_views(folder: Path) -> list[Image.Image]:
    """Six user views from ``folder``: ``001.png ... 006.png`` or one ``multiview.png`` grid."""
    from instantmesh.zero123pp import prepare_views

    singles = [folder / n for n in VIEW_NAMES]
    if all(p.is_file() for p in singles):
        return prepare_views([Image.open(p) for p in singles])
    grid = folder / "multiview.png"
    if grid.is_file():
        return prepare_views(Image.open(grid))
    raise FileNotFoundError(
        f"{folder}: expected six views {', '.join(VIEW_NAMES)} or one multiview.png grid"
    )


def turntable_frames(mesh_world: Any, frames: int, size: int) -> list[Image.Image]:
    """RGB frames of a 360 deg orbit (elevation 20 deg) on white, framing the whole mesh."""
    from rendering.backends.cpu import rasterize
    from rendering.cameras import camera_from_spherical

    vertices = np.asarray(mesh_world.vertices)
    centre = (vertices.min(axis=0) + vertices.max(axis=0)) / 2.0
    mesh = mesh_world.copy()
    mesh.vertices = vertices - centre
    radius = float(np.linalg.norm(mesh.vertices, axis=1).max()) or 1.0
    fov = 30.0
    distance = 1.1 * radius / math.sin(math.radians(fov / 2.0))
    out = []
    for i in range(frames):
        cam = camera_from_spherical(360.0 * i / frames, 20.0, distance, fov, size)
        view = rasterize(mesh, cam)
        rgb, alpha = view.rgba[..., :3], view.rgba[..., 3:4]
        image = rgb * alpha + (1.0 - alpha)
        out.append(Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)))
    return out


class Generator:
    """Holds the loaded models; ``generate`` runs one object."""

    def __init__(self, options: GenerateOptions, need_diffusion: bool = True) -> None:
        from instantmesh.checkpoint import load_checkpoint

        if not options.checkpoint:
            raise ValueError(
                "--checkpoint is required: the official .ckpt of --variant (e.g. "
                "instant_mesh_large.ckpt) or a folder written by instantmesh.save_model"
            )
        self.options = options
        self.device = resolve_device(options.device)
        self.model = load_checkpoint(options.checkpoint, options.variant, device=self.device)
        self.model.eval()
        self.pipe: Any = None
        if need_diffusion:
            from instantmesh.zero123pp import from_pretrained

            self.pipe = from_pretrained(options.zero123pp, white_background_unet=options.unet)
            self.pipe.to(self.device)

    def generate(
        self,
        out_dir: Path,
        image: Image.Image | None = None,
        views: list[Image.Image] | None = None,
    ) -> dict[str, Any]:
        from instantmesh.mesh_export import (
            colored_mesh_to_trimesh,
            export_textured_mesh,
            export_vertex_colored_mesh,
        )
        from instantmesh.reconstruct import reconstruct_mesh
        from instantmesh.zero123pp import generate_multiview, merge_grid

        opts = self.options
        out_dir.mkdir(parents=True, exist_ok=True)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        if views is None:
            if image is None:
                raise ValueError("generate needs an image or six views")
            if self.pipe is None:
                raise ValueError("no Zero123++ pipeline loaded (views were expected)")
            result = generate_multiview(
                self.pipe,
                image,
                seed=opts.seed,
                num_inference_steps=opts.steps,
                guidance_scale=opts.guidance,
                remove_background=opts.remove_background,
            )
            result.condition.save(out_dir / "condition.png")
            views = result.views
            timings["multiview_s"] = time.perf_counter() - t0
        merge_grid(views).save(out_dir / "multiview.png")
        t1 = time.perf_counter()
        arrays = [np.asarray(v.convert("RGB"), dtype=np.float32) / 255.0 for v in views]
        cm, planes = reconstruct_mesh(
            self.model,
            arrays,
            mc_resolution=opts.mc_resolution,
            density_threshold=opts.density_threshold,
        )
        timings["reconstruct_s"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        mesh_path = out_dir / f"mesh.{opts.export}"
        if opts.texture:
            if opts.export == "ply":
                raise ValueError("--texture needs --export obj or glb (PLY has no texture maps)")
            export_textured_mesh(self.model, planes, cm, mesh_path, opts.texture_resolution)
        else:
            export_vertex_colored_mesh(cm, mesh_path)
        timings["export_s"] = time.perf_counter() - t2
        files = [p.name for p in sorted(out_dir.iterdir()) if p.is_file()]
        if opts.turntable:
            t3 = time.perf_counter()
            frames = turntable_frames(
                colored_mesh_to_trimesh(cm), opts.turntable_frames, opts.turntable_size
            )
            frames[0].save(
                out_dir / "turntable.gif",
                save_all=True,
                append_images=frames[1:],
                duration=80,
                loop=0,
            )
            timings["turntable_s"] = time.perf_counter() - t3
            files.append("turntable.gif")
        record = {
            "options": asdict(opts),
            "device": str(self.device),
            "variant": self.model.cfg.name,
            "faces": len(cm.faces),
            "vertices": len(cm.vertices),
            "timings": timings,
            "files": sorted(set(files) | {"generate.json"}),
            "axes": "world Z up, front +X; .obj/.glb stored Y up, .ply Z up",
        }
        (out_dir / "generate.json").write_text(json.dumps(record, indent=1))
        return record
