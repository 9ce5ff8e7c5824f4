"""Render output layouts: which cameras each layout uses and the files it writes per object.

Three layouts, each a folder of per-object directories ``<layout dir>/<uid>/``:

``instantmesh32`` -> ``rendering_random_32views/<uid>/`` (the upstream InstantMesh LRM training
loader reads it unchanged)::

    000.png ... 031.png          RGBA 8-bit, straight alpha, transparent background
    NNN_normal.png               RGBA 8-bit: RGB = (n + 1) / 2 of the world-space normal, A = mask
                                 (the loader takes alpha from channel 4: an RGB file fails there)
    NNN_depth.png                8-bit grey: value = round(depth / 6.0 * 255), 0 on background
                                 (the loader reads metric depth = value / 255 * 6.0)
    NNN_depth16.png              16-bit grey, lossless companion: depth = value / 65535 * 6.0
                                 (0.09 mm steps; 0 on background)
    cameras.npz                  cam_poses (N, 3, 4) world-to-camera, OpenGL/Blender axes (what
                                 the loader reads); also c2w (N, 4, 4), fov_deg (N,), size (2,)
    render.json                  the per-object record (below)

``zero123pp`` -> ``rendering_zero123plus/<uid>/``: ``000.png`` condition view, ``001.png`` ...
``006.png`` targets (elevations 20 / -10 alternating, azimuths condition + 30, 90, ..., 330),
320x320 RGBA on a **white** background: background pixels are (255, 255, 255, 0) and colour
is straight, so a loader that composites on white and one that drops alpha read the same
image. Plus ``cameras.npz`` and ``render.json``.

``eval`` -> ``eval_views/<uid>/``: ``input.png`` (the condition view: the Zero123++ condition
camera of ``(uid, seed)``), ``zero123pp/001.png ... 006.png`` (the six Zero123++ target views
of the same object: the "sparse-view reconstruction" input), ``orbit/000.png ... 020.png`` (21 orbit views), optionally
``benchmark/000.png ... 015.png`` (Omni3D benchmark views), each view set with its own
``cameras.npz`` (same keys), RGBA like the training layout (plus ``NNN_depth16.png``), and
``render.json``.

``render.json`` (per object): uid, layout, backend, settings, ``file_to_world`` (4x4, the
normalization applied), ``source_up``, per-view-set ``coverage`` (fraction of pixels with
alpha >= 0.5, per view: the filter's "< 10 % occupancy from any view" criterion reads it),
``min_coverage``, timings, the camera convention. Cameras are 4x4 ``c2w`` in OpenGL/Blender
axes (camera looks down -Z, +Y up), FOV horizontal in degrees: see ``rendering.cameras``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from rendering import cameras as cams
from rendering.backends.base import View

Layout = Literal["instantmesh32", "zero123pp", "eval"]

LAYOUT_DIRS: dict[str, str] = {
    "instantmesh32": "rendering_random_32views",
    "zero123pp": "rendering_zero123plus",
    "eval": "eval_views",
}
"""Layout name -> output folder (under the job's output root)."""

DEFAULT_SIZES: dict[str, int] = {"instantmesh32": 512, "zero123pp": 320, "eval": 320}

VIEW_FILE_SUFFIXES: dict[str, tuple[str, ...]] = {
    "instantmesh32": ("", "_depth16", "_normal", "_depth"),
    "zero123pp": ("",),
    "eval": ("", "_depth16"),
}
"""Files written per view, by layout: ``<stem><suffix>.png`` for each suffix (the lists above);
``cameras.npz`` per view set and ``render.json`` per object come beside them."""

UNIT_SPHERE_SCALE = 1.0 / math.sqrt(3.0)
"""Scale that puts the normalized box [-1, 1]^3 inside the unit sphere. The Zero123++ / eval
cameras (FOV 30, distance 4.0: the LRM's input-camera model) see a half-width of 4 tan 15 deg =
1.07 at the origin, so a box-filling object would lose its corners in most views; scaled into
the unit sphere (needs distance >= 1 / sin 15 deg = 3.86) it stays in frame from every
direction. The training layout keeps scale 1 (the upstream contract: [-1, 1]^3 at FOV 50,
distance 2-3.5; see ``rendering.cameras``)."""

DEPTH_PNG_MAX = 6.0
"""Metric depth that maps to the top code of the depth PNGs (upstream: value / 255 * 6.0)."""

CAMERA_CONVENTION = (
    "c2w 4x4 camera-to-world, OpenGL/Blender camera axes (looks down -Z, +Y up, +X right); "
    "cam_poses = top 3x4 of world-to-camera; world Z up, azimuth 0 on +x; fov_deg horizontal"
)


@dataclass(frozen=True)
class ViewSet:
    """A named group of cameras rendered for one object (written to one folder)."""

    name: str
    """'' for views written at the object folder's top level, else a sub-folder name."""
    cameras: list[cams.Camera]
    file_names: list[str]
    """One file stem per camera (``000`` or ``input``)."""


@dataclass(frozen=True)
class LayoutSpec:
    """How a layout is rendered: sizes, counts and camera choices (part of the job config)."""

    layout: Layout
    size: int
    seed: int = 0
    views: int = 32
    """Number of training views (``instantmesh32``)."""
    orbit_views: int = 21
    orbit_mode: Literal["cycle", "grid"] = "cycle"
    benchmark_views: int = 16
    white_background: bool = False
    """Background colour of the RGB channels under alpha 0 (Zero123++ layout: white)."""
    object_scale: float = 1.0
    """Uniform scale applied to the normalized object before rendering (recorded in
    ``render.json``; :data:`UNIT_SPHERE_SCALE` for the zero123pp and eval layouts)."""


def layout_spec(layout: str, size: int | None = None, seed: int = 0, **kwargs: Any) -> LayoutSpec:
    if layout not in LAYOUT_DIRS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {sorted(LAYOUT_DIRS)}")
    return LayoutSpec(
        layout=layout,  # type: ignore[arg-type]
        size=int(size or DEFAULT_SIZES[layout]),
        seed=seed,
        white_background=layout == "zero123pp",
        **{"object_scale": 1.0 if layout == "instantmesh32" else UNIT_SPHERE_SCALE, **kwargs},
    )


def view_sets(
    spec: LayoutSpec,
    uid: str,
    *,
    benchmark: bool = False,
    transforms_json: str | None = None,
    transforms_to_world: np.ndarray | None = None,
) -> list[ViewSet]:
    """The cameras of ``spec`` for object ``uid`` (deterministic in (uid, seed)).

    For ``eval`` with ``benchmark=True``: the Omni3D benchmark views from ``transforms_json``
    (the dataset's own cameras, mapped into the normalized world by ``transforms_to_world``,
    the similarity from the cameras' frame to ours) or, when
    none is given, ``spec.benchmark_views`` seeded views on the upper hemisphere.
    """
    if spec.layout == "instantmesh32":
        c = cams.training_cameras(uid, spec.seed, n=spec.views, size=spec.size)
        return [ViewSet("", c, [f"{i:03d}" for i in range(len(c))])]
    if spec.layout == "zero123pp":
        c = cams.zero123pp_cameras(uid, spec.seed, size=spec.size)
        return [ViewSet("", c, [f"{i:03d}" for i in range(len(c))])]
    z123 = cams.zero123pp_cameras(uid, spec.seed, size=spec.size)
    orbit = cams.orbit_cameras(n=spec.orbit_views, mode=spec.orbit_mode, size=spec.size)
    sets = [
        ViewSet("", z123[:1], ["input"]),
        ViewSet("zero123pp", z123[1:], [f"{i:03d}" for i in range(1, len(z123))]),
        ViewSet("orbit", orbit, [f"{i:03d}" for i in range(len(orbit))]),
    ]
    if benchmark:
        if transforms_json is not None:
            bench = cams.load_transforms_json(transforms_json, size=spec.size)
            if transforms_to_world is not None:
                bench = [cams.transform_camera(c, transforms_to_world) for c in bench]
        else:
            bench = cams.omni3d_benchmark_cameras(
                None, seed=spec.seed, n=spec.benchmark_views, uid=uid, size=spec.size
            )
        sets.append(ViewSet("benchmark", bench, [f"{i:03d}" for i in range(len(bench))]))
    return sets


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def rgba_u8(view: View, white_background: bool = False) -> np.ndarray:
    """RGBA uint8 with straight alpha; background RGB = 0 (or 255 with ``white_background``)."""
    rgba = np.clip(np.nan_to_num(view.rgba, nan=0.0), 0.0, 1.0)
    out = np.round(rgba * 255.0).astype(np.uint8)
    if white_background:
        out[..., :3][out[..., 3] == 0] = 255
    return out


def normal_u8(view: View) -> np.ndarray:
    """RGBA uint8 normal map: RGB = (n + 1) / 2, alpha = mask (the upstream loader's format)."""
    mask = view.mask
    n = np.where(mask[..., None], view.normal, 0.0)
    rgb = np.round(np.clip((n + 1.0) / 2.0, 0.0, 1.0) * 255.0).astype(np.uint8)
    alpha = (mask * 255).astype(np.uint8)
    return np.dstack([rgb, alpha])


def depth_codes(view: View, levels: int) -> np.ndarray:
    """Depth quantized to ``levels - 1`` codes over [0, DEPTH_PNG_MAX]; 0 on background."""
    mask = view.mask & np.isfinite(view.depth)
    d = np.where(mask, view.depth, 0.0)
    codes = np.round(np.clip(d / DEPTH_PNG_MAX, 0.0, 1.0) * (levels - 1))
    return codes.astype(np.uint16 if levels > 256 else np.uint8)


def decode_depth_png(values: np.ndarray) -> np.ndarray:
    """Metric depth from an 8- or 16-bit depth PNG array (0 = background -> NaN)."""
    top = 65535.0 if values.dtype == np.uint16 else 255.0
    depth = values.astype(np.float64) / top * DEPTH_PNG_MAX
    return np.where(values > 0, depth, np.nan)


def stored_cameras(cameras: Sequence[cams.Camera]) -> list[cams.Camera]:
    """``cameras`` as :func:`cameras_npz` stores them (float32 pose and FOV). Layouts render
    with these, so the stored cameras are exactly the ones that made the pixels: a re-render
    from ``cameras.npz`` (the evaluator's, an oracle prediction's) gives the same bytes."""
    return [
        dataclasses.replace(
            c,
            c2w=np.asarray(c.c2w, dtype=np.float32).astype(np.float64),
            fov_deg=float(np.float32(c.fov_deg)),
        )
        for c in cameras
    ]


def cameras_npz(cameras: Sequence[cams.Camera]) -> bytes:
    buf = io.BytesIO()
    np.savez(
        buf,
        cam_poses=cams.cam_poses_array(cameras).astype(np.float32),
        c2w=np.stack([c.c2w for c in cameras]).astype(np.float32),
        fov_deg=np.array([c.fov_deg for c in cameras], dtype=np.float32),
        size=np.array([cameras[0].width, cameras[0].height], dtype=np.int32),
    )
    return buf.getvalue()


def write_view_set(
    folder: Path, vs: ViewSet, views: Sequence[View], spec: LayoutSpec
) -> list[float]:
    """Write one view set's images and cameras into ``folder``; returns per-view coverage."""
    if len(views) != len(vs.cameras):
        raise ValueError(
            f"{vs.name or 'views'}: got {len(views)} views for {len(vs.cameras)} cameras"
        )
    target = folder / vs.name if vs.name else folder
    target.mkdir(parents=True, exist_ok=True)
    encoders: dict[str, Callable[[View], bytes]] = {
        "": lambda v: _png(rgba_u8(v, spec.white_background), "RGBA"),
        "_depth16": lambda v: _png(depth_codes(v, 65536)),
        "_normal": lambda v: _png(normal_u8(v), "RGBA"),
        "_depth": lambda v: _png(depth_codes(v, 256), "L"),
    }
    for stem, view in zip(vs.file_names, views, strict=True):
        for suffix in VIEW_FILE_SUFFIXES[spec.layout]:
            (target / f"{stem}{suffix}.png").write_bytes(encoders[suffix](view))
    (target / "cameras.npz").write_bytes(cameras_npz(vs.cameras))
    return [v.coverage for v in views]


def write_record(folder: Path, record: dict[str, Any]) -> None:
    (folder / "render.json").write_text(json.dumps(record, indent=1, sort_keys=True))


def read_record(folder: str | Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((Path(folder) / "render.json").read_text())
    return data


class LayoutValidationError(ValueError):
    """A rendered object folder that does not satisfy its layout's contract."""


def validate_object_dir(
    folder: Path, record: dict[str, Any], min_coverage: float = 0.0, max_coverage: float = 1.0
) -> None:
    """Check an object folder before publishing: every expected file present and decodable,
    image sizes right, coverage within [min_coverage, max_coverage] for every view (finite), and
    depth finite inside the mask (the 16-bit companion is non-zero on masked pixels)."""
    sets: dict[str, dict[str, Any]] = record["view_sets"]
    for name, info in sets.items():
        target = folder / name if name else folder
        size = tuple(info["size"])
        for stem, cov in zip(info["files"], info["coverage"], strict=True):
            path = target / f"{stem}.png"
            if not path.is_file():
                raise LayoutValidationError(f"missing {path.name} in {name or 'views'}")
            with Image.open(path) as im:
                if im.size != size or im.mode != "RGBA":
                    raise LayoutValidationError(
                        f"{path.name}: {im.mode} {im.size}, want RGBA {size}"
                    )
            if not (math.isfinite(cov) and min_coverage <= cov <= max_coverage):
                raise LayoutValidationError(
                    f"{name or 'views'}/{stem}: alpha coverage {cov:.4f} outside "
                    f"[{min_coverage}, {max_coverage}]"
                )
        if not (target / "cameras.npz").is_file():
            raise LayoutValidationError(f"missing cameras.npz in {name or 'views'}")


def check_views(views: Sequence[View], where: str) -> None:
    """Raise ``LayoutValidationError`` for NaN colours/normals or non-finite / negative depth
    inside the mask (a backend bug or a broken object must never be published)."""
    for i, v in enumerate(views):
        if not np.isfinite(v.rgba).all() or not np.isfinite(v.normal).all():
            raise LayoutValidationError(f"{where} view {i}: NaN/inf in colour or normals")
        d = v.depth[v.mask]
        if d.size and (not np.isfinite(d).all() or (d <= 0).any()):
            raise LayoutValidationError(
                f"{where} view {i}: non-finite or non-positive depth in mask"
            )


def render_layout(
    backend: Any,
    obj: Any,
    uid: str,
    spec: LayoutSpec,
    folder: Path,
    *,
    benchmark: bool = False,
    transforms_json: str | None = None,
    transforms_to_world: np.ndarray | None = None,
) -> dict[str, Any]:
    """Render ``obj`` (a ``RenderObject``) with ``backend`` into ``folder`` in ``spec``'s
    layout, write ``render.json`` and return that record. ``transforms_to_world`` maps the
    frame of ``transforms_json``'s cameras into the normalized world (default: the object's
    ``file_to_world``, right when the cameras were made in the file's frame)."""
    if transforms_to_world is None:
        transforms_to_world = np.asarray(obj.file_to_world)
    if spec.object_scale != 1.0:
        scale = np.diag([spec.object_scale] * 3 + [1.0])
        obj = dataclasses.replace(obj, file_to_world=scale @ np.asarray(obj.file_to_world))
        transforms_to_world = scale @ transforms_to_world
    import time

    record: dict[str, Any] = {
        "uid": uid,
        "layout": spec.layout,
        "backend": getattr(backend, "name", type(backend).__name__),
        "file_to_world": np.asarray(obj.file_to_world).tolist(),
        "source_up": obj.source_up,
        "object_scale": spec.object_scale,
        "camera_convention": CAMERA_CONVENTION,
        "depth_png_max": DEPTH_PNG_MAX,
        "view_sets": {},
        "timings": {},
    }
    coverages: list[float] = []
    t_all = time.perf_counter()
    for vs in view_sets(
        spec,
        uid,
        benchmark=benchmark,
        transforms_json=transforms_json,
        transforms_to_world=transforms_to_world,
    ):
        vs = dataclasses.replace(vs, cameras=stored_cameras(vs.cameras))
        t0 = time.perf_counter()
        views = backend.render(obj, vs.cameras)
        t1 = time.perf_counter()
        check_views(views, f"{uid} {vs.name or 'views'}")
        cov = write_view_set(folder, vs, views, spec)
        coverages += cov
        record["view_sets"][vs.name] = {
            "files": vs.file_names,
            "coverage": cov,
            "size": [vs.cameras[0].width, vs.cameras[0].height],
            "azimuth_deg": [c.azimuth_deg for c in vs.cameras],
            "elevation_deg": [c.elevation_deg for c in vs.cameras],
            "distance": [c.distance for c in vs.cameras],
            "fov_deg": [c.fov_deg for c in vs.cameras],
        }
        record["timings"][f"render_{vs.name or 'views'}_s"] = t1 - t0
        record["timings"][f"write_{vs.name or 'views'}_s"] = time.perf_counter() - t1
    record["timings"]["total_s"] = time.perf_counter() - t_all
    record["min_coverage"] = float(min(coverages))
    record["n_views"] = len(coverages)
    write_record(folder, record)
    return record
