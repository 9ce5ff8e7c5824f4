"""One image -> six views (Zero123++) -> LRM -> textured mesh + turntable: the paper's
single-image path (``imesh generate``). Models are loaded once and reused for every image.

Per object ``<out>/<name>/``::

    condition.png     the condition image Zero123++ saw (RGB on white; see "Input handling")
    multiview.png     the 3 x 2 grid of the six views (640 x 960), or the user's views
    mesh.obj|glb|ply  the mesh: vertex colours, or a UV texture map with --texture (xatlas)
    turntable.gif     a 360 deg turntable (CPU rasterizer, elevation 20 deg, unlit)
    generate.json     settings, seed, input handling, dtype, views used, timings, file list

Input handling (upstream ``run.py``; :func:`instantmesh.background.prepare_condition_image`):
an RGBA image with transparency keeps its alpha as the mask; an RGB (or fully opaque) image has
its background removed with rembg (U^2-Net from a local ``u2net.onnx``, never downloaded); then
the foreground is re-centred to span 85 % of a square frame and composited on white.
``--no-rembg`` skips both steps (the image is used as it is, RGBA composited on white).

Axes of the exported mesh: our world frame (Z up, the input view's front facing +X) stored Y up
in .obj/.glb and Z up in .ply (``instantmesh.mesh_export``); ``rendering.mesh_io.
load_world_mesh`` reads every one back upright.
"""

from __future__ import annotations

import json
import math
import sys
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
    rembg: bool = True
    """Background handling of each input image (upstream run.py): an RGBA image with transparency
    keeps its alpha as the mask; an RGB image (or RGBA without any transparent pixel) has its
    background removed with rembg (U^2-Net). Then the foreground is re-centred to span 85 % of a
    square frame (resize_foreground 0.85) and composited on white. --no-rembg skips both steps:
    the image is used as it is (RGBA composited on white, RGB unchanged, no re-centring)."""
    rembg_model: str | None = None
    """rembg's U^2-Net model file (u2net.onnx), read locally and never downloaded; default:
    rembg's cache $U2NET_HOME/u2net.onnx (~/.u2net/u2net.onnx). Needs the 'rembg' extra."""
    dtype: Literal["auto", "float16", "float32"] = "auto"
    """Zero123++ weights dtype: auto = float16 on CUDA (as upstream run.py), float32 on CPU."""
    views_used: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    """Zero123++ views (0..5, row-major in the 3x2 grid) given to the LRM, each with its input
    camera: 0 2 4 5 is upstream's --view 4; default all six."""
    scale: float = 1.0
    """Input cameras of the LRM sit at radius 4.0 x scale (upstream --scale, 'scale of the
    generated object': a larger value reconstructs a larger mesh)."""
    distance: float | None = 4.5
    """Turntable camera distance from the world origin (upstream --distance, its video's render
    radius; FOV 30 deg, elevation 20 deg). None: frame the whole mesh instead."""
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


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """auto: float16 on CUDA (upstream run.py), float32 elsewhere."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be auto, float16 or float32, got {dtype!r}")
    return torch.float16 if dtype == "float16" else torch.float32


def turntable_frames(
    mesh_world: Any, frames: int, size: int, distance: float | None = None
) -> list[Image.Image]:
    """RGB frames of a 360 deg orbit (elevation 20 deg, FOV 30 deg) on white, starting at
    azimuth 0 (the input view's side). ``distance``: orbit the world origin at that radius
    (upstream's video cameras); None: centre the mesh and frame all of it."""
    from rendering.cameras import camera_from_spherical
    from rendering.rasterizer import rasterize

    fov = 30.0
    mesh = mesh_world.copy()
    if distance is None:
        vertices = np.asarray(mesh_world.vertices)
        centre = (vertices.min(axis=0) + vertices.max(axis=0)) / 2.0
        mesh.vertices = vertices - centre
        radius = float(np.linalg.norm(mesh.vertices, axis=1).max()) or 1.0
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
        from instantmesh.reconstruct import check_view_indices

        self.views_used = check_view_indices(options.views_used)
        if not (options.scale > 0 and math.isfinite(options.scale)):
            raise ValueError(f"--scale must be positive, got {options.scale}")
        if options.distance is not None and not (
            options.distance > 0 and math.isfinite(options.distance)
        ):
            raise ValueError(f"--distance must be positive (or None), got {options.distance}")
        self.options = options
        self.device = resolve_device(options.device)
        self.dtype: torch.dtype | None = None
        self.model = load_checkpoint(options.checkpoint, options.variant, device=self.device)
        self.model.eval()
        self.pipe: Any = None
        self._rembg_session: Any = None
        if need_diffusion:
            from instantmesh.zero123pp import from_pretrained

            self.dtype = resolve_dtype(options.dtype, self.device)
            self.pipe = from_pretrained(
                options.zero123pp, torch_dtype=self.dtype, white_background_unet=options.unet
            )
            self.pipe.to(self.device)
            # diffusion steps as a bar on a terminal only: in a log its redraws are noise
            self.pipe.set_progress_bar_config(disable=not sys.stderr.isatty())

    def condition(self, image: Image.Image) -> Any:
        """The :class:`~instantmesh.background.ConditionImage` for ``image`` (the rembg session
        is built on first need and reused)."""
        from instantmesh.background import (
            load_rembg_session,
            needs_background_removal,
            prepare_condition_image,
        )

        if self._rembg_session is None and needs_background_removal(image, self.options.rembg):
            self._rembg_session = load_rembg_session(self.options.rembg_model)
        return prepare_condition_image(
            image, remove_background=self.options.rembg, session=self._rembg_session
        )

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
        from instantmesh.reconstruct import INPUT_CAMERA_RADIUS, reconstruct_mesh
        from instantmesh.zero123pp import generate_multiview, merge_grid

        opts = self.options
        out_dir.mkdir(parents=True, exist_ok=True)
        timings: dict[str, float] = {}
        input_record: dict[str, Any]
        if views is None:
            if image is None:
                raise ValueError("generate needs an image or six views")
            if self.pipe is None:
                raise ValueError("no Zero123++ pipeline loaded (views were expected)")
            tp = time.perf_counter()
            cond = self.condition(image)
            timings["preprocess_s"] = time.perf_counter() - tp
            input_record = {"source": "image", **cond.record()}
            t0 = time.perf_counter()
            result = generate_multiview(
                self.pipe,
                cond.image,
                seed=opts.seed,
                num_inference_steps=opts.steps,
                guidance_scale=opts.guidance,
                remove_background=False,  # done above (prepare_condition_image)
                foreground_ratio=None,
            )
            result.condition.save(out_dir / "condition.png")
            views = result.views
            timings["multiview_s"] = time.perf_counter() - t0
        else:
            input_record = {"source": "views", "reason": "user views: no diffusion, no rembg"}
        merge_grid(views).save(out_dir / "multiview.png")
        t1 = time.perf_counter()
        arrays = [np.asarray(v.convert("RGB"), dtype=np.float32) / 255.0 for v in views]
        cm, planes = reconstruct_mesh(
            self.model,
            arrays,
            mc_resolution=opts.mc_resolution,
            density_threshold=opts.density_threshold,
            view_indices=self.views_used,
            scale=opts.scale,
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
                colored_mesh_to_trimesh(cm),
                opts.turntable_frames,
                opts.turntable_size,
                distance=opts.distance,
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
            "input": input_record,
            "zero123pp_dtype": None
            if self.dtype is None
            else str(self.dtype).removeprefix("torch."),
            "views_used": list(self.views_used),
            "input_camera_radius": INPUT_CAMERA_RADIUS * opts.scale,
            "turntable_distance": opts.distance,
            "faces": len(cm.faces),
            "vertices": len(cm.vertices),
            "timings": timings,
            "files": sorted(set(files) | {"generate.json"}),
            "axes": "world Z up, front +X; .obj/.glb stored Y up, .ply Z up",
        }
        (out_dir / "generate.json").write_text(json.dumps(record, indent=1))
        return record
