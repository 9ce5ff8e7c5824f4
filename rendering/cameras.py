"""Cameras: look-at / spherical construction, seeded camera sets, projection.

Conventions (all matrices float64 4x4 acting on column vectors, ``p_world = c2w @ [p_cam, 1]``):

- **World**: right-handed, **Z up**. Objects are normalized into [-1, 1]^3
  (``rendering.normalize``) and cameras look at the origin unless stated otherwise.
- **Spherical angles**: azimuth is measured in the xy-plane from **+x towards +y** (azimuth 0
  is on +x, 90 on +y); elevation from the xy-plane **towards +z** (90 = straight above).
  Camera position = distance * (cos el cos az, cos el sin az, sin el).
- **Camera frame**: OpenGL / Blender: the camera looks down its **-Z** axis, **+Y** is image
  up, **+X** is image right. ``Camera.c2w`` is camera-to-world (Blender's
  ``camera.matrix_world``); ``Camera.w2c`` is its inverse. The upstream training loader's
  ``cameras.npz`` key ``cam_poses`` stores the top 3x4 of ``w2c`` (:func:`cam_poses_array`).
- **Field of view**: ``fov_deg`` is the **horizontal** FOV (= vertical for square images, the
  case used everywhere here); pixels are square, so fx = fy. This matches NeRF-synthetic
  ``camera_angle_x`` and Blender's sensor fit AUTO/HORIZONTAL for width >= height.
- **Intrinsics**: ``Camera.intrinsics()`` is the OpenCV-style pixel matrix K (fx, fy, cx, cy).
  K acts on the *OpenCV* camera frame (x right, y down, z forward) = diag(1, -1, -1) applied
  to the OpenGL camera frame. Pixel ``(i, j)`` (column, row) covers [i, i+1) x [j, j+1); its
  centre is at (i + 0.5, j + 0.5), so the principal point of a W x H image is (W/2, H/2).
- **Depth** (:func:`project`): positive distance along the viewing axis (planar z-depth, what
  Blender's Depth pass stores), not the Euclidean distance to the camera centre.

Camera sets and their choices:

- :func:`training_cameras` (InstantMesh LRM training renders, 512^2): FOV 50, distance uniform
  in [2.0, 3.5], azimuth uniform in [0, 360), elevation angle uniform in [-30, 60] deg. The band
  covers the Zero123++ input elevations (20 / -10) and the evaluation orbit (30 / 0 / -30) with
  margin, keeps mostly above-the-horizon views (objects are usually seen from above), and avoids
  the poles, where views are rarely used at inference and ``look_at`` degenerates.
  Framing caveat (computed, see :func:`min_distance_to_frame` and tests): at FOV 50 a point at
  radius r from the origin stays in frame from every direction only when distance >=
  r / sin(25 deg). An object filling [-1, 1]^3 (corner radius sqrt(3)) needs >= 4.10, a unit
  sphere >= 2.37, a side-1 cube >= 2.05; so at distances 2.0-3.5 corners of a box-filling
  object leave the frame in almost every view. The defaults follow the upstream contract
  (docs/protocol.md, "Training data"; FOV 50 is upstream ``src/data/objaverse.py``'s default);
  renderers must expect partly cropped training views.
- :func:`zero123pp_cameras` (Zero123++ v1.2 layout, 320^2): one condition view (random azimuth,
  elevation uniform in [-10, 30] deg by default) + six targets at absolute elevations 20 / -10
  alternating and azimuths condition + 30, 90, ..., 330 deg. FOV 30 and distance 4.0: Zero123++
  v1.2 renders at FOV 30 and InstantMesh's LRM takes those six views as cameras at radius 4.0,
  FOV 30 (upstream ``run.py`` and ``src/utils/camera_util.py``; docs/protocol.md), so the same
  poses serve both.
- :func:`orbit_cameras` (evaluation, 21 views): uniform azimuths, elevations 30 / 0 / -30; FOV 30
  and distance 4.0 by default (the LRM's input-camera model, so predictions are rendered at the
  scale the model was trained to produce).
- :func:`omni3d_benchmark_cameras`: the dataset's own ``transforms.json`` views when given, else
  16 views uniform (in area) on the upper hemisphere.

Seeded sets are deterministic functions of ``(uid, seed)``: the generator seed is derived from
SHA-256 of ``"<purpose>|<uid>|<seed>"`` (:func:`derive_seed`), never from Python's salted
``hash()``, so the same object gets the same cameras on every machine and process.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

WORLD_UP: tuple[float, float, float] = (0.0, 0.0, 1.0)
OPENGL_TO_OPENCV: np.ndarray = np.diag([1.0, -1.0, -1.0, 1.0])
"""Maps OpenGL camera coordinates (y up, looking down -z) to OpenCV ones (y down, +z forward)."""

TRAINING_FOV_DEG = 50.0
TRAINING_DISTANCE: tuple[float, float] = (2.0, 3.5)
TRAINING_ELEVATION_DEG: tuple[float, float] = (-30.0, 60.0)
ZERO123PP_FOV_DEG = 30.0
ZERO123PP_DISTANCE = 4.0
ZERO123PP_COND_ELEVATION_DEG: tuple[float, float] = (-10.0, 30.0)
ZERO123PP_TARGET_ELEVATIONS_DEG: tuple[float, ...] = (20.0, -10.0, 20.0, -10.0, 20.0, -10.0)
ZERO123PP_TARGET_AZIMUTH_OFFSETS_DEG: tuple[float, ...] = (30.0, 90.0, 150.0, 210.0, 270.0, 330.0)
EVAL_FOV_DEG = 30.0
EVAL_DISTANCE = 4.0

_EPS = 1e-9


def _vec3(x: npt.ArrayLike, name: str) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64)
    if v.shape != (3,):
        raise ValueError(f"{name} must be a 3-vector, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} must be finite, got {v.tolist()}")
    return v


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    """``(width, height)`` from an int (square) or a pair."""
    if isinstance(size, int | np.integer):
        w = h = int(size)
    else:
        w, h = size
    if w <= 0 or h <= 0:
        raise ValueError(f"image size must be positive, got {w}x{h}")
    return int(w), int(h)


def _check_fov(fov_deg: float) -> float:
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg}")
    return float(fov_deg)


def spherical_to_position(azimuth_deg: float, elevation_deg: float, distance: float) -> np.ndarray:
    """World position at (azimuth from +x towards +y, elevation towards +z, distance)."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return distance * np.array(
        [math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)]
    )


def position_to_spherical(position: npt.ArrayLike) -> tuple[float, float, float]:
    """(azimuth_deg in [0, 360), elevation_deg in [-90, 90], distance) of a world position."""
    p = _vec3(position, "position")
    distance = float(np.linalg.norm(p))
    if distance < _EPS:
        return 0.0, 0.0, 0.0
    azimuth = math.degrees(math.atan2(p[1], p[0])) % 360.0
    elevation = math.degrees(math.asin(max(-1.0, min(1.0, p[2] / distance))))
    return azimuth, elevation, distance


def look_at(
    eye: npt.ArrayLike,
    target: npt.ArrayLike = (0.0, 0.0, 0.0),
    up: npt.ArrayLike = WORLD_UP,
) -> np.ndarray:
    """Camera-to-world 4x4 (OpenGL axes) of a camera at ``eye`` looking at ``target``.

    Image right is ``forward x up`` and image up is the component of ``up`` orthogonal to the
    viewing direction. When ``eye - target`` is parallel to ``up`` (e.g. a camera straight
    above the origin) the result is the limit approached from the side of the world axis least
    aligned with ``up`` (for Z up: from +x, i.e. azimuth 0): image right = ``up x axis``
    (+y for Z up). Raises ``ValueError`` if ``eye == target`` or ``up`` is zero.
    """
    eye_v, target_v, up_v = _vec3(eye, "eye"), _vec3(target, "target"), _vec3(up, "up")
    forward = target_v - eye_v
    dist = float(np.linalg.norm(forward))
    if dist < _EPS:
        raise ValueError("look_at: eye and target coincide")
    up_norm = float(np.linalg.norm(up_v))
    if up_norm < _EPS:
        raise ValueError("look_at: up vector is zero")
    forward /= dist
    up_v = up_v / up_norm
    right = np.cross(forward, up_v)
    if np.linalg.norm(right) < 1e-6:
        axis = np.eye(3)[int(np.argmin(np.abs(up_v)))]
        right = np.cross(up_v, axis)
    right /= np.linalg.norm(right)
    cam_up = np.cross(right, forward)
    cam_up /= np.linalg.norm(cam_up)
    c2w = np.eye(4)
    c2w[:3, 0] = right
    c2w[:3, 1] = cam_up
    c2w[:3, 2] = -forward
    c2w[:3, 3] = eye_v
    return c2w


@dataclass(frozen=True, eq=False)
class Camera:
    """A pinhole camera: pose (camera-to-world, OpenGL axes), FOV and image size.

    ``azimuth_deg``, ``elevation_deg`` and ``distance`` describe the camera position relative
    to the world origin (see module docstring); :meth:`from_c2w` derives them from the pose.
    ``name`` is an optional label (e.g. the source frame's ``file_path``).
    """

    c2w: np.ndarray
    fov_deg: float
    width: int
    height: int
    azimuth_deg: float
    elevation_deg: float
    distance: float
    name: str = field(default="")

    def __post_init__(self) -> None:
        c2w = np.asarray(self.c2w, dtype=np.float64)
        if c2w.shape != (4, 4):
            raise ValueError(f"c2w must be 4x4, got {c2w.shape}")
        if not np.isfinite(c2w).all():
            raise ValueError("c2w must be finite")
        rot = c2w[:3, :3]
        if not np.allclose(rot.T @ rot, np.eye(3), atol=1e-5) or np.linalg.det(rot) < 0:
            raise ValueError("c2w rotation must be orthonormal with determinant +1")
        if not np.allclose(c2w[3], [0.0, 0.0, 0.0, 1.0]):
            raise ValueError("c2w bottom row must be [0, 0, 0, 1]")
        c2w = c2w.copy()
        c2w.setflags(write=False)
        object.__setattr__(self, "c2w", c2w)
        _check_fov(self.fov_deg)
        _size((self.width, self.height))

    @classmethod
    def from_c2w(
        cls, c2w: npt.ArrayLike, fov_deg: float, size: int | tuple[int, int], name: str = ""
    ) -> Camera:
        """A camera from a pose; spherical fields are derived from its position."""
        m = np.asarray(c2w, dtype=np.float64)
        if m.shape != (4, 4):
            raise ValueError(f"c2w must be 4x4, got {m.shape}")
        az, el, dist = position_to_spherical(m[:3, 3])
        w, h = _size(size)
        return cls(m, float(fov_deg), w, h, az, el, dist, name)

    @property
    def position(self) -> np.ndarray:
        return np.array(self.c2w[:3, 3])

    @property
    def w2c(self) -> np.ndarray:
        """World-to-camera 4x4 (OpenGL axes): the exact rigid inverse of ``c2w``."""
        rot = self.c2w[:3, :3]
        out = np.eye(4)
        out[:3, :3] = rot.T
        out[:3, 3] = -rot.T @ self.c2w[:3, 3]
        return out

    def focal_px(self) -> float:
        """Focal length in pixels: (width / 2) / tan(fov / 2) (horizontal FOV, square pixels)."""
        return (self.width / 2.0) / math.tan(math.radians(self.fov_deg) / 2.0)

    def intrinsics(self) -> np.ndarray:
        """OpenCV-style 3x3 pixel matrix K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] with
        fx = fy = focal_px(), cx = width / 2, cy = height / 2 (pixel centres at +0.5)."""
        f = self.focal_px()
        return np.array([[f, 0.0, self.width / 2.0], [0.0, f, self.height / 2.0], [0.0, 0.0, 1.0]])

    def normalized_intrinsics(self) -> tuple[float, float, float, float]:
        """(fx, fy, cx, cy) divided by image width / height: fx = fy = 0.5 / tan(fov / 2),
        cx = cy = 0.5 for square images (the LRM camera-vector convention)."""
        k = self.intrinsics()
        return (
            float(k[0, 0] / self.width),
            float(k[1, 1] / self.height),
            float(k[0, 2] / self.width),
            float(k[1, 2] / self.height),
        )

    def to_3x4_w2c(self) -> np.ndarray:
        """Top 3x4 of ``w2c`` (float64); one entry of ``cam_poses``."""
        return self.w2c[:3, :4].copy()

    def w2c_opencv(self) -> np.ndarray:
        """World-to-camera 4x4 in OpenCV axes (x right, y down, +z forward); pairs with K."""
        return OPENGL_TO_OPENCV @ self.w2c


def camera_from_spherical(
    azimuth_deg: float,
    elevation_deg: float,
    distance: float,
    fov_deg: float,
    size: int | tuple[int, int],
    name: str = "",
) -> Camera:
    """A camera at the given spherical position looking at the origin, image up towards +z.

    Works for every elevation in [-90, 90], including the poles: the up hint is the camera's
    analytic up vector (-sin el cos az, -sin el sin az, cos el), which equals "world Z up"
    projected onto the image plane away from the poles and is its limit at them, so a pole
    camera keeps the azimuth's orientation (image right = (-sin az, cos az, 0)).
    """
    if not distance > 0.0 or not math.isfinite(distance):
        raise ValueError(f"distance must be positive and finite, got {distance}")
    if not -90.0 <= elevation_deg <= 90.0:
        raise ValueError(f"elevation_deg must be in [-90, 90], got {elevation_deg}")
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    eye = spherical_to_position(azimuth_deg, elevation_deg, distance)
    up_hint = (-math.sin(el) * math.cos(az), -math.sin(el) * math.sin(az), math.cos(el))
    w, h = _size(size)
    return Camera(
        c2w=look_at(eye, (0.0, 0.0, 0.0), up_hint),
        fov_deg=_check_fov(fov_deg),
        width=w,
        height=h,
        azimuth_deg=float(azimuth_deg) % 360.0,
        elevation_deg=float(elevation_deg),
        distance=float(distance),
        name=name,
    )


def derive_seed(uid: str, seed: int, purpose: str) -> int:
    """A 64-bit generator seed from SHA-256 of ``"<purpose>|<uid>|<seed>"`` (stable across
    processes and machines, unlike ``hash()``)."""
    digest = hashlib.sha256(f"{purpose}|{uid}|{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _rng(uid: str, seed: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng(derive_seed(uid, seed, purpose))


def _check_range(rng_range: tuple[float, float], name: str) -> tuple[float, float]:
    lo, hi = float(rng_range[0]), float(rng_range[1])
    if not lo <= hi:
        raise ValueError(f"{name} range must satisfy lo <= hi, got ({lo}, {hi})")
    return lo, hi


def training_cameras(
    uid: str,
    seed: int,
    n: int = 32,
    fov: float = TRAINING_FOV_DEG,
    distance: tuple[float, float] = TRAINING_DISTANCE,
    size: int = 512,
    elevation: tuple[float, float] = TRAINING_ELEVATION_DEG,
) -> list[Camera]:
    """``n`` random views of object ``uid`` looking at the origin (deterministic in uid, seed).

    Azimuth uniform in [0, 360), elevation angle uniform in ``elevation`` (default [-30, 60]
    deg, see module docstring), distance uniform in ``distance`` (default [2.0, 3.5]).
    Views are named ``"000"``, ``"001"``, ... (the output file stems).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    d_lo, d_hi = _check_range(distance, "distance")
    if not d_lo > 0.0:
        raise ValueError(f"distances must be positive, got {distance}")
    e_lo, e_hi = _check_range(elevation, "elevation")
    if e_lo < -90.0 or e_hi > 90.0:
        raise ValueError(f"elevation range must lie in [-90, 90], got {elevation}")
    rng = _rng(uid, seed, "training")
    azimuths = rng.uniform(0.0, 360.0, n)
    elevations = rng.uniform(e_lo, e_hi, n)
    distances = rng.uniform(d_lo, d_hi, n)
    return [
        camera_from_spherical(float(a), float(e), float(d), fov, size, name=f"{i:03d}")
        for i, (a, e, d) in enumerate(zip(azimuths, elevations, distances, strict=True))
    ]


def zero123pp_cameras(
    uid: str,
    seed: int,
    size: int = 320,
    fov: float = ZERO123PP_FOV_DEG,
    distance: float = ZERO123PP_DISTANCE,
    cond_elevation: tuple[float, float] = ZERO123PP_COND_ELEVATION_DEG,
) -> list[Camera]:
    """Seven cameras: index 0 the condition view, 1..6 the Zero123++ v1.2 targets.

    Condition: azimuth uniform in [0, 360), elevation uniform in ``cond_elevation`` (pass equal
    bounds for a fixed elevation). Targets k = 0..5: absolute elevation 20 (even k) / -10 (odd k),
    azimuth = condition azimuth + 30 + 60 k (mod 360), i.e. row-major order of the 3x2 grid.
    All at ``distance`` (4.0) with FOV ``fov`` (30), named ``"000"`` .. ``"006"``.
    """
    e_lo, e_hi = _check_range(cond_elevation, "cond_elevation")
    rng = _rng(uid, seed, "zero123pp")
    cond_az = float(rng.uniform(0.0, 360.0))
    cond_el = float(rng.uniform(e_lo, e_hi))
    cams = [camera_from_spherical(cond_az, cond_el, distance, fov, size, name="000")]
    for k, (offset, el) in enumerate(
        zip(ZERO123PP_TARGET_AZIMUTH_OFFSETS_DEG, ZERO123PP_TARGET_ELEVATIONS_DEG, strict=True)
    ):
        cams.append(
            camera_from_spherical(cond_az + offset, el, distance, fov, size, name=f"{k + 1:03d}")
        )
    return cams


def orbit_cameras(
    n: int = 21,
    elevations: Sequence[float] = (30.0, 0.0, -30.0),
    mode: Literal["cycle", "grid"] = "cycle",
    distance: float = EVAL_DISTANCE,
    fov: float = EVAL_FOV_DEG,
    size: int = 320,
    azimuth_offset: float = 0.0,
) -> list[Camera]:
    """Evaluation orbit around the origin (deterministic, no seed).

    - ``mode="cycle"`` (default): ``n`` azimuths ``offset + 360 i / n`` (i = 0..n-1), view i at
      elevation ``elevations[i % len(elevations)]`` (21 views: 30, 0, -30, 30, ...).
    - ``mode="grid"``: ``n / len(elevations)`` uniformly spaced azimuths at every elevation
      (21 views = 7 azimuths x 3 elevations), ordered elevation-major:
      view ``j * n_az + i`` has elevation ``elevations[j]`` and azimuth ``offset + 360 i / n_az``.
      ``n`` must be a multiple of ``len(elevations)``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    elevs = [float(e) for e in elevations]
    if not elevs:
        raise ValueError("elevations must not be empty")
    pairs: list[tuple[float, float]]
    if mode == "cycle":
        pairs = [(azimuth_offset + 360.0 * i / n, elevs[i % len(elevs)]) for i in range(n)]
    elif mode == "grid":
        if n % len(elevs):
            raise ValueError(f"grid mode needs n divisible by {len(elevs)} elevations, got {n}")
        n_az = n // len(elevs)
        pairs = [(azimuth_offset + 360.0 * i / n_az, e) for e in elevs for i in range(n_az)]
    else:
        raise ValueError(f"mode must be 'cycle' or 'grid', got {mode!r}")
    return [
        camera_from_spherical(a, e, distance, fov, size, name=f"{i:03d}")
        for i, (a, e) in enumerate(pairs)
    ]


def transform_camera(camera: Camera, transform: npt.ArrayLike) -> Camera:
    """The same view after moving the world by a similarity ``transform`` (uniform scale,
    rotation, translation; e.g. ``rendering.normalize.normalization_transform``): the camera
    position is mapped by it, the orientation is rotated by its rotation part."""
    m = np.asarray(transform, dtype=np.float64)
    if m.shape != (4, 4):
        raise ValueError(f"transform must be 4x4, got {m.shape}")
    det = float(np.linalg.det(m[:3, :3]))
    if not det > 0.0:
        raise ValueError("transform must be a similarity with positive determinant")
    rot = m[:3, :3] / np.cbrt(det)
    if not np.allclose(rot.T @ rot, np.eye(3), atol=1e-6):
        raise ValueError("transform is not a similarity (non-uniform scale or shear)")
    c2w = np.eye(4)
    c2w[:3, :3] = rot @ camera.c2w[:3, :3]
    c2w[:3, 3] = m[:3, :3] @ camera.c2w[:3, 3] + m[:3, 3]
    return Camera.from_c2w(c2w, camera.fov_deg, (camera.width, camera.height), camera.name)


def load_transforms_json(
    source: str | os.PathLike[str] | Mapping[str, Any], size: int | tuple[int, int] = 800
) -> list[Camera]:
    """Cameras of a NeRF-synthetic style ``transforms.json`` (path or parsed mapping).

    Reads ``camera_angle_x`` (horizontal FOV, radians) and ``frames[*].transform_matrix``
    (camera-to-world, OpenGL axes, the same convention as ours). The image size comes from
    the file's ``w``/``h`` when present, else ``size``. Frame names are their ``file_path``.
    Raises ``ValueError`` naming the problem for a malformed file.
    """
    where = "transforms.json"
    if isinstance(source, Mapping):
        data: Any = source
    else:
        where = str(source)
        try:
            data = json.loads(Path(source).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{where}: cannot read ({type(e).__name__}: {e})") from e
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: top level must be an object")
    if "camera_angle_x" not in data:
        raise ValueError(f"{where}: missing 'camera_angle_x'")
    fov_deg = math.degrees(float(data["camera_angle_x"]))
    frames = data.get("frames")
    if not isinstance(frames, list) or not frames:
        raise ValueError(f"{where}: 'frames' must be a non-empty list")
    if "w" in data and "h" in data:
        size = (int(data["w"]), int(data["h"]))
    cams = []
    for i, frame in enumerate(frames):
        if not isinstance(frame, Mapping) or "transform_matrix" not in frame:
            raise ValueError(f"{where}: frame {i} has no 'transform_matrix'")
        m = np.asarray(frame["transform_matrix"], dtype=np.float64)
        if m.shape != (4, 4):
            raise ValueError(f"{where}: frame {i} transform_matrix has shape {m.shape}")
        name = str(frame.get("file_path", f"{i:03d}"))
        try:
            cams.append(Camera.from_c2w(m, fov_deg, size, name=name))
        except ValueError as e:
            raise ValueError(f"{where}: frame {i}: {e}") from e
    return cams


def omni3d_benchmark_cameras(
    transforms_json: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    seed: int = 0,
    n: int = 16,
    uid: str = "",
    distance: float = EVAL_DISTANCE,
    fov: float = EVAL_FOV_DEG,
    size: int = 320,
) -> list[Camera]:
    """OmniObject3D benchmark views (paper: 16 random views on the upper hemisphere).

    With ``transforms_json``: the dataset's own cameras (:func:`load_transforms_json`); if it
    has more than ``n`` frames, ``n`` of them are picked at random (seeded by uid, seed) and
    returned in file order; ``distance``, ``fov`` and ``size`` are then ignored (the file's
    values rule). Without it: ``n`` views uniform in area on the upper hemisphere (elevation =
    asin(u), u uniform in [0, 1)), azimuth uniform, at ``distance`` with FOV ``fov``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = _rng(uid, seed, "omni3d")
    if transforms_json is not None:
        cams = load_transforms_json(transforms_json)
        if len(cams) <= n:
            return cams
        picked = np.sort(rng.choice(len(cams), size=n, replace=False))
        return [cams[int(i)] for i in picked]
    azimuths = rng.uniform(0.0, 360.0, n)
    elevations = np.degrees(np.arcsin(rng.uniform(0.0, 1.0, n)))
    return [
        camera_from_spherical(float(a), float(e), distance, fov, size, name=f"{i:03d}")
        for i, (a, e) in enumerate(zip(azimuths, elevations, strict=True))
    ]


def cam_poses_array(cameras: Sequence[Camera]) -> np.ndarray:
    """``(N, 3, 4)`` float32 world-to-camera matrices (OpenGL axes): ``cameras.npz`` key
    ``cam_poses`` of the upstream training loader (which inverts them to camera-to-world)."""
    if not cameras:
        raise ValueError("cam_poses_array needs at least one camera")
    return np.stack([c.to_3x4_w2c() for c in cameras]).astype(np.float32)


def project(points: npt.ArrayLike, camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """Pinhole projection of world ``points`` (N, 3) -> ``(pixels (N, 2), depth (N,))``.

    ``pixels`` are continuous (x right, y down) coordinates where pixel (i, j) has its centre
    at (i + 0.5, j + 0.5); ``depth`` is the positive distance along the viewing axis (planar
    z-depth). Points at or behind the camera plane get depth <= 0 and NaN pixels.
    """
    pts = np.asarray(points, dtype=np.float64)
    single = pts.ndim == 1
    pts = pts.reshape(-1, 3)
    w2c = camera.w2c_opencv()
    cam = pts @ w2c[:3, :3].T + w2c[:3, 3]
    depth = cam[:, 2]
    k = camera.intrinsics()
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (cam @ k.T)[:, :2] / depth[:, None]
    uv[depth <= 0.0] = np.nan
    if single:
        return uv[0], np.asarray(depth[0])
    return uv, depth


def min_distance_to_frame(radius: float, fov_deg: float) -> float:
    """Smallest camera distance from the origin at which *every* point within ``radius`` of
    the origin projects inside a square image of FOV ``fov_deg``, for any viewing direction
    looking at the origin: ``radius / sin(fov / 2)`` (the worst point is off-axis by exactly
    that tangent angle, along an image axis)."""
    if not radius >= 0.0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    return radius / math.sin(math.radians(_check_fov(fov_deg)) / 2.0)
